"""Errors raised by the model codecs.

    ModelError                  anything wrong with a model, package or patch
    ├── InvalidModel            the input is not a usable ONNX model
    │   ├── UnsafeModel         it would make the runtime read files (external data), or is too deep/large to walk
    │   └── ContractError       its input contract (preprocessing, outputs, labels) is malformed or does not fit
    │                           (also a protocol.errors.ContractError, which malformed contract values raise)
    ├── CorruptPackage          package bytes fail their format or hash checks
    ├── DeltaError              a patch cannot be applied
    │   └── BaseMismatch        the patch was made for a different base package
    └── FidelityGateError       no encoding meets the requested agreement

Callers decide on the class: a corrupt download is refetched, a wrong base
falls back to the full package, a failed gate is reported to the publisher.
"""

from __future__ import annotations

from protocol import errors as _protocol_errors


class ModelError(Exception):
    """Base class for every error raised by ``models``."""


class InvalidModel(ModelError):
    """The bytes are not an ONNX model the codec can handle."""


class UnsafeModel(InvalidModel):
    """The model keeps tensor bytes in files ("external data"), or nests or grows beyond the walk's bounds.

    A model is data: loading it must never read a file, so such a model is
    refused wherever it appears (an upload, a decoded package).
    """


class ContractError(InvalidModel, _protocol_errors.ContractError):
    """An input contract is malformed, cannot be inferred, or does not fit the model.

    The message names the field (or the publish flag, such as ``--input-size``)
    the publisher has to change.
    """


class CorruptPackage(ModelError):
    """A package is truncated, malformed, or does not match its hash."""


class DeltaError(ModelError):
    """A delta (patch) is malformed or does not reproduce its target."""


class BaseMismatch(DeltaError):
    """The patch names a base package other than the one supplied."""


class FidelityGateError(ModelError):
    """No encoding reaches the requested agreement with the fp32 model."""
