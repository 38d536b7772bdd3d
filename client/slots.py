"""Two model slots on disk and the state journal that says which one runs.

Layout under the agent's state directory::

    journal.json             the one source of truth, replaced atomically
    identity.json            device id, device token, pinned public key (written at enrolment)
    slots/a/ slots/b/ slots/c/
                             package (what deltas apply to) + model.onnx (what ONNX Runtime loads)
    downloads/               content-addressed artifacts and their .part files

The journal names the ``active`` slot, the ``previous`` one (kept for
rollback), the highest manifest version accepted (anti-replay), the report
outbox and the report sequence counter.  Install order, so that a crash at any
instant leaves a car that boots a verified model:

1. write package and model into the slot the journal does not name (temp +
   fsync + rename): nothing trusts it yet, so this needs no journal write;
2. one journal write makes it ``active``, the old active ``previous``, and
   queues the ``installed`` report in the same breath;
3. delete the files of the slot the journal no longer names (the old
   ``previous``), so two models stay on disk at rest.

Three directories, not two, so that step 1 never overwrites ``previous``:
with two, the journal had to forget ``previous`` durably first, one more
journal write per install beside the camera thread.

At boot every slot the journal names is re-hashed; a slot that fails is
dropped and the other one runs.

Shadow mode (issue 18) stages a candidate in the free slot and names it
``shadow``: never ``active``, so no restart boots it, but named, so no
``clear_unnamed`` deletes it while the car compares it with the live model.
When the rollout promotes that version, one journal write moves the record
from ``shadow`` to ``active`` (no second download); when the offer goes away,
the journal forgets it and its files are deleted.  The journal also keeps the
latest quality summary per comparison (``quality``) until the registry
acknowledges its ``seq``.

Each slot record keeps the input contract its offer signed (how an image
becomes the model's input, which output holds the scores, the labels): the
car applies it to every image it classifies, at once and after any reboot.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from client.atomic import commit_file, storage_error, write_atomic, write_file
from client.download import sha256_file
from client.errors import StorageError
from client.progress import PendingUpdate
from protocol.contract import InputContract
from protocol.errors import ContractError

SLOT_NAMES = ("a", "b", "c")
PACKAGE_FILE = "package"
MODEL_FILE = "model.onnx"
STAGED_MODEL_FILE = ".model.onnx.staged"


@dataclass
class SlotRecord:
    """What a slot holds, as promised by the verified offer it came from (its contract included)."""

    slot: str
    version: int
    model_sha256: str
    package_sha256: str
    codec: str
    contract: InputContract
    manifest_version: int
    rollout_id: int | None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in _RECORD_FIELDS}
        d["contract"] = _contract_dict(self.contract)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlotRecord:
        """A record as the journal holds it; one written before contracts were signed gets the legacy contract.

        Raises:
            ValueError: a field is missing or the contract is malformed (the journal is then set aside).
        """
        values = {f.name: d[f.name] for f in _RECORD_FIELDS if f.name != "contract"}
        raw = d.get("contract")
        try:
            contract = (InputContract.from_dict(raw) if raw is not None
                        else legacy_contract(d.get("input_name", "input"), d.get("labels", [])))
        except ContractError as e:
            raise ValueError(f"slot {d.get('slot')!r}: {e}") from e
        return cls(contract=contract, **values)


_RECORD_FIELDS = fields(SlotRecord)

#: The preprocessing every car applied to every model before offers carried a contract (all of them were
#: road-sign models of the one line there was); a record from then keeps being read as it was installed.
#: The same values migration 0004 backfilled into the registry's versions.
_LEGACY_PREPROCESSING: dict[str, Any] = {
    "layout": "NCHW", "height": 64, "width": 64, "resize": "stretch", "channel_order": "RGB", "scale": 1.0,
    "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output_name": "logits", "output_kind": "logits"}


def legacy_contract(input_name: str, labels: list[str]) -> InputContract:
    """The contract a slot record written before contracts existed was, in effect, installed with.

    Raises:
        ContractError: the old record's input name or labels are not valid contract values.
    """
    return InputContract.from_dict({**_LEGACY_PREPROCESSING, "input_name": input_name, "labels": list(labels)})


_dict_cache: dict[int, tuple[InputContract, dict[str, Any]]] = {}


def _contract_dict(contract: InputContract) -> dict[str, Any]:
    """``contract.to_dict()``, built once per contract: a journal save must not redo ``asdict`` on a
    thousand labels beside the camera thread (see ``Journal.to_dict``)."""
    hit = _dict_cache.get(id(contract))
    if hit is not None and hit[0] is contract:
        return hit[1]
    if len(_dict_cache) > 16:
        _dict_cache.clear()
    d = contract.to_dict()
    _dict_cache[id(contract)] = (contract, d)
    return d


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
    pending: PendingUpdate | None = None
    #: A shadow candidate's slot: verified and staged, never booted (see the module docstring).
    shadow: SlotRecord | None = None
    #: Latest cumulative quality summary per (kind, rollout, candidate version), as sent, until acknowledged.
    quality: list[dict[str, Any]] = field(default_factory=list)

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
            "pending": self.pending.to_dict() if self.pending else None,
            "shadow": self.shadow.to_dict() if self.shadow else None,
            "quality": self.quality,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Journal:
        def rec(x: Any) -> SlotRecord | None:
            return SlotRecord.from_dict(x) if isinstance(x, dict) else None

        return cls(
            active=rec(d.get("active")),
            previous=rec(d.get("previous")),
            highest_manifest_version=int(d.get("highest_manifest_version", 0)),
            next_seq=int(d.get("next_seq", 1)),
            outbox=list(d.get("outbox", [])),
            bad_models=list(d.get("bad_models", [])),
            pending=PendingUpdate.from_dict(d.get("pending")),
            shadow=rec(d.get("shadow")),
            quality=[q for q in d.get("quality", []) if isinstance(q, dict)],
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
        #: seq -> (the queued report, its JSON): queued reports never change, so each is encoded once.
        self._encoded: dict[int, tuple[dict[str, Any], str]] = {}

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
        write_atomic(self.journal_path, self.encode(journal), fsync=self.fsync, what="state journal")

    def encode(self, journal: Journal) -> bytes:
        """The journal as JSON, each queued report encoded only the first time it is saved.

        Why: ``json.dumps`` holds the GIL for the whole call, and the outbox is
        most of the journal (up to ``report_queue_max`` reports while offline);
        re-encoding it on every save made each save a pause for the camera
        thread that grew with the queue.  Joining cached strings does not.
        """
        d = journal.to_dict()
        outbox = d.pop("outbox")
        encoded: dict[int, tuple[dict[str, Any], str]] = {}
        parts = []
        for report in outbox:
            hit = self._encoded.get(report["seq"])
            text = hit[1] if hit is not None and hit[0] is report else json.dumps(
                report, sort_keys=True, separators=(",", ":"))
            encoded[report["seq"]] = (report, text)
            parts.append(text)
        self._encoded = encoded  # only what is still queued
        head = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return f'{head[:-1]},"outbox":[{",".join(parts)}]}}'.encode()

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
        """The slot an install writes: one the journal names neither ``active``, ``previous`` nor ``shadow``
        (the agent forgets a shadow candidate before it installs anything else, so one is always free)."""
        used = _named_slots(journal)
        return next(name for name in SLOT_NAMES if name not in used)

    def clear_unnamed(self, journal: Journal) -> None:
        """Delete the files of every slot the journal does not name (what an install left behind).

        Raises:
            StorageError: a file could not be deleted.
        """
        used = _named_slots(journal)
        for name in SLOT_NAMES:
            if name in used:
                continue
            for file in (PACKAGE_FILE, MODEL_FILE, STAGED_MODEL_FILE):
                path = self.slot_dir(name) / file
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:
                    raise storage_error(e, "unused slot file", path) from e

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
        """The slot's decoded ONNX file (loaded from the path: see ``HotSwapper.load_and_smoke_sync``)."""
        return self.slot_dir(record.slot) / MODEL_FILE

    def prune_downloads(self, keep: set[str]) -> None:
        """Delete finished artifacts no longer needed (part files for ``keep`` stay)."""
        for p in self.downloads_dir.iterdir():
            if p.name.split(".")[0] not in keep:
                p.unlink(missing_ok=True)


def _named_slots(journal: Journal) -> set[str]:
    return {r.slot for r in (journal.active, journal.previous, journal.shadow) if r is not None}


__all__ = ["Journal", "SlotRecord", "SlotStore", "StorageError", "legacy_contract"]
