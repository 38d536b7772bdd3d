"""Errors raised while reading protocol values.

    ProtocolError           a message or value does not follow the wire protocol
    ├── MalformedMessage    a field is missing, of the wrong type or out of range
    ├── BadSignature        no valid signature by the expected key covers a signed body
    └── ContractError       an input contract is malformed (models' ContractError also says it does not fit a model)

Each side wraps them at its seam: the car turns them into ``OfferRejected`` (never install),
the registry into a 4xx naming the field.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class for every error raised by ``protocol``."""


class MalformedMessage(ProtocolError):
    """A field of a protocol message is missing, of the wrong type or out of range."""


class BadSignature(ProtocolError):
    """No signature by the expected key covers the signed body."""


class ContractError(ProtocolError):
    """An input contract is malformed: a field is missing, unknown, of the wrong type or out of range."""
