"""Two model slots on disk and the state journal that says which one runs.

Layout under the agent's state directory::

    journal.json          the one source of truth, replaced atomically
    identity.json         device id, device token, pinned public key (written at enrolment)
    slots/a/ slots/b/     package (what deltas apply to) + model.onnx (what ONNX Runtime loads)
    downloads/            content-addressed artifacts and their .part files

The journal names the ``active`` slot, the ``previous`` one (kept for
rollback), the highest manifest version accepted (anti-replay), the report
outbox and the report sequence counter.  Install order, so that a crash at any
instant leaves a car that boots a verified model:

1. if the slot about to be written holds ``previous``, drop it from the journal;
2. write package and model into that slot (temp + fsync + rename);
3. one journal write makes it ``active``, the old active ``previous``, and
   queues the ``installed`` report in the same breath.

At boot every slot the journal names is re-hashed; a slot that fails is
dropped and the other one runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from client.atomic import commit_file, write_atomic, write_file
from client.download import sha256_file
from client.errors import StorageError

SLOT_NAMES = ("a", "b")
PACKAGE_FILE = "package"
MODEL_FILE = "model.onnx"
STAGED_MODEL_FILE = ".model.onnx.staged"


@dataclass
class SlotRecord:
    """What a slot holds, as promised by the verified offer it came from."""

    slot: str
    version: int
    model_sha256: str
    package_sha256: str
    codec: str
    labels: list[str]
    manifest_version: int
    rollout_id: int | None
    input_name: str = "input"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in _RECORD_FIELDS}


_RECORD_FIELDS = fields(SlotRecord)


@dataclass
class Journal:
    """Everything the agent must remember across a power cut."""

    active: SlotRecord | None = None
    previous: SlotRecord | None = None
    highest_manifest_version: int = 0
    next_seq: int = 1
    outbox: list[dict[str, Any]] = field(default_factory=list)
    #: Models that failed their smoke test or health window: never installed again unless a rollback names them.
    bad_models: list[str] = field(default_factory=list)
    #: The update in progress (manifest_version, artifact, bytes so far), for reports after a restart.
    pending: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, built by hand.

        Why not ``dataclasses.asdict``: it deep-copies every queued report,
        ~0.5 ms of Python per journal save that the camera thread waits behind
        for the GIL during an install (measured on ``bench/hotswap.py``).  The
        reports are plain dicts of JSON values already; ``json.dumps`` reads them
        as they are.
        """
        return {
            "active": self.active.to_dict() if self.active else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "highest_manifest_version": self.highest_manifest_version,
            "next_seq": self.next_seq,
            "outbox": self.outbox,
            "bad_models": self.bad_models,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Journal:
        def rec(x: Any) -> SlotRecord | None:
            return SlotRecord(**x) if isinstance(x, dict) else None

        return cls(
            active=rec(d.get("active")),
            previous=rec(d.get("previous")),
            highest_manifest_version=int(d.get("highest_manifest_version", 0)),
            next_seq=int(d.get("next_seq", 1)),
            outbox=list(d.get("outbox", [])),
            bad_models=list(d.get("bad_models", [])),
            pending=d.get("pending"),
        )


class SlotStore:
    """Disk side of the slots and the journal; the agent is its only writer."""

    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.fsync = fsync
        self.journal_path = self.state_dir / "journal.json"
        self.downloads_dir = self.state_dir / "downloads"
        for name in SLOT_NAMES:
            (self.state_dir / "slots" / name).mkdir(parents=True, exist_ok=True)
        self.downloads_dir.mkdir(parents=True, exist_ok=True)

    def slot_dir(self, slot: str) -> Path:
        return self.state_dir / "slots" / slot

    def load(self) -> Journal:
        """The journal on disk; a missing one is an empty car.  An unreadable one is set aside, not trusted."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return Journal()
        try:
            return Journal.from_dict(json.loads(raw))
        except (ValueError, TypeError, KeyError):
            os.replace(self.journal_path, self.journal_path.with_name(f"journal.corrupt-{int(time.time())}.json"))
            return Journal()

    def save(self, journal: Journal) -> None:
        """Replace the journal atomically.

        Raises:
            StorageError: the disk refused; the journal on disk is the previous one.
        """
        data = json.dumps(journal.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        write_atomic(self.journal_path, data, fsync=self.fsync, what="state journal")

    def verify(self, record: SlotRecord) -> bool:
        """True if the slot's files hash to what the journal says they are."""
        d = self.slot_dir(record.slot)
        try:
            return (
                sha256_file(d / PACKAGE_FILE) == record.package_sha256
                and sha256_file(d / MODEL_FILE) == record.model_sha256
            )
        except OSError:
            return False

    def free_slot(self, journal: Journal) -> str:
        """The slot an install may overwrite: never the active one."""
        if journal.active is None:
            return SLOT_NAMES[0]
        return SLOT_NAMES[1] if journal.active.slot == SLOT_NAMES[0] else SLOT_NAMES[0]

    def stage_model(self, slot: str, model: bytes) -> Path:
        """Put a decoded model beside ``slot``'s files without replacing its model (for loading and testing).

        Nothing trusts a staged file: ``write_slot(..., staged=)`` moves it into
        place durably, and a crash leaves only a scratch file the next stage
        overwrites.

        Raises:
            StorageError: the disk refused (for example full); the slot's files are untouched.
        """
        path = self.slot_dir(slot) / STAGED_MODEL_FILE
        write_file(path, model, what="decoded model")
        return path

    def write_slot(self, slot: str, package: bytes, model: bytes, *, staged: Path | None = None) -> None:
        """Write both files of a slot durably; the model by renaming ``staged`` (its bytes) when given.

        Raises:
            StorageError: the disk refused (for example full); the active slot was not touched.
        """
        d = self.slot_dir(slot)
        write_atomic(d / PACKAGE_FILE, package, fsync=self.fsync, what="model package")
        if staged is not None:
            commit_file(staged, d / MODEL_FILE, fsync=self.fsync, what="decoded model")
        else:
            write_atomic(d / MODEL_FILE, model, fsync=self.fsync, what="decoded model")

    def read_package(self, record: SlotRecord) -> bytes:
        return (self.slot_dir(record.slot) / PACKAGE_FILE).read_bytes()

    def model_path(self, record: SlotRecord) -> Path:
        """The slot's decoded ONNX file (ONNX Runtime loads it from the path: see ``HotSwapper.load_and_smoke_sync``)."""
        return self.slot_dir(record.slot) / MODEL_FILE

    def prune_downloads(self, keep: set[str]) -> None:
        """Delete finished artifacts no longer needed (part files for ``keep`` stay)."""
        for p in self.downloads_dir.iterdir():
            if p.name.split(".")[0] not in keep:
                p.unlink(missing_ok=True)


__all__ = ["Journal", "SlotRecord", "SlotStore", "StorageError"]
