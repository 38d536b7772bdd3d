"""Slots and journal on a real disk; boot picks the newest slot that still verifies."""

import asyncio
import json
from pathlib import Path

import numpy as np
from agent_factories import LABELS10, contract_for, sha, zoo_model

from client import Agent, AgentConfig
from client.slots import Journal, SlotRecord, SlotStore
from models.roadsigns import render
from protocol.contract import InputContract

IMAGE = render(3, np.random.default_rng(0))


def record(slot: str, version: int, package: bytes, model: bytes) -> SlotRecord:
    return SlotRecord(slot, version, sha(model), sha(package), "lossless", InputContract.from_dict(contract_for(LABELS10)),
                      version, None)


def installed(tmp_path: Path) -> tuple[SlotStore, Journal]:
    store = SlotStore(tmp_path)
    j = Journal()
    m1, m2 = zoo_model(1), zoo_model(2)
    store.write_slot("a", b"pkg1", m1)
    store.write_slot("b", b"pkg2", m2)
    j.previous, j.active = record("a", 1, b"pkg1", m1), record("b", 2, b"pkg2", m2)
    store.save(j)
    return store, j


def boot(tmp_path: Path) -> Agent:
    agent = Agent(AgentConfig(server_url="http://offline.invalid", device_id="car-1", state_dir=tmp_path))
    asyncio.run(agent.start())
    return agent


def test_journal_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store, j = installed(tmp_path)
    j.outbox.append({"seq": 1, "state": "installed"})
    store.save(j)
    assert store.load() == j
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "journal.json", "slots"]


def test_unreadable_journal_is_set_aside_not_trusted(tmp_path: Path) -> None:
    store, _ = installed(tmp_path)
    store.journal_path.write_bytes(b'{"active": {"slot"')
    assert store.load() == Journal()
    assert len(list(tmp_path.glob("journal.corrupt-*.json"))) == 1


def test_free_slot_is_neither_the_active_nor_the_previous_one(tmp_path: Path) -> None:
    store, j = installed(tmp_path)
    assert {j.active.slot, j.previous.slot} == {"a", "b"}  # type: ignore[union-attr]
    assert store.free_slot(j) == "c"
    assert store.free_slot(Journal()) == "a"
    j.previous = None
    assert store.free_slot(j) == "a"


def test_boot_runs_the_active_slot_when_it_verifies(tmp_path: Path) -> None:
    installed(tmp_path)
    agent = boot(tmp_path)
    assert agent.running_version == 2 and agent.swapper.current.version == 2  # type: ignore[union-attr]


def test_boot_falls_back_to_previous_when_the_active_slot_is_damaged(tmp_path: Path) -> None:
    store, _ = installed(tmp_path)
    model = store.slot_dir("b") / "model.onnx"
    data = bytearray(model.read_bytes())
    data[1000] ^= 1
    model.write_bytes(bytes(data))
    agent = boot(tmp_path)
    assert agent.running_version == 1 and agent.swapper.current.version == 1  # type: ignore[union-attr]
    assert store.load().active.version == 1 and store.load().previous is None  # type: ignore[union-attr]


def test_boot_with_nothing_verified_runs_nothing(tmp_path: Path) -> None:
    store, _ = installed(tmp_path)
    (store.slot_dir("a") / "package").write_bytes(b"x")
    (store.slot_dir("b") / "package").write_bytes(b"y")
    agent = boot(tmp_path)
    assert agent.running_version == 0 and agent.swapper.current is None


def test_boot_empties_slots_the_journal_does_not_name(tmp_path: Path) -> None:
    """What a power cut during an install leaves (the third slot half written) goes at the next boot."""
    store, _ = installed(tmp_path)
    (store.slot_dir("c") / "package").write_bytes(b"half an install")
    (store.slot_dir("c") / ".model.onnx.staged").write_bytes(b"x")
    agent = boot(tmp_path)
    assert agent.running_version == 2
    assert sorted(p.parent.name for p in (tmp_path / "slots").glob("*/*")) == ["a", "a", "b", "b"]


def test_journal_keeps_each_slot_contract_and_boot_applies_it(tmp_path: Path) -> None:
    store, j = installed(tmp_path)
    raw = json.loads(store.journal_path.read_text())
    assert raw["active"]["contract"] == contract_for(LABELS10)  # the offer's contract, as signed
    agent = boot(tmp_path)
    assert agent.swapper.current.contract == j.active.contract  # type: ignore[union-attr]


def test_a_slot_record_from_before_contracts_boots_with_the_preprocessing_it_was_installed_with(
        tmp_path: Path) -> None:
    """A journal written by an older agent (labels and input name, no contract) is read, not set aside."""
    store, _ = installed(tmp_path)
    now = boot(tmp_path).predict(IMAGE)
    raw = json.loads(store.journal_path.read_text())
    for name in ("active", "previous"):
        del raw[name]["contract"]
        raw[name].update(labels=LABELS10, input_name="input")
    store.journal_path.write_text(json.dumps(raw))
    agent = boot(tmp_path)
    assert agent.running_version == 2 and agent.journal.active.contract.labels == tuple(LABELS10)  # type: ignore[union-attr]
    assert agent.predict(IMAGE) == now  # the same label, probability and version as with its signed contract
    assert not list(tmp_path.glob("journal.corrupt-*.json"))


def test_a_slot_record_with_a_malformed_contract_sets_the_journal_aside(tmp_path: Path) -> None:
    store, _ = installed(tmp_path)
    raw = json.loads(store.journal_path.read_text())
    raw["active"]["contract"]["height"] = 10**9
    store.journal_path.write_text(json.dumps(raw))
    assert store.load() == Journal()
    assert len(list(tmp_path.glob("journal.corrupt-*.json"))) == 1


def test_a_slot_whose_recorded_contract_does_not_fit_its_model_is_dropped_at_boot_and_the_previous_runs(
        tmp_path: Path) -> None:
    """An old record's assumed contract (or a damaged one) that the model refuses: boot falls back, never fails."""
    store, _ = installed(tmp_path)
    raw = json.loads(store.journal_path.read_text())
    raw["active"]["contract"]["output_name"] = "no_such_output"
    store.journal_path.write_text(json.dumps(raw))
    agent = boot(tmp_path)
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert store.load().active.version == 1 and store.load().previous is None  # type: ignore[union-attr]
