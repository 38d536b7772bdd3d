"""Typed dependencies for the devices feature's part of the app context."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from server.deps import Ctx
from server.devices.presence import LastSeen


def get_presence(ctx: Ctx) -> LastSeen:
    return ctx.presence


Presence = Annotated[LastSeen, Depends(get_presence)]
