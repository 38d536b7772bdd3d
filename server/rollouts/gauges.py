"""The fleet gauges of ``/metrics`` (issue 21): SQL aggregates computed on the rollout tick, not per scrape.

A scrape only renders numbers already in memory, so scraping stays cheap however large the fleet; the tick
runs three GROUP BY queries: devices by (line, running version) (an index-only scan on
``ix_device_lines_line_running_version``), update rows by state for the rollouts that are not finished
(``device_updates.rollout_id`` is indexed), and rollouts by state.  Finished rollouts drop out of the
per-rollout gauges, so the label sets stay bounded by the active rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.orm import Device, DeviceLine, DeviceUpdate, Line, Rollout
from server.rollouts import machine


@dataclass
class FleetFigures:
    devices: dict[tuple[str, str], int] = field(default_factory=dict)  # (line, version or "none") -> devices
    updates: dict[tuple[str, str], int] = field(default_factory=dict)  # (rollout id, update state) -> rows
    active: dict[str, tuple[str, str]] = field(default_factory=dict)  # rollout id -> (line, state), unfinished
    rollouts: dict[str, int] = field(default_factory=dict)  # rollout state -> rollouts (every state, 0 included)


def fleet_figures(session: Session) -> FleetFigures:
    """The gauges' values now (three aggregate queries)."""
    out = FleetFigures()
    for line, version, n in session.execute(
            select(DeviceLine.line, DeviceLine.running_version, func.count())
            .join(Device, Device.id == DeviceLine.device_pk).where(Device.decommissioned_at.is_(None))
            .group_by(DeviceLine.line, DeviceLine.running_version)):
        out.devices[(line or "", str(version) if version is not None else "none")] = n
    unfinished = [s for s in machine.STATES if s not in machine.FINAL]
    for rollout_id, line_name, rollout_state in session.execute(
            select(Rollout.id, Line.name, Rollout.state).join(Line, Line.id == Rollout.line_id)
            .where(Rollout.state.in_(unfinished))):
        out.active[str(rollout_id)] = (line_name, rollout_state)
    if out.active:
        for rid, state, rows in session.execute(
                select(DeviceUpdate.rollout_id, DeviceUpdate.state, func.count())
                .where(DeviceUpdate.rollout_id.in_([int(r) for r in out.active]))
                .group_by(DeviceUpdate.rollout_id, DeviceUpdate.state)):
            out.updates[(str(rid), state)] = rows
    out.rollouts = dict.fromkeys(machine.STATES, 0)
    for state, count in session.execute(select(Rollout.state, func.count()).group_by(Rollout.state)):
        out.rollouts[state] = count
    return out
