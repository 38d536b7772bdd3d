"""Fixtures shared by the server tests.

``server``: one real registry per test module, with the rollout tick at 0.2 s so that
auto-advance and auto-halt happen within a test's patience.  A module that needs other
settings (caches, workers, codecs) defines its own ``server`` fixture, which overrides this one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.live_server import LiveServer, run_live_server


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A registry for the whole module (tests isolate themselves with fresh lines and tags)."""
    with run_live_server(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]),
                         rollout_tick_s=0.2) as srv:
        yield srv
