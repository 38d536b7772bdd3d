"""``ota serve`` as a real subprocess (optionally several uvicorn workers) for the hardening tests.

``serve(data_dir, workers=2)`` is ``server.process.serve`` with the tests' settings: the fast
background periods, lossless codecs, and, when ``DATABASE_URL`` is set, a throwaway PostgreSQL
database on that cluster.  ``ServedRegistry.kill()`` sends SIGKILL to the whole process group (the
supervisor and its workers), as a power cut or the OOM killer would; ``restart()`` starts it again on
the same port and data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server import process
from server.process import FAST_ENV, ServedRegistry, child_env, free_port, wait_ready
from tests.support.live_server import temporary_database

__all__ = ["FAST_ENV", "ServedRegistry", "free_port", "serve", "wait_ready"]

@contextmanager
def serve(data_dir: Path, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[ServedRegistry]:
    """``ota serve --workers N`` on a free port; stopped (and its PostgreSQL database dropped) on exit."""
    with temporary_database() as pg_url, process.serve(data_dir, workers=workers, database_url=pg_url,
                                                       env=child_env({**FAST_ENV, **(env or {})})) as reg:
        yield reg
