"""Release decisions: a release pins one existing version per line, checked whole before anything is stored.

A release is immutable once made (a car that runs it runs exactly those versions); a new set is a new release.
Rollouts of a release and the car's all-or-nothing install of its members are the next step of issue 20.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server import audit
from server.db import utcnow
from server.errors import Conflict, NotFound, Unprocessable
from server.orm import Release, ReleaseMember
from server.registry import store as registry_store
from server.releases import schemas, store


def _out(session: Session, r: Release) -> schemas.ReleaseOut:
    return schemas.ReleaseOut(id=r.id, name=r.name, notes=r.notes, created_by=r.created_by, created_at=r.created_at,
                              members=[schemas.MemberOut(line=line, version=v, source_sha256=sha)
                                       for line, v, sha in store.members(session, r.id)])


def create(session: Session, body: schemas.ReleaseIn, actor: str) -> schemas.ReleaseOut:
    """Store a release when every pin names a published version; otherwise store nothing.

    Raises:
        Unprocessable: a pinned line or version does not exist (every bad pin is named, as ``pins.<line>``).
        Conflict: a release of that name exists.
    """
    found, missing = [], []
    for line_name, number in sorted(body.pins.items()):
        line = registry_store.line_by_name(session, line_name)
        version = registry_store.version(session, line.id, number) if line is not None else None
        if line is None:
            missing.append(f"pins.{line_name}: no model line {line_name!r} on this registry")
        elif version is None:
            missing.append(f"pins.{line_name}: line {line_name!r} has no version {number}")
        else:
            found.append((line.id, version.id))
    if missing:
        raise Unprocessable("; ".join(missing) + " (publish it first, or pin a version `ota versions` lists); "
                            "nothing was stored", code="unknown_version")
    if store.by_name(session, body.name) is not None:
        raise Conflict(f"release {body.name!r} exists (releases never change: choose another name)",
                       code="release_exists")
    release = Release(name=body.name, notes=body.notes, created_by=actor, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(release)
            session.flush()
            session.add_all(ReleaseMember(release_id=release.id, line_id=line_id, version_id=version_id)
                            for line_id, version_id in found)
            session.flush()
    except IntegrityError as e:  # the same name created concurrently
        raise Conflict(f"release {body.name!r} exists", code="release_exists") from e
    audit.record(session, actor, "release.create", release=body.name, pins=dict(sorted(body.pins.items())))
    return _out(session, release)


def show(session: Session, name: str) -> schemas.ReleaseOut:
    """Raises NotFound."""
    r = store.by_name(session, name)
    if r is None:
        raise NotFound(f"release {name!r} does not exist")
    return _out(session, r)


def list_releases(session: Session) -> list[schemas.ReleaseOut]:
    return [_out(session, r) for r in store.all_releases(session)]
