"""Pure tests of the car's update-progress record (client/progress.py): every pair of states, the resume rule
and the journal form, no I/O."""

from __future__ import annotations

import itertools

import pytest

from client.progress import PROGRESS, IllegalStep, PendingUpdate
from client.slots import Journal
from protocol.report import TRANSITIONS, UpdateState

# What the car may report next, written out rather than read from the table it is checked against.
ALLOWED = {
    ("offered", "downloading"), ("offered", "failed"),
    ("downloading", "downloading"), ("downloading", "downloaded"), ("downloading", "failed"),
    ("downloaded", "verified"), ("downloaded", "failed"),
    ("verified", "installed"), ("verified", "failed"),
    ("installed", "rolled_back"),
    ("failed", "downloading"),
}


def _pending(state: UpdateState = UpdateState.OFFERED) -> PendingUpdate:
    return PendingUpdate(manifest_version=7, model_sha256="ab" * 32, started_at=1000.0, state=state)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(UpdateState, UpdateState)))
def test_every_step_the_car_takes_is_the_one_the_registry_replays(current: UpdateState, new: UpdateState) -> None:
    p = _pending(current)
    if (current, new) in ALLOWED:
        assert p.step(new) is new and p.state is new
        assert new in TRANSITIONS[current]
    else:
        with pytest.raises(IllegalStep, match=f"cannot go from '{current}' to '{new}'"):
            p.step(new)
        assert p.state is current  # a refused step changes nothing


def test_an_unknown_state_name_is_refused() -> None:
    with pytest.raises(IllegalStep, match="unknown update state 'exploded'"):
        _pending().step("exploded")


@pytest.mark.parametrize("at", list(UpdateState))
def test_a_resumed_install_repeats_only_the_reports_it_had_not_sent(at: UpdateState) -> None:
    p = _pending(at)
    sent = [s for s in PROGRESS if p.reported(s)]
    assert sent == (list(PROGRESS[:PROGRESS.index(at) + 1]) if at in PROGRESS else [])
    assert p.retrying is (at in (UpdateState.OFFERED, UpdateState.FAILED))


def test_a_whole_install_walks_the_table_and_a_retry_starts_with_downloading() -> None:
    p = _pending()
    for s in ("downloading", "downloading", "downloaded", "failed", "downloading", "downloaded", "verified",
              "installed"):
        p.step(s)
    assert p.state is UpdateState.INSTALLED


def test_the_journal_keeps_the_record_across_a_restart_in_the_keys_older_agents_wrote() -> None:
    p = _pending(UpdateState.DOWNLOADED)
    p.delta_failed = True
    stored = Journal(pending=p).to_dict()
    assert stored["pending"] == {"mv": 7, "model_sha256": "ab" * 32, "started_at": 1000.0, "state": "downloaded",
                                 "delta_failed": True}
    assert Journal.from_dict(stored).pending == p
    older = {"pending": {"mv": 3, "model_sha256": "cd" * 32, "started_at": 5.5, "state": "verified"}}
    assert Journal.from_dict(older).pending == PendingUpdate(3, "cd" * 32, 5.5, UpdateState.VERIFIED)


@pytest.mark.parametrize("bad", [None, [], {"mv": 1}, {"mv": "x", "started_at": 1.0},
                                 {"mv": 1, "started_at": 1.0, "state": "exploded"}])
def test_an_unreadable_record_starts_the_update_over(bad: object) -> None:
    assert Journal.from_dict({"pending": bad}).pending is None
