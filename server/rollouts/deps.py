"""Typed dependencies for the rollouts feature's part of the app context."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from server.deps import Ctx
from server.rollouts.membership import MembershipCache


def get_membership(ctx: Ctx) -> MembershipCache:
    return ctx.membership


Members = Annotated[MembershipCache, Depends(get_membership)]
