"""A throwaway PostgreSQL database: created on a cluster for one test or benchmark run, dropped after.

Used by ``server.inprocess`` and by the tests and benchmarks that run ``ota serve`` on PostgreSQL;
the caller says which cluster (library code reads no environment variables).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

# The cluster this machine and CI run (.ci/run); tests of PostgreSQL-only features use it on both passes.
LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def temporary_database(base: str | None) -> Iterator[str | None]:
    """A fresh database ``ota_test_<random>`` on the cluster of ``base`` (dropped afterwards), or None
    (meaning SQLite) when ``base`` is None or empty.
    """
    if not base:
        yield None
        return
    import psycopg

    name = f"ota_test_{uuid.uuid4().hex[:12]}"
    if base.startswith("postgresql://") or base.startswith("postgres://"):
        base = "postgresql+psycopg://" + base.split("://", 1)[1]
    with psycopg.connect(_libpq(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    prefix, _, _ = base.rpartition("/")
    try:
        yield f"{prefix}/{name}"
    finally:
        with psycopg.connect(_libpq(base), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
