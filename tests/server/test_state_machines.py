"""Pure tests of the two state machines, stage assignment and thresholds: every pair, no I/O."""

from __future__ import annotations

import itertools

import pytest

from server.devices import states
from server.errors import IllegalTransition
from server.rollouts import machine, stages

DEVICE_ALLOWED = {
    ("offered", "downloading"), ("offered", "failed"),
    ("downloading", "downloading"), ("downloading", "downloaded"), ("downloading", "failed"),
    ("downloaded", "verified"), ("downloaded", "failed"),
    ("verified", "installed"), ("verified", "failed"),
    ("installed", "rolled_back"),
    ("failed", "downloading"),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(states.STATES, states.STATES)))
def test_device_update_transition_pair_follows_the_protocol_table(current: str, new: str) -> None:
    if (current, new) in DEVICE_ALLOWED:
        assert states.transition(current, new) == new
    else:
        with pytest.raises(IllegalTransition):
            states.transition(current, new)


def test_device_update_unknown_state_is_illegal() -> None:
    with pytest.raises(IllegalTransition, match="unknown update state"):
        states.transition("offered", "exploded")


ROLLOUT_ALLOWED = {
    ("running", "pause"): "paused", ("paused", "resume"): "running", ("halted", "resume"): "running",
    ("running", "advance"): "running", ("running", "complete"): "completed", ("running", "halt"): "halted",
    ("running", "abort"): "aborted", ("paused", "abort"): "aborted", ("halted", "abort"): "aborted",
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(machine.STATES, machine.EVENTS)))
def test_rollout_transition_pair_follows_the_table(state: str, event: str) -> None:
    if (state, event) in ROLLOUT_ALLOWED:
        assert machine.transition(state, event) == ROLLOUT_ALLOWED[(state, event)]
    else:
        with pytest.raises(IllegalTransition):
            machine.transition(state, event)


def test_stage_assignment_fractions_on_1000_devices_are_within_tolerance() -> None:
    percents = [1.0, 10.0, 50.0, 100.0]
    ids = [f"car-{i:04d}" for i in range(1000)]
    assigned = [stages.stage_of(42, d, percents) for d in ids]
    cumulative = [sum(1 for s in assigned if s is not None and s <= i) / len(ids) for i in range(len(percents))]
    # binomial standard deviation at n=1000 is at most 1.6 points; allow ~3 sigma
    for got, want in zip(cumulative, [0.01, 0.10, 0.50, 1.0], strict=True):
        assert abs(got - want) <= 0.05, (cumulative, percents)
    assert cumulative[-1] == 1.0


def test_stage_assignment_is_deterministic_and_differs_between_rollouts() -> None:
    ids = [f"car-{i}" for i in range(200)]
    assert [stages.bucket(7, d) for d in ids] == [stages.bucket(7, d) for d in ids]
    same = sum(1 for d in ids if stages.stage_of(7, d, [50, 100]) == stages.stage_of(8, d, [50, 100]))
    assert same < 150  # independent halves agree about half the time


def test_selector_needs_every_tag() -> None:
    assert stages.selector_matches({}, {"region": "eu"})
    assert stages.selector_matches({"region": "eu"}, {"region": "eu", "hw": "gen2"})
    assert not stages.selector_matches({"region": "eu", "hw": "gen1"}, {"region": "eu", "hw": "gen2"})
    assert not stages.selector_matches({"region": "eu"}, {})


@pytest.mark.parametrize(("failed", "pct", "count", "halt"), [
    (0, 10.0, None, False), (1, 10.0, None, True), (0, None, 2, False), (1, None, 2, False), (2, None, 2, True),
    (1, 20.0, None, False), (2, 20.0, None, True),
])
def test_error_threshold_halts_exactly_at_the_threshold(failed: int, pct: float | None, count: int | None,
                                                        halt: bool) -> None:
    assert stages.should_halt(stages.StageCounts(assigned=10, installed=0, failed=failed), pct, count) is halt


@pytest.mark.parametrize(("installed", "threshold", "soaked", "advance"), [
    (7, 80.0, True, False), (8, 80.0, True, True), (10, 80.0, False, False), (10, None, True, False),
])
def test_success_threshold_advances_exactly_at_the_threshold_after_soak(installed: int, threshold: float | None,
                                                                        soaked: bool, advance: bool) -> None:
    counts = stages.StageCounts(assigned=10, installed=installed, failed=0)
    assert stages.should_advance(counts, threshold, soaked) is advance
