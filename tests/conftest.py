"""Shared fixtures.

``live_server``: a fresh real registry for one test (see
``tests/support/live_server.py`` for what it yields and how the database is
chosen: SQLite by default, a throwaway PostgreSQL database when
``DATABASE_URL`` is set).  ``live_server_factory(**settings)``: start one or
more servers with Settings overrides; all are stopped after the test.
For one server per module, use ``run_live_server`` in a module-scoped fixture.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.live_server import LiveServer, run_live_server  # noqa: E402

ZOO = ROOT / "models" / "zoo"


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Call with Settings overrides to start a server; every server started is stopped at teardown."""
    with ExitStack() as stack:
        count = 0

        def start(**overrides: Any) -> LiveServer:
            nonlocal count
            count += 1
            return stack.enter_context(run_live_server(tmp_path / f"server-{count}", **overrides))

        yield start


@pytest.fixture
def live_server(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """A fresh registry (empty database, no versions) on a free port."""
    return live_server_factory()


@pytest.fixture(scope="session")
def zoo() -> Path:
    """Folder of the shipped SqueezeNet versions (v1.onnx ... v5.onnx) and probe.npz."""
    return ZOO
