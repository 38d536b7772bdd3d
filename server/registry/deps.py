"""Typed dependencies for the registry feature's part of the app context."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from server.deps import Ctx
from server.registry.storage import PackageStorage


def get_storage(ctx: Ctx) -> PackageStorage:
    return ctx.storage


Storage = Annotated[PackageStorage, Depends(get_storage)]
