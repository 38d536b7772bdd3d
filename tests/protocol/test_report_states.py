"""The update-progress table (protocol/report.py): every pair, and both ends agree on the names."""

from __future__ import annotations

import itertools
import typing

import pytest

from protocol.report import REPORTED, TRANSITIONS, IllegalStep, Report, UpdateState, cut_reason, transition
from server.devices.schemas import ReportedState

LEGAL = {(a, b) for a, bs in TRANSITIONS.items() for b in bs}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(UpdateState, UpdateState)))
def test_every_pair_is_legal_exactly_when_the_table_says(current: UpdateState, new: UpdateState) -> None:
    if (current, new) in LEGAL:
        assert transition(current, new) is new
    else:
        with pytest.raises(IllegalStep, match=f"cannot go from '{current}' to '{new}'"):
            transition(current, new)


def test_unknown_state_names_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(IllegalStep, match="unknown update state 'installing'.*rolled_back"):
        transition("downloading", "installing")
    with pytest.raises(IllegalStep, match="unknown update state"):
        transition("nowhere", "failed")


def test_the_registry_accepts_exactly_the_states_a_car_reports() -> None:
    assert set(typing.get_args(ReportedState)) == {str(s) for s in REPORTED}
    assert UpdateState.OFFERED not in REPORTED


def test_a_report_of_the_registry_only_state_cannot_be_built() -> None:
    with pytest.raises(IllegalStep, match="does not report 'offered'"):
        Report(seq=1, rollout_id=None, manifest_version=1, target_version=2, state=UpdateState.OFFERED, reason=None,
               bytes_received=0, artifact=None, elapsed_s=0.0, running_version=1, running_model_sha256=None,
               at="2026-12-06T00:00:00Z")


def test_a_long_reason_is_cut_to_what_the_registry_accepts() -> None:
    cut = cut_reason("x" * 5000)
    assert cut is not None and len(cut) == 2000 and cut.endswith("…")
    assert cut_reason("short") == "short" and cut_reason(None) is None
