"""A real registry for tests: ``server.inprocess`` with the database this run was asked for.

Use it through the fixtures in ``tests/conftest.py`` (``live_server``,
``live_server_factory``), or directly for a module-scoped server::

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        with run_live_server(tmp_path_factory.mktemp("srv")) as srv:
            srv.publish(ZOO / "v1.onnx")
            yield srv

``LiveServer`` is documented in ``server/inprocess.py``.  When the environment variable
``DATABASE_URL`` is set (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``, CI's second
pass) each server gets its own freshly created database on that cluster, dropped when it stops;
otherwise a SQLite file in the data dir.  The harness itself lives in the installed package so that
``bench/`` uses it without importing ``tests/``; only the environment is read here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server import scratchdb
from server.inprocess import FAST_SETTINGS, LiveServer, run_in_thread
from server.scratchdb import LOCAL_POSTGRES

__all__ = ["FAST_SETTINGS", "LOCAL_POSTGRES", "LiveServer", "run_live_server", "temporary_database"]


@contextmanager
def temporary_database(base: str | None = None) -> Iterator[str | None]:
    """A fresh PostgreSQL database on ``base`` or DATABASE_URL when set (dropped afterwards), else None (SQLite)."""
    with scratchdb.temporary_database(base or os.environ.get("DATABASE_URL")) as url:
        yield url


@contextmanager
def run_live_server(data_dir: Path, **kwargs: Any) -> Iterator[LiveServer]:
    """``server.inprocess.run_in_thread`` on this run's database (DATABASE_URL's cluster, else SQLite)."""
    with run_in_thread(data_dir, database=os.environ.get("DATABASE_URL"), **kwargs) as live:
        yield live
