"""Errors the registry raises, designed for the caller's decision.

    RegistryError(message, status_code)        -> {"error": code, "detail": message}
    ├── BadRequest          400 malformed request the caller can fix
    │   └── InvalidModel    400 the upload is not a valid ONNX model (nothing stored)
    ├── Unauthorized        401 missing or wrong credential
    ├── Forbidden           403 authenticated, but not yours
    ├── NotFound            404 unknown line, version, rollout, device or artifact
    ├── Conflict            409 illegal state transition or duplicate
    │   └── IllegalTransition
    ├── TooLarge            413 upload above the configured limit
    ├── Unprocessable       422 well-formed but refused (e.g. fidelity gate)
    ├── RangeNotSatisfiable 416
    └── Unavailable         503 database unreachable or schema not at head

One exception handler in ``app.py`` maps them to JSON; ``HTTPException`` is
never raised outside routes.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: a message a user can act on plus the HTTP status it maps to."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code


class BadRequest(RegistryError):
    status_code, code = 400, "bad_request"


class InvalidModel(BadRequest):
    code = "invalid_model"


class Unauthorized(RegistryError):
    status_code, code = 401, "unauthorized"


class Forbidden(RegistryError):
    status_code, code = 403, "forbidden"


class NotFound(RegistryError):
    status_code, code = 404, "not_found"


class Conflict(RegistryError):
    status_code, code = 409, "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class TooLarge(RegistryError):
    status_code, code = 413, "too_large"


class RangeNotSatisfiable(RegistryError):
    status_code, code = 416, "range_not_satisfiable"


class Unprocessable(RegistryError):
    status_code, code = 422, "unprocessable"


class Unavailable(RegistryError):
    status_code, code = 503, "unavailable"
