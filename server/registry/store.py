"""SQL for lines, versions, packages and transfer deltas (flush only; the request commits)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db import utcnow
from server.orm import Delta, DeviceLine, Line, Package, Version, VersionVariant


def line_by_name(session: Session, name: str) -> Line | None:
    return session.scalar(select(Line).where(Line.name == name))


def lines(session: Session) -> list[Line]:
    return list(session.scalars(select(Line).order_by(Line.name)))


def add_line(session: Session, name: str) -> Line:
    line = Line(name=name, created_at=utcnow())
    session.add(line)
    session.flush()
    return line


def latest_version(session: Session, line_id: int) -> Version | None:
    return session.scalar(select(Version).where(Version.line_id == line_id).order_by(Version.number.desc()).limit(1))


def version(session: Session, line_id: int, number: int) -> Version | None:
    return session.scalar(select(Version).where(Version.line_id == line_id, Version.number == number))


def version_by_id(session: Session, version_id: int) -> Version | None:
    return session.get(Version, version_id)


def versions(session: Session, line_id: int) -> list[Version]:
    return list(session.scalars(select(Version).where(Version.line_id == line_id).order_by(Version.number)))


def version_count(session: Session, line_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Version).where(Version.line_id == line_id)) or 0)


def packages(session: Session, version_id: int, variant: int = 0) -> list[Package]:
    """The packages of one export of a version (``variant`` 0: the version's own)."""
    return list(session.scalars(select(Package).where(Package.version_id == version_id, Package.variant == variant)
                                .order_by(Package.codec)))


def package(session: Session, version_id: int, codec: str, variant: int = 0) -> Package | None:
    return session.scalar(select(Package).where(Package.version_id == version_id, Package.codec == codec,
                                                Package.variant == variant))


def variants(session: Session, version_id: int) -> list[VersionVariant]:
    """A version's other exports (issue 20), in order of publication."""
    return list(session.scalars(select(VersionVariant).where(VersionVariant.version_id == version_id)
                                .order_by(VersionVariant.variant)))


def add_variant(session: Session, row: VersionVariant) -> VersionVariant:
    """Insert a variant; its number must be free (a unique constraint: concurrent publishers retry)."""
    session.add(row)
    session.flush()
    return row


def package_by_sha(session: Session, sha256: str) -> Package | None:
    return session.scalar(select(Package).where(Package.sha256 == sha256).limit(1))


def line_package_by_sha(session: Session, line_id: int, sha256: str) -> Package | None:
    """The package with this SHA-256 among one line's versions (identical bytes may exist in other lines)."""
    q = (select(Package).join(Version, Version.id == Package.version_id)
         .where(Version.line_id == line_id, Package.sha256 == sha256).limit(1))
    return session.scalar(q)


def line_packages(session: Session, line_id: int) -> list[Package]:
    q = select(Package).join(Version, Version.id == Package.version_id).where(Version.line_id == line_id)
    return list(session.scalars(q))


def delta(session: Session, base_sha256: str, target_sha256: str) -> Delta | None:
    return session.scalar(select(Delta).where(Delta.base_sha256 == base_sha256, Delta.target_sha256 == target_sha256))


def delta_by_sha(session: Session, sha256: str) -> Delta | None:
    return session.scalar(select(Delta).where(Delta.sha256 == sha256).limit(1))


def add_delta(session: Session, base_sha256: str, target_sha256: str, sha256: str, size: int) -> Delta:
    row = Delta(base_sha256=base_sha256, target_sha256=target_sha256, sha256=sha256, bytes=size, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def running_versions(session: Session, line_name: str, limit: int) -> list[int]:
    """The versions most devices of this line run (by the version they last polled with), most common first."""
    q = (select(DeviceLine.running_version, func.count()).where(DeviceLine.line == line_name,
                                                                 DeviceLine.running_version.is_not(None),
                                                                 DeviceLine.running_version > 0)
         .group_by(DeviceLine.running_version).order_by(func.count().desc()).limit(limit))
    return [int(v) for v, _n in session.execute(q) if v is not None]
