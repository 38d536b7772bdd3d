"""The OpenAPI document describes the error bodies the registry really sends.

FastAPI documents every 422 as its own ``HTTPValidationError`` (``detail`` a
list), but ``app.py`` maps validation errors to the protocol's error shape
(``{"error", "detail": <sentence>, "errors": [...]}``, docs/PROTOCOL.md).  A
client generated from the schema -- or schemathesis in tests/hardening --
would otherwise be told the wrong shape.  ``document_errors`` rewrites that one
component when the schema is first built.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ValidationErrorOut",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "title": "Error", "description": "short machine code, e.g. validation_error"},
        "detail": {"type": "string", "title": "Detail", "description": "a sentence naming the first bad field"},
        "errors": {"type": "array", "title": "Errors", "items": {"type": "object"},
                   "description": "every validation error, as pydantic reports it"},
    },
}


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` document 422 bodies as the protocol's error shape."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                                 description=app.description, routes=app.routes)
            components = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in components:
                components["HTTPValidationError"] = ERROR_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
