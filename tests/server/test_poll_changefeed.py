"""The poll caches' change feed (server/devices/changefeed.py): what one process commits, the others hear.

Real carriers only: the changes file beside a real SQLite path, and (when
``DATABASE_URL`` names a PostgreSQL cluster) real NOTIFY/LISTEN on a
throwaway database.  Waits are bounded polls for the event, not timings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from server.db import Database, upgrade_to_head
from server.devices import changefeed
from server.devices.changefeed import FileFeed, PostgresFeed
from tests.support.live_server import LOCAL_POSTGRES, temporary_database


class _Heard:
    def __init__(self) -> None:
        self.changes: list[tuple[list[int], bool]] = []
        self.gaps = 0

    def change(self, pks: list[int], lines: bool) -> None:
        self.changes.append((sorted(pks), lines))

    def gap(self) -> None:
        self.gaps += 1


def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_payloads_round_trip_and_split_below_the_notify_limit() -> None:
    payloads = changefeed.encode("src", range(1, 1201), True)
    assert len(payloads) == 3 and all(len(p) < 8000 for p in payloads)
    decoded = [changefeed.decode(p) for p in payloads]
    assert [pk for _, pks, _ in decoded for pk in pks] == list(range(1, 1201))
    assert all(src == "src" and lines for src, _, lines in decoded)
    assert changefeed.decode(changefeed.encode("x", [], False)[0]) == ("x", [], False)
    with pytest.raises(ValueError):
        changefeed.decode("garbage")


def test_feed_is_chosen_by_the_database_url(tmp_path: Path) -> None:
    feed = changefeed.for_database(f"sqlite:///{tmp_path / 'registry.db'}")
    assert isinstance(feed, FileFeed) and feed.path == tmp_path / "registry.db-changes"
    assert isinstance(changefeed.for_database("postgresql+psycopg://u@h/db"), PostgresFeed)
    assert isinstance(changefeed.for_database("sqlite://"), changefeed.InProcessFeed)


def test_file_feed_carries_commits_to_other_processes_and_a_truncation_is_a_gap(tmp_path: Path) -> None:
    db_file = tmp_path / "registry.db"
    a, b = FileFeed(db_file), FileFeed(db_file)
    heard_a, heard_b = _Heard(), _Heard()
    a.start(heard_a.change, heard_a.gap)
    b.start(heard_b.change, heard_b.gap)
    try:
        _until(lambda: a.trusted_since is not None and b.trusted_since is not None, "both feeds listening")
        a.publish_committed({7, 3}, False)
        a.publish_committed(set(), True)
        _until(lambda: len(heard_b.changes) == 2, "B hears A's two commits")
        assert heard_b.changes == [([3, 7], False), ([], True)]
        assert heard_a.changes == []  # a process does not hear itself (it dropped its own entries already)
        trusted = b.trusted_since
        db_file.with_name("registry.db-changes").write_bytes(b"")  # emptied: whatever was in between is lost
        _until(lambda: heard_b.gaps == 1, "B treats the shrink as a gap")
        assert b.trusted_since is not None and trusted is not None and b.trusted_since > trusted
    finally:
        a.stop()
        b.stop()
    assert b.trusted_since is None  # stopped: nothing is trusted past its time-to-live


def test_postgres_feed_delivers_committed_changes_only() -> None:
    with temporary_database(os.environ.get("DATABASE_URL") or LOCAL_POSTGRES) as url:
        assert url is not None
        upgrade_to_head(url)
        db = Database(url)
        sender, listener = PostgresFeed(url), PostgresFeed(url)
        heard = _Heard()
        listener.start(heard.change, heard.gap)
        try:
            _until(lambda: listener.trusted_since is not None, "LISTEN is active")
            with pytest.raises(RuntimeError), db.session_scope() as session:
                sender.publish_in_transaction(session, {1}, False)
                raise RuntimeError("rolled back: its NOTIFY must never arrive")
            with db.session_scope() as session:
                session.execute(text("SELECT 1"))
                sender.publish_in_transaction(session, {2, 5}, True)
            _until(lambda: len(heard.changes) >= 1, "the committed change arrives")
            time.sleep(0.2)  # room for a wrongly delivered rolled-back one to show up too
            assert heard.changes == [([2, 5], True)]
        finally:
            listener.stop()
            db.dispose()
