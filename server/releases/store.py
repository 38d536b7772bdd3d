"""SQL for releases and their members."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.orm import Line, Release, ReleaseMember, Version


def by_name(session: Session, name: str) -> Release | None:
    return session.scalar(select(Release).where(Release.name == name))


def all_releases(session: Session) -> list[Release]:
    return list(session.scalars(select(Release).order_by(Release.id)))


def members(session: Session, release_id: int) -> list[tuple[str, int, str]]:
    """(line name, version number, source SHA-256) of a release's members, by line name."""
    rows = session.execute(select(Line.name, Version.number, Version.source_sha256).select_from(ReleaseMember)
                           .join(Version, Version.id == ReleaseMember.version_id)
                           .join(Line, Line.id == ReleaseMember.line_id)
                           .where(ReleaseMember.release_id == release_id).order_by(Line.name))
    return [(name, int(number), sha) for name, number, sha in rows]
