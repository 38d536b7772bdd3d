"""Wire shapes of releases (docs/PROTOCOL.md "Releases")."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from server.db import UtcDateTime

INT32 = 2**31 - 1
#: Lines one release pins: a car runs a handful of networks, and the car's agent follows at most 16 lines.
MAX_MEMBERS = 16
ReleaseName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
LineName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class ReleaseIn(BaseModel):
    """``pins``: line -> version number; every line at most once (a JSON object), 1 to 16 of them."""

    name: ReleaseName
    pins: dict[LineName, Annotated[int, Field(ge=1, le=INT32)]] = Field(min_length=1, max_length=MAX_MEMBERS)
    notes: str | None = Field(default=None, max_length=10_000)


class MemberOut(BaseModel):
    line: str
    version: int
    source_sha256: str  # the ONNX model as published


class ReleaseOut(BaseModel):
    id: int
    name: str
    notes: str | None
    members: list[MemberOut]
    created_by: str | None
    created_at: UtcDateTime
