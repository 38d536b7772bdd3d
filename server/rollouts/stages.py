"""Deterministic stage assignment and the stage thresholds (pure).

A device's bucket is ``sha256("<rollout id>:<device id>")`` mapped to
[0, 100): the same on every replica and after restarts, and independent
between rollouts.  Stage percents are cumulative (1, 10, 100): a device is in
the first stage whose percent exceeds its bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from protocol.report import ACTIVE

#: Latest update states of a car that has been offered the version and has not finished with it.
IN_PROGRESS = frozenset(str(s) for s in ACTIVE)


def bucket(rollout_id: int, device_id: str) -> float:
    """The device's position in [0, 100) for this rollout."""
    h = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * 100.0


def stage_of(rollout_id: int, device_id: str, percents: Sequence[float]) -> int | None:
    """Index of the device's stage, or None if it falls beyond the last stage's percent."""
    b = bucket(rollout_id, device_id)
    for i, pct in enumerate(percents):
        if b < pct:
            return i
    return None


def selector_matches(selector: dict[str, str], tags: dict[str, str]) -> bool:
    """Every key=value of the selector must be among the device's tags (empty selector: all)."""
    return all(str(tags.get(k)) == str(v) for k, v in selector.items())


@dataclass(frozen=True)
class StageCounts:
    assigned: int
    installed: int
    failed: int


def is_stuck(state: str, updated_at: datetime, now: datetime, timeout_s: float | None) -> bool:
    """A car mid-update (offered, downloading, downloaded, verified) whose state has not moved for longer than
    the rollout's in-progress timeout (issue 21): it counts toward the error threshold."""
    return timeout_s is not None and state in IN_PROGRESS and (now - updated_at).total_seconds() > timeout_s


def should_halt(counts: StageCounts, error_pct: float | None, error_count: int | None) -> bool:
    """hawkBit-style error threshold on the current stage: percent of assigned, or a count."""
    if error_count is not None and counts.failed >= error_count:
        return True
    if error_pct is not None and counts.assigned and 100.0 * counts.failed / counts.assigned >= error_pct:
        return True
    return False


def should_advance(counts: StageCounts, success_pct: float | None, soaked: bool, min_installed: int = 0) -> bool:
    """Auto-advance once the stage's success share reaches its threshold, the soak time is over, and at
    least ``min_installed`` cars installed it (issue 21: a canary that drew no car is no evidence).

    A stage that holds no device and needs no install advances once soaked (an installed share of nobody
    would never be reached, and the rollout would wait forever); a manual stage (``success_pct`` None)
    never does.
    """
    if success_pct is None or not soaked or counts.installed < min_installed:
        return False
    if counts.assigned == 0:
        return True
    return 100.0 * counts.installed / counts.assigned >= success_pct
