"""Errors the car agent raises, shaped by what the caller does next.

    AgentError                  anything the agent reports instead of doing
    ├── ServerError             the registry answered wrongly (status, body); back off and poll again
    │   └── Unauthorized        the device token was refused; re-enrol with the fleet token
    ├── DownloadError           the network failed mid-transfer; retry, resuming the partial file
    ├── VerificationError       the bytes or the offer are bad; never install them
    │   ├── OfferRejected       signature, device, expiry, replay or downgrade check failed
    │   │   └── UnknownKey      signed by no key the car trusts yet: fetch the delegation, then decide
    │   ├── HashMismatch        an artifact or model does not match its SHA-256 (refetch it)
    │   └── SmokeTestFailed     the new model does not reproduce the golden outputs
    ├── StorageError            the car's disk refused a write (full, read-only); the old model keeps serving
    └── BadImage                ``predict`` was given something that is not an image; nothing was classified

``HashMismatch`` is the only verification error worth a retry: a bit flip in
transit is cured by fetching again, a bad signature or a bad model is not.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class for every error raised by ``client``."""


class ServerError(AgentError):
    """The registry gave an answer the agent cannot use."""

    def __init__(self, message: str, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class Unauthorized(ServerError):
    """The device (or enrollment) token was refused with 401."""


class DownloadError(AgentError):
    """A transfer failed in a way that retrying can fix."""


class VerificationError(AgentError):
    """Bytes or metadata failed a check; they must not be installed."""


class OfferRejected(VerificationError):
    """A signed offer failed signature, identity, expiry, replay or downgrade checks."""


class UnknownKey(OfferRejected):
    """No signature names a key the car trusts: a newer root-signed delegation may name it."""


class HashMismatch(VerificationError):
    """Content does not match the SHA-256 the signed offer promised."""


class SmokeTestFailed(VerificationError):
    """The new model does not reproduce the manifest's golden outputs."""


class StorageError(AgentError):
    """The local disk refused a write; nothing already installed was touched."""


class BadImage(AgentError, ValueError):
    """The caller's image is not a uint8 image (HxW grey, HxWx3 RGB, HxWx4 RGBA); the model was not run."""
