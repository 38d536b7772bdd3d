"""What each dashboard page shows, assembled from the feature services plus a few read-only queries.

Counts and byte totals come from the same service functions the admin API
serves (``rollouts.service``, ``accounting.service``, ``devices.service``,
``registry.service``), so a page can never disagree with ``ota rollout show``
or the JSON API.  What the services do not offer (histories over time,
audit events, the delta matrix, stuck devices) comes from ``queries``.
Every function returns plain data for a template; nothing here renders HTML.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from server.accounting import schemas as acc_schemas
from server.accounting import service as accounting
from server.audit import store as audit_store
from server.config import Settings
from server.dashboard import queries
from server.dashboard.fleetcache import Snapshot
from server.dashboard.format import human_bytes, percent, share
from server.dashboard.series import cumulative_by_group, quality_charts, state_counts_over_time
from server.devices import service as devices
from server.devices import store as device_store
from server.devices.presence import LastSeen
from server.errors import NotFound
from server.registry import service as registry
from server.rollouts import schemas as ro_schemas
from server.rollouts import service as rollouts
from server.rollouts.membership import MembershipCache

# Order of the per-state columns and stacked bars: the way a device moves, then the bad ends; "incompatible"
# (issue 20): cars never offered the version because they cannot run it (not failures, not waited for).
STATES = ("pending", "offered", "downloading", "downloaded", "verified", "installed", "failed", "rolled_back",
          "incompatible")
IN_PROGRESS = ("offered", "downloading", "downloaded", "verified")
# Bottom-up order of the stacked "devices per state over time" chart: done at the bottom, trouble on top.
STACK_ORDER = ("installed", "verified", "downloaded", "downloading", "offered", "failed", "rolled_back")


@dataclass
class RolloutSummary:
    """One rollout's figures, summed over its stages (as the API reports them per stage)."""

    rollout: ro_schemas.RolloutOut
    assigned: int
    counts: dict[str, int]
    progress: float  # installed / assigned
    stage_text: str
    totals: acc_schemas.Totals | None = None

    @property
    def in_progress(self) -> int:
        return sum(self.counts.get(s, 0) for s in IN_PROGRESS)


def summarize(r: ro_schemas.RolloutOut) -> RolloutSummary:
    counts: Counter[str] = Counter()
    for s in r.stages:
        counts.update(s.counts)
    assigned = sum(s.assigned for s in r.stages)
    stage = r.stages[r.current_stage] if r.current_stage < len(r.stages) else None
    stage_text = (f"stage {r.current_stage + 1} of {len(r.stages)} ({stage.percent:g}%)" if stage
                  else f"{len(r.stages)} stages")
    return RolloutSummary(r, assigned, {s: counts.get(s, 0) for s in STATES},
                          share(counts.get("installed", 0), assigned), stage_text)


def rollouts_page(session: Session, members: MembershipCache) -> dict[str, Any]:
    """Every rollout with state, progress and bytes, newest first, plus counts per rollout state."""
    rows = []
    for r in rollouts.list_rollouts(session, members):
        s = summarize(r)
        s.totals = accounting.rollout_accounting(session, r.id, largest=1).totals
        rows.append(s)
    by_state = Counter(s.rollout.state for s in rows)
    return {"rows": rows, "by_state": by_state, "states": STATES}


def rollout_page(session: Session, members: MembershipCache, rollout_id: int) -> dict[str, Any]:
    """One rollout: stages, states over time, failures, operator/automatic events, bytes.

    Raises:
        NotFound: unknown rollout.
    """
    r = rollouts.show(session, members, rollout_id)
    acc = accounting.rollout_accounting(session, rollout_id, largest=10)
    events = [(e.at, e.update_id, e.state) for e in queries.state_events(session, rollout_id)]
    series = state_counts_over_time(events, STACK_ORDER, until=datetime.now(UTC))
    audit = queries.rollout_audit(session, rollout_id)
    quality = rollout_quality(r)
    return {"s": summarize(r), "r": r, "acc": acc, "states": STATES,
            "quality": quality, "quality_charts": quality_charts(quality, _labels(session, r)) if quality else None,
            "state_chart": series.as_chart("devices", stacked=True) if series.xs else None,
            "failures": queries.failure_reasons(session, rollout_id), "audit": audit,
            "markers": [{"x": e.at.timestamp(), "label": e.action.removeprefix("rollout.")} for e in audit]}


def rollout_quality(r: ro_schemas.RolloutOut) -> dict[str, Any] | None:
    """The rollout's ``quality`` object exactly as ``GET /api/v1/rollouts/{id}`` shows it (gates, shadow plan,
    merged summaries per kind, verdict, history; docs/PROTOCOL.md), or None for a rollout without gates.

    The one place the dashboard reads quality figures: it takes them from the API's own ``RolloutOut``, so the
    page cannot disagree with ``ota rollout show``.
    """
    q = getattr(r, "quality", None)
    if q is None:
        return None
    data = q.model_dump(mode="json") if hasattr(q, "model_dump") else dict(q)
    return data if data.get("gates") or data.get("shadow") else None


def _labels(session: Session, r: ro_schemas.RolloutOut) -> list[str]:
    """The target version's class names (bar labels of the class-distribution chart); [] if unknown."""
    try:
        return list(registry.get_version(session, r.line, r.target_version).labels)
    except NotFound:
        return []


@dataclass
class DeltaMatrix:
    """Delta sizes from each version (rows) to each later or earlier version (columns) of one line and codec."""

    line: str
    codec: str
    versions: list[int]
    full: dict[int, int]
    cells: dict[tuple[int, int], int] = field(default_factory=dict)


def delta_matrices(session: Session) -> list[DeltaMatrix]:
    """One matrix per line and codec; cells hold deltas computed so far (the rest are made on first request)."""
    out: dict[tuple[str, str], DeltaMatrix] = {}
    for line in registry.list_lines(session):
        for v in registry.list_versions(session, line.name):
            for codec, pkg in v.packages.items():
                m = out.setdefault((line.name, codec), DeltaMatrix(line.name, codec, [], {}))
                m.versions.append(v.version)
                m.full[v.version] = pkg.bytes
    for c in queries.delta_cells(session):
        matrix = out.get((c.line, c.codec))
        if matrix is not None:
            matrix.cells[(c.base_version, c.target_version)] = c.bytes
    return [m for m in out.values() if len(m.versions) > 1]


def _sum_totals(totals: list[acc_schemas.Totals]) -> dict[str, Any]:
    keys = ("bytes_sent", "delta_bytes", "full_bytes", "package_bytes_equivalent", "fp32_bytes_equivalent",
            "devices_updated", "requests", "resumes")
    t = {k: sum(getattr(x, k) for x in totals) for k in keys}
    t["savings_vs_package"] = (1 - t["bytes_sent"] / t["package_bytes_equivalent"]
                               if t["package_bytes_equivalent"] else None)
    t["savings_vs_fp32"] = 1 - t["bytes_sent"] / t["fp32_bytes_equivalent"] if t["fp32_bytes_equivalent"] else None
    return t


LARGEST_ROWS = 10


def bandwidth_page(session: Session, members: MembershipCache, settings: Settings) -> dict[str, Any]:
    """Bytes over time per rollout and per network tag, what they would have cost in full, the largest transfers."""
    accs = [accounting.rollout_accounting(session, r.id, largest=1) for r in rollouts.list_rollouts(session, members)]
    largest = accounting.largest_transfers(session, LARGEST_ROWS)  # grouped, sorted and cut in SQL (issue 21)
    tag = settings.dashboard_network_tag
    rows = queries.transfer_buckets(session, tag)  # summed per time bucket in SQL, not every record
    now = datetime.now(UTC)
    per_rollout = cumulative_by_group(((at, f"rollout {rid}" if rid else "outside rollouts", n)
                                       for at, rid, _net, n in rows), until=now)
    per_network = cumulative_by_group(((at, f"{tag}={net}" if net else f"no {tag} tag", n)
                                       for at, _rid, net, n in rows), until=now)
    return {"accs": accs, "totals": _sum_totals([a.totals for a in accs]), "largest": largest,
            "sent_all": queries.bytes_sent(session), "transfers": queries.transfer_count(session), "tag": tag,
            "chart_rollout": per_rollout.as_chart("bytes") if per_rollout.xs else None,
            "chart_network": per_network.as_chart("bytes") if per_network.xs else None,
            "matrices": delta_matrices(session)}


FLEET_PAGE = 100
ATTENTION_ROWS = 100


@dataclass(frozen=True)
class FleetQuery:
    """The Fleet page's filter form and where it is in the id order (``after``/``before``: a device id)."""

    filter: device_store.InventoryFilter = field(default_factory=device_store.InventoryFilter)
    after: str | None = None
    before: str | None = None


def fleet_snapshot(session: Session, settings: Settings) -> Snapshot:
    """The Fleet figures over the whole fleet, read now: cards and bars (``FleetCounts``) and the attention rows."""
    now = datetime.now(UTC)
    stuck_before = now - timedelta(seconds=settings.dashboard_stuck_after_s)
    return Snapshot(now, (queries.fleet_counts(session, now, stuck_before),
                          queries.attention(session, stuck_before, ATTENTION_ROWS)))


def fleet_page(session: Session, presence: LastSeen, settings: Settings, fq: FleetQuery,
               figures: Snapshot) -> dict[str, Any]:
    """One page (``FLEET_PAGE`` cars, by id) of the filtered inventory, and the fleet's figures (``figures``: from
    ``fleet_snapshot``, at most ``dashboard_fleet_counts_s`` old, see ``fleetcache``).

    Nothing here loads every car (issue 21): the table is a keyset page of ``GET /api/v1/devices`` (same filters,
    same order, the same ``devices.service`` function), the cards and bars are SQL counts, the attention table
    lists at most ``ATTENTION_ROWS`` of each problem.
    """
    rows = devices.inventory_window(session, presence, fq.filter, limit=FLEET_PAGE + 1, after=fq.after,
                                    before=fq.before)
    if fq.before is not None:  # walking back: the extra row says whether there is a page before this one
        has_prev, has_next, rows = len(rows) > FLEET_PAGE, True, rows[-FLEET_PAGE:]
    else:
        has_prev, has_next, rows = fq.after is not None, len(rows) > FLEET_PAGE, rows[:FLEET_PAGE]
    counts, attention = figures.figures
    return {"devices": rows, "latest": queries.latest_updates_of(session, [d.device_id for d in rows]),
            "counts": counts, "by_version": counts.by_version, "figures_at": figures.at,
            "attention": attention, "attention_limit": ATTENTION_ROWS,
            "next_after": rows[-1].device_id if has_next and rows else None,
            "prev_before": rows[0].device_id if has_prev and rows else None,
            "page_size": FLEET_PAGE, "now": datetime.now(UTC), "stuck_after_s": settings.dashboard_stuck_after_s}


def device_page(session: Session, presence: LastSeen, settings: Settings, device_id: str) -> dict[str, Any]:
    """One device: tags, versions, its update history and every transfer it made.

    Raises:
        NotFound: the device is not enrolled.
    """
    d = devices.device_detail(session, presence, device_id)
    transfers = queries.transfers(session, settings.dashboard_network_tag, device_id=device_id)
    return {"d": d, "transfers": transfers, "sent": sum(t.bytes_sent for t in transfers), "now": datetime.now(UTC)}


def models_page(session: Session) -> dict[str, Any]:
    """Lines with their versions: sizes per codec, fidelity, delta from the previous version, who published."""
    lines = []
    for line in registry.list_lines(session):
        versions = sorted(registry.list_versions(session, line.name), key=lambda v: -v.version)
        codecs = sorted({c for v in versions for c in v.packages})
        lines.append({"line": line, "versions": versions, "codecs": codecs,
                      "storage": registry.storage_report(session, line.name)})
    return {"lines": lines}


def live_values(session: Session, members: MembershipCache, figures: Snapshot) -> dict[str, dict[str, Any]]:
    """The counts pages refresh in place: key -> {value (raw), text (what is shown), pct (for bars)}; the fleet's
    from ``figures`` (``fleet_snapshot``, shared with the Fleet page)."""
    out: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any, text: str | None = None, pct: float | None = None) -> None:
        out[key] = {"value": value, "text": text if text is not None else str(value), "pct": pct}

    rows = [summarize(r) for r in rollouts.list_rollouts(session, members)]
    for state in ("running", "paused", "halted", "completed", "aborted"):
        put(f"rollouts.{state}", sum(1 for s in rows if s.rollout.state == state))
    for s in rows:
        key = f"rollout.{s.rollout.id}"
        put(f"{key}.state", s.rollout.state)
        put(f"{key}.stage", s.rollout.current_stage, s.stage_text)
        put(f"{key}.assigned", s.assigned)
        put(f"{key}.in_progress", s.in_progress)
        put(f"{key}.progress", round(s.progress, 4), percent(s.progress), s.progress * 100)
        for state, n in s.counts.items():
            put(f"{key}.{state}", n, pct=share(n, s.assigned) * 100)
        for st in s.rollout.stages:
            put(f"{key}.stage{st.position}.assigned", st.assigned)
            for state in STATES:
                n = st.counts.get(state, 0)
                put(f"{key}.stage{st.position}.{state}", n, pct=share(n, st.assigned) * 100)
    fleet: queries.FleetCounts = figures.figures[0]
    put("fleet.devices", fleet.devices)
    put("fleet.drifted", fleet.drifting)
    put("fleet.stuck", fleet.stuck)
    put("fleet.seen_hour", fleet.seen_last_hour)
    sent = queries.bytes_sent(session)
    put("bytes.sent", sent, human_bytes(sent))
    return out


AUDIT_PAGE = 100
#: The look-back choices of the Audit page's "since" filter (label, seconds; 0: all time).
AUDIT_SINCE = (("all time", 0), ("last hour", 3600), ("last day", 86400), ("last week", 7 * 86400))


def audit_page(session: Session, f: audit_store.AuditFilter, before: int | None) -> dict[str, Any]:
    """The Audit page: one page of the audit log (the same rows as ``GET /api/v1/audit``), newest first, and
    the cursor of the next (older) page."""
    rows = audit_store.page(session, f, limit=AUDIT_PAGE, before=before)
    entries = [{"id": r.id, "at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
                "outcome": r.outcome, "detail": {k: v for k, v in r.detail.items() if k != "outcome"}}
               for r in rows]
    return {"entries": entries, "next_before": rows[-1].id if len(rows) == AUDIT_PAGE else None,
            "since_choices": AUDIT_SINCE}
