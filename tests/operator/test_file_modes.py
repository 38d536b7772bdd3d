"""Secrets and state are created private from their first instant: 0600 files in 0700 directories.

What "from the first instant" means, and how it is checked: the test sets the process umask to 0 (so a
file opened the default way would be born 0666), and a Python audit hook looks at the file at the moment
it is renamed into place (``os.rename`` event, raised by ``os.replace``) or opened by SQLite
(``sqlite3.connect``), and records every ``os.chmod``.  A file created with the right mode is already
0600 then; one created wide and chmod-ed afterwards is either wide at that moment or shows a chmod.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.atomic import write_atomic
from client.identity import Identity, save_identity
from server.blobs import LocalBlobStore
from server.config import Settings, resolve_secrets
from server.db import Database, upgrade_to_head

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class FileEvents:
    """Audit events about files under one folder, with the file's mode at the instant of the event."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.active = False
        self.renamed: dict[str, int] = {}  # source path -> its mode when os.replace/os.rename ran
        self.connected: dict[str, int | None] = {}  # sqlite database -> its mode when sqlite3 opened it
        self.chmods: list[str] = []
        self.mkdirs: dict[str, int] = {}  # path -> the mode os.mkdir was asked for

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "os.rename" and str(args[0]).startswith(self.root):
            self.renamed[str(args[0])] = stat.S_IMODE(os.stat(args[0]).st_mode)
        elif event == "sqlite3.connect" and str(args[0]).startswith(self.root):
            self.connected[str(args[0])] = stat.S_IMODE(os.stat(args[0]).st_mode) if os.path.exists(args[0]) else None
        elif event == "os.chmod" and str(args[0]).startswith(self.root):
            self.chmods.append(str(args[0]))
        elif event == "os.mkdir" and str(args[0]).startswith(self.root):
            self.mkdirs[str(args[0])] = args[1]


_EVENTS: list[FileEvents] = []


def _dispatch(event: str, args: tuple[Any, ...], _watchers: list[FileEvents] = _EVENTS) -> None:
    # Bound at definition: at interpreter exit the module's globals are cleared while the hook still runs.
    for watcher in _watchers:
        watcher.hook(event, args)


sys.addaudithook(_dispatch)  # audit hooks cannot be removed; this one only forwards to active watchers


@pytest.fixture
def events(tmp_path: Path) -> Iterator[FileEvents]:
    watcher = FileEvents(tmp_path)
    _EVENTS.append(watcher)
    old_umask = os.umask(0)  # a careless create would now be world-writable, not just world-readable
    watcher.active = True
    try:
        yield watcher
    finally:
        watcher.active = False
        os.umask(old_umask)
        _EVENTS.remove(watcher)


def test_write_atomic_creates_the_file_with_the_given_mode_not_chmod_afterwards(tmp_path: Path,
                                                                               events: FileEvents) -> None:
    target = tmp_path / "secret.json"
    write_atomic(target, b"{}", mode=0o600)
    assert mode(target) == 0o600
    assert list(events.renamed.values()) == [0o600]  # already private when it took the real name
    assert events.chmods == []
    stale = tmp_path / ".again.json.tmp"  # a temp file left wide open by an older crash is not reused as is
    stale.write_bytes(b"old")
    os.chmod(stale, 0o666)
    events.chmods.clear()
    write_atomic(tmp_path / "again.json", b"{}", mode=0o600)
    assert mode(tmp_path / "again.json") == 0o600 and events.chmods == []


def test_the_car_identity_file_is_born_0600(tmp_path: Path, events: FileEvents) -> None:
    path = tmp_path / "car" / "identity.json"
    path.parent.mkdir(mode=0o700)
    save_identity(path, Identity("car-1", "device-token-secret", b"k" * 32, "00"))
    assert mode(path) == 0o600
    assert events.renamed == {str(path.with_name(".identity.json.tmp")): 0o600}
    assert events.chmods == []


def test_ota_agent_creates_its_state_dir_0700(tmp_path: Path, events: FileEvents) -> None:
    from cli.agent_cmds import make_state_dir

    state = tmp_path / "agent-state"
    make_state_dir(state)
    assert mode(state) == 0o700
    assert events.mkdirs[str(state)] == 0o700


def test_the_sqlite_database_exists_0600_before_sqlite_opens_it(tmp_path: Path, events: FileEvents) -> None:
    data = tmp_path / "data"
    db_file = data / "registry.db"
    url = f"sqlite:///{db_file}"
    upgrade_to_head(url)  # what `ota serve` does first
    assert events.connected, "alembic never opened the database"
    assert set(events.connected.values()) == {0o600}, events.connected
    assert events.mkdirs.get(str(data)) == 0o700
    db = Database(url)
    with db.engine.begin() as conn:  # WAL mode: SQLite creates -wal and -shm with the database's mode
        conn.exec_driver_sql("SELECT 1")
        for extra in (db_file, db_file.with_name("registry.db-wal"), db_file.with_name("registry.db-shm")):
            assert mode(extra) == 0o600, extra
    db.dispose()
    assert events.chmods == []


def test_the_data_dir_and_blob_store_are_private(tmp_path: Path, events: FileEvents) -> None:
    data = tmp_path / "fresh-data"
    resolve_secrets(Settings(environment="development", data_dir=data))
    assert mode(data) == 0o700
    store = LocalBlobStore(data / "blobs")
    digest = store.put(b"model bytes")
    blob = data / "blobs" / digest[:2] / digest
    assert mode(data / "blobs") == 0o700 and mode(blob.parent) == 0o700
    assert mode(blob) & 0o077 == 0, oct(mode(blob))
