"""Rollout decisions: create, operator actions, auto-advance/auto-halt, and who gets which version.

Desired version of a device (docs/PROTOCOL.md "Poll semantics"): the newest
rollout of the device's line that is running or paused, whose selector
matches the device's tags, and whose reached stages (0..current_stage)
include the device; otherwise the line's stable version.  Overlapping
rollouts are thus resolved by "newest wins".  A completed rollout makes its
version the line's stable version.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from protocol.platform import Platform, Requirements
from protocol.quality import Gate, judge
from server import audit, webhooks
from server.db import as_utc, utcnow
from server.errors import BadRequest, NotFound, Unprocessable
from server.orm import Line, Package, Rollout, RolloutStage, Version
from server.registry import fidelity
from server.registry import store as registry_store
from server.rollouts import machine, quality, schemas, store
from server.rollouts import stages as staging
from server.rollouts import windows as windowing
from server.rollouts.lineview import requirements_of
from server.rollouts.membership import MembershipCache, parse_platforms


def _fidelity_text(p: Package, gate: float | None) -> str:
    value = fidelity.agreement(p.codec, p.fidelity)
    if value is None:
        return (f"the {p.codec} package's agreement was never measured (the line had no calibration images when "
                "it was published: publish with --probe)")
    return f"the {p.codec} package's measured top-1 agreement {value:.4f} is below the line's gate {gate}"


def choose_codec(line: Line, version: Version, packages: list[Package], wanted: str | None,
                 allow_unmeasured: bool) -> str:
    """The package a rollout ships, decided once at creation (the poll path reads it off the rollout).

    ``wanted`` None: the smallest lossy package that passed the line's gate, else lossless.  A lossy
    package that is unmeasured or below the gate ships only with ``allow_unmeasured``.

    Raises:
        BadRequest: the version has no package for ``wanted``.
        Unprocessable: (code ``fidelity_gate``) the package is unmeasured or below the gate, or no package
            passed it, and ``allow_unmeasured`` is not set; the message names the flag.
    """
    by_codec = {p.codec: p for p in packages}
    gate = line.min_agreement
    flag = "pass --allow-unmeasured (API field allow_unmeasured) to ship it anyway"
    if wanted is not None:
        pkg = by_codec.get(wanted)
        if pkg is None:
            raise BadRequest(f"version {version.number} of {line.name!r} has no {wanted!r} package; "
                             f"it has {', '.join(sorted(by_codec)) or 'none'}")
        if not allow_unmeasured and not fidelity.passes(pkg.codec, pkg.fidelity, gate):
            raise Unprocessable(f"{_fidelity_text(pkg, gate)}; {flag}", code="fidelity_gate")
        return wanted
    shipping = fidelity.shipping_codec(((p.codec, p.bytes, p.fidelity) for p in packages), gate)
    if shipping is not None:
        return shipping
    if allow_unmeasured and packages:
        return min(packages, key=lambda p: (p.bytes, p.codec)).codec
    if not packages:
        raise BadRequest(f"version {version.number} of {line.name!r} has no package")
    reasons = "; ".join(_fidelity_text(p, gate) for p in packages)
    raise Unprocessable(f"no package of version {version.number} of {line.name!r} passed the line's gate: {reasons}; "
                        f"{flag}, or republish with --probe and a lossless codec", code="fidelity_gate")


def create(session: Session, members: MembershipCache, body: schemas.RolloutIn,
           actor: str) -> schemas.RolloutOut:
    """Start a rollout (state running, stage 0) of the package :func:`choose_codec` picks.

    Raises:
        NotFound: unknown line or version.  BadRequest: the version has no package for the codec.
        Unprocessable: the package did not pass the line's gate (see :func:`choose_codec`), or no car the
            rollout selects can run the version (code ``incompatible``).
    """
    line = registry_store.line_by_name(session, body.line)
    if line is None:
        raise NotFound(f"model line {body.line!r} does not exist")
    version = registry_store.version(session, line.id, body.version)
    if version is None:
        raise NotFound(f"line {body.line!r} has no version {body.version}")
    codec = choose_codec(line, version, registry_store.packages(session, version.id), body.codec,
                         body.allow_unmeasured)
    if not body.rollback:  # a rollback goes back to what the cars ran
        _check_some_car_fits(session, line, version, body.selector)
    now = utcnow()
    starts_at = as_utc(body.starts_at) if body.starts_at is not None else None
    r = Rollout(line_id=line.id, version_id=version.id, target_version=version.number,
                previous_stable=line.stable_version, codec=codec, selector=dict(body.selector), state="running",
                current_stage=0, stage_started_at=max(now, starts_at) if starts_at else now, rollback=body.rollback,
                error_threshold_pct=body.error_threshold_pct, error_threshold_count=body.error_threshold_count,
                created_by=actor, created_at=now, updated_at=now, gates=list(body.gates) or None,
                shadow=body.shadow.model_dump() if body.shadow is not None else None,
                in_progress_timeout_s=body.in_progress_timeout_s, starts_at=starts_at,
                windows=[w.model_dump() for w in body.windows] if body.windows else None)
    session.add(r)
    session.flush()
    first = 0
    if body.shadow is not None:  # the shadow stage is stage 0; the live stages follow (issue 18)
        session.add(RolloutStage(rollout_id=r.id, position=0, percent=body.shadow.percent,
                                 min_soak_s=body.shadow.min_s, success_threshold_pct=None, mode="shadow"))
        first = 1
    for i, s in enumerate(body.stages, start=first):
        # issue 21: the canary (first live stage) needs an install before it may auto-advance unless told
        min_installed = s.min_installed if s.min_installed is not None else (1 if i == first else 0)
        session.add(RolloutStage(rollout_id=r.id, position=i, percent=s.percent, min_soak_s=s.min_soak_s,
                                 success_threshold_pct=s.success_threshold_pct, mode="live",
                                 min_installed=min_installed))
    audit.record(session, actor, "rollout.create", rollout_id=r.id, line=line.name, version=version.number,
                 rollback=body.rollback, codec=codec, allow_unmeasured=body.allow_unmeasured,
                 gates=list(body.gates), shadow=r.shadow, in_progress_timeout_s=body.in_progress_timeout_s,
                 min_installed=[s.min_installed for s in body.stages],
                 starts_at=starts_at.isoformat() if starts_at else None, windows=r.windows)
    webhooks.emit(session, "rollout.rolled_back" if body.rollback else "rollout.started", rollout_id=r.id,
                  line=line.name, version=version.number, previous_stable=r.previous_stable, actor=actor)
    session.flush()
    return show(session, members, r.id)


def _check_some_car_fits(session: Session, line: Line, version: Version, selector: dict[str, str]) -> None:
    """Refuse a rollout that no selected car could run (issue 20): every car it could reach reported a platform
    that misses the version's requirements.  A selection with no car, or with a car that never reported its
    platform (treated as able to run anything), is accepted.

    Raises:
        Unprocessable: (code ``incompatible``) naming the requirement the cars miss most.
    """
    exports = _exports_needs(session, version)
    digests = store.selected_platforms(session, line.name, selector) if exports is not None else []
    if exports is None or not digests or None in digests:
        return
    platforms = parse_platforms(store.platforms(session, set(d for d in digests if d is not None)))
    reasons: Counter[str] = Counter()
    for digest in digests:
        p = platforms.get(digest or "")
        unmet = [n.unmet(p) for n in exports] if p is not None else [[]]
        if not all(unmet):
            return
        reasons.update(unmet[0])  # why it cannot run the version's own export
    why, n = reasons.most_common(1)[0]
    raise Unprocessable(f"no car this rollout selects can run version {version.number} of {line.name!r}: {why} "
                        f"({n} of {len(digests)} cars); publish a variant they can run (for example an older "
                        "opset) or change the requirements; nothing was stored", code="incompatible")


def _get(session: Session, rollout_id: int, lock: bool = False) -> Rollout:
    r = store.rollout(session, rollout_id, lock=lock)
    if r is None:
        raise NotFound(f"rollout {rollout_id} does not exist; `ota rollout list` shows the rollouts")
    return r


def _apply(session: Session, r: Rollout, event: str, actor: str, reason: str | None = None,
           **detail: Any) -> None:
    """The one place a rollout's state changes (checked by the transition table)."""
    new = machine.transition(r.state, event)
    now = utcnow()
    if event == "advance":
        r.current_stage += 1
        r.stage_started_at = now
    if event == "resume" and r.state == "halted":
        r.stage_started_at = now  # the error threshold counts failures from here on
    if event == "complete":
        line = session.get(Line, r.line_id)
        if line is not None:
            line.stable_version = r.target_version
    r.state, r.updated_at = new, now
    if reason is not None:
        r.reason = reason
    audit.record(session, actor, f"rollout.{event}", rollout_id=r.id, state=new, stage=r.current_stage, reason=reason,
                 **detail)
    webhooks.emit(session, webhooks.ROLLOUT_EVENTS[event], rollout_id=r.id, version=r.target_version, state=new,
                  stage=r.current_stage, reason=reason, actor=actor)
    session.flush()


def act(session: Session, members: MembershipCache, rollout_id: int, action: str, actor: str) -> schemas.RolloutOut:
    """Operator action: pause, resume, advance (completes after the last stage), abort.

    Raises:
        NotFound: unknown rollout.  IllegalTransition (409): not allowed in the current state.
    """
    if action not in ("pause", "resume", "advance", "abort"):
        raise BadRequest(f"unknown rollout action {action!r}; use pause, resume, advance or abort")
    r = _get(session, rollout_id, lock=True)
    if action == "advance" and r.current_stage + 1 >= len(store.stages(session, r.id)):
        action = "complete"
    _apply(session, r, action, actor, reason=f"{action} by {actor}")
    return show(session, members, r.id)


def rollback(session: Session, members: MembershipCache, rollout_id: int, body: schemas.RollbackIn,
             actor: str) -> schemas.RolloutOut:
    """Abort ``rollout_id`` if still active and start a rollback rollout to an earlier version, one stage at 100%.

    Raises:
        NotFound: unknown rollout.  BadRequest: no version to roll back to.
    """
    r = _get(session, rollout_id, lock=True)
    target = body.version or r.previous_stable
    if target is None or target >= r.target_version:
        raise BadRequest(f"rollout {rollout_id} has no earlier version to roll back to; pass --version N "
                         f"with N < {r.target_version}")
    if r.state not in machine.FINAL:
        _apply(session, r, "abort", actor, reason=f"rolled back to version {target} by {actor}")
    line = session.get(Line, r.line_id)
    assert line is not None
    body_in = schemas.RolloutIn(line=line.name, version=target, codec=r.codec, selector=r.selector,
                                stages=[schemas.StageIn(percent=100)], rollback=True,
                                allow_unmeasured=True)  # back to what the cars ran before
    return create(session, members, body_in, actor)


#: Update states that count against a stage's error threshold: the car refused the version (smoke test,
#: verification) or installed it and rolled it back (its health window failed on live inferences).
ERROR_STATES = frozenset({"failed", "rolled_back"})


@dataclass
class Tally:
    """Per stage: assigned devices and their latest update states (``installed_unverified``: installs the
    server saw no evidence of, neither a signed report nor a full download), the devices in an error state
    since the tally's ``errors_since``, and when the stage's latest install was reported."""

    counts: list[dict[str, int]]
    errors: list[int]
    last_install: list[datetime | None]


def _tally(session: Session, members: MembershipCache, r: Rollout, stage_rows: list[RolloutStage], line: Line,
           errors_since: datetime | None = None, now: datetime | None = None) -> Tally:
    """The rollout's :class:`Tally` (errors since ``errors_since``, all of them if None); membership comes
    from ``members`` (cached).

    A car mid-update whose state has not moved for the rollout's ``in_progress_timeout_s`` is ``stuck``
    (counted beside its state, like ``installed_unverified``) and an error from the moment it got stuck
    (issue 21).  Shadow-stage cars at ``verified`` are never stuck: they sit there on purpose, comparing.
    """
    percents = [s.percent for s in stage_rows]
    now = now or utcnow()
    shadow_stage = 0 if stage_rows and stage_rows[0].mode == "shadow" else None
    m = members.get(session, r.id, line.name, dict(r.selector), tuple(percents))
    counts: list[dict[str, int]] = [{"assigned": n} for n in m.assigned]
    errors = [0] * len(percents)
    last_install: list[datetime | None] = [None] * len(percents)
    since = as_utc(errors_since) if errors_since is not None else None
    latest = store.latest_updates(session, r.id)
    unproven = {pk for pk, (state, _at, evidence) in latest.items() if state == "installed" and evidence is None}
    unproven -= store.fully_downloaded(session, r.id, unproven & set(m.stage_of_pk))
    version = session.get(Version, r.version_id)
    unfit = _unfit_platforms(m.platforms, _exports_needs(session, version))
    for pk, stage in m.stage_of_pk.items():
        # a car never offered the version because it cannot run it is "incompatible", not "pending" (issue 20)
        waiting = "incompatible" if m.platform_of_pk.get(pk) in unfit else "pending"
        state, at, _evidence = latest.get(pk, (waiting, None, None))
        c = counts[stage]
        c[state] = c.get(state, 0) + 1
        if pk in unproven:
            c["installed_unverified"] = c.get("installed_unverified", 0) + 1
        if state in ERROR_STATES and (since is None or (at is not None and as_utc(at) >= since)):
            errors[stage] += 1
        timeout = r.in_progress_timeout_s
        if (at is not None and timeout is not None and not (stage == shadow_stage and state == "verified")
                and staging.is_stuck(state, as_utc(at), now, timeout)):
            c["stuck"] = c.get("stuck", 0) + 1
            stuck_at = as_utc(at) + timedelta(seconds=timeout)
            if since is None or stuck_at >= since:
                errors[stage] += 1
        if state == "installed" and at is not None:
            seen = last_install[stage]
            last_install[stage] = as_utc(at) if seen is None else max(seen, as_utc(at))
    return Tally(counts, errors, last_install)


def _exports_needs(session: Session, version: Version | None) -> list[Requirements] | None:
    """What each export of the version needs (its own, then its variants'); None when one of them needs nothing."""
    if version is None:
        return None
    needs = [requirements_of(version), *(requirements_of(v) for v in registry_store.variants(session, version.id))]
    return None if any(n is None for n in needs) else [n for n in needs if n is not None]


def _unfit_platforms(platforms: dict[str, Platform], needs: list[Requirements] | None) -> set[str]:
    """The digests of the platforms that can run no export of the version (none when one needs nothing)."""
    if needs is None:
        return set()
    return {digest for digest, p in platforms.items() if all(n.unmet(p) for n in needs)}


def _counted_stages(stage_rows: list[RolloutStage], current: int) -> set[int]:
    """The stages whose cars the current stage counts: itself, plus the shadow stage's cars when it is the first
    live stage (they install with it: their installs, failures and live comparisons are its own)."""
    counted = {current}
    if current == 1 and stage_rows[0].mode == "shadow":
        counted.add(0)
    return counted


@dataclass(frozen=True)
class Schedule:
    """Whether the rollout may advance and make new offers at ``now`` (issue 21 item 2), and when it next may."""

    open: bool
    next_open: datetime | None


def schedule(r: Rollout, now: datetime) -> Schedule:
    """The rollout's schedule at ``now``: open from ``starts_at`` on, inside its windows (none: always).

    A window that no longer parses (a zone this machine lacks) keeps the rollout closed rather than open.
    """
    try:
        ws = windowing.parse_all(r.windows)
    except windowing.WindowError:
        return Schedule(False, None)
    start = as_utc(r.starts_at) if r.starts_at is not None else None
    nxt = windowing.next_open(ws, max(now, start) if start is not None else now)
    return Schedule(nxt == now, nxt)


_WAITING = "scheduled: "  # the prefix of a reason that says the rollout waits for its start or a window


def _note_closed(r: Rollout, sched: Schedule, now: datetime) -> None:
    """Say on the rollout why it does not advance (not a transition: no audit row)."""
    when = sched.next_open.isoformat(timespec="seconds") if sched.next_open else "never within two weeks"
    if r.starts_at is not None and as_utc(r.starts_at) > now:
        reason = f"{_WAITING}waits for its start at {as_utc(r.starts_at).isoformat(timespec='seconds')}"
    else:
        reason = f"{_WAITING}outside its maintenance windows; next opens {when}"
    if r.reason != reason:
        r.reason, r.updated_at = reason, utcnow()


def _has_quality(r: Rollout) -> bool:
    return bool(r.gates) or r.shadow is not None


def evaluate(session: Session, members: MembershipCache, rollout_id: int, now: datetime | None = None) -> str:
    """Auto-halt on the error threshold or a failing quality gate, auto-advance on the success threshold after
    the soak time, promote a shadow stage whose gates pass after its minimum time (issue 18).

    A stage advances only once ``min_installed`` of its cars installed (default 1 for the first live stage,
    0 later, issue 21): an empty canary waits for the operator and the rollout's reason says why; a later
    stage that holds no device advances once soaked.  Returns the rollout's state afterwards.
    """
    r = _get(session, rollout_id, lock=True)
    if r.state != "running":
        return r.state
    now = now or utcnow()
    line = session.get(Line, r.line_id)
    assert line is not None  # foreign key
    stage_rows = store.stages(session, r.id)
    stage = stage_rows[r.current_stage]
    counted = _counted_stages(stage_rows, r.current_stage)
    sched = schedule(r, now)
    if sched.open and r.reason and r.reason.startswith(_WAITING):
        r.reason, r.updated_at = None, now
    tally = _tally(session, members, r, stage_rows, line, errors_since=r.stage_started_at, now=now)
    counts: dict[str, int] = {}
    for i in counted:
        for k, v in tally.counts[i].items():
            counts[k] = counts.get(k, 0) + v
    # only installs the server saw evidence of count toward advancing (issue 15: phantom devices); cars that
    # cannot run the version are not waited for (issue 20): they are out of the stage's denominator
    verified = counts.get("installed", 0) - counts.get("installed_unverified", 0)
    sc = staging.StageCounts(counts["assigned"] - counts.get("incompatible", 0), verified,
                             sum(tally.errors[i] for i in counted))
    if _has_quality(r):
        quality.note_history(session, r, now)
    if staging.should_halt(sc, r.error_threshold_pct, r.error_threshold_count):
        stuck = sum(tally.counts[i].get("stuck", 0) for i in counted)
        also = f" ({stuck} stuck mid-update past {r.in_progress_timeout_s:g} s)" if stuck else ""
        _apply(session, r, "halt", "auto", reason=f"error threshold reached in stage {r.current_stage}: "
                                                  f"{sc.failed} of {sc.assigned} devices failed or rolled back"
                                                  f"{also}")
        return r.state
    gates = quality.gates_of(r)
    if stage.mode == "shadow":
        return _evaluate_shadow(session, r, stage, gates, now, sched)
    if gates:  # live gates on the current stage's cars: a failure halts, a pass does not hold advancing back
        verdict = judge(gates, quality.merged(session, r, "live", counted).summary)
        if verdict.passed is False:
            assert verdict.failing is not None
            _apply(session, r, "halt", "auto", gate=str(verdict.failing),
                   reason=quality.failed_reason(f"stage {r.current_stage} live", verdict))
            return r.state
    if not sched.open:  # issue 21 item 2: halting still works outside the windows; advancing waits for them
        _note_closed(r, sched, now)
        return r.state
    # The soak runs from the stage's last install, not from its start: a car that installed a second before
    # the threshold was met has not yet run the version (its health window is still open, and a rollback
    # from it must still be able to halt this stage).
    last = [tally.last_install[i] for i in counted if tally.last_install[i] is not None]
    soak_from = max([as_utc(r.stage_started_at), *[as_utc(t) for t in last if t is not None]])
    soaked = (now - soak_from).total_seconds() >= stage.min_soak_s
    if staging.should_advance(sc, stage.success_threshold_pct, soaked, stage.min_installed):
        event = "complete" if r.current_stage + 1 >= len(stage_rows) else "advance"
        why = f"{sc.installed} of {sc.assigned} installed" if sc.assigned else "no device in this stage"
        _apply(session, r, event, "auto", reason=f"stage {r.current_stage}: {why}")
    elif staging.should_advance(sc, stage.success_threshold_pct, soaked):  # only the minimum holds it back
        _note_waiting(r, stage, sc)
    return r.state


def _note_waiting(r: Rollout, stage: RolloutStage, sc: staging.StageCounts) -> None:
    """Say on the rollout why a stage that would otherwise advance waits (issue 21: an empty canary); the
    operator advances it by hand or widens the selection.  Not a transition: no audit row."""
    reason = (f"stage {r.current_stage} waits: {sc.installed} installed of the {stage.min_installed} it needs "
              f"before advancing ({sc.assigned} devices in the stage); advance by hand (`ota rollout advance "
              f"{r.id}`) or select more cars")
    if r.reason != reason:
        r.reason, r.updated_at = reason, utcnow()


def _evaluate_shadow(session: Session, r: Rollout, stage: RolloutStage, gates: list[Gate], now: datetime,
                     sched: Schedule) -> str:
    """The shadow stage: halt as soon as a gate fails on enough frames; promote to the first live stage when
    every gate passes (none: at once) and the stage's minimum time has elapsed."""
    v = judge(gates, quality.merged(session, r, "shadow", {0}).summary)
    if v.passed is False:
        assert v.failing is not None
        _apply(session, r, "halt", "auto", reason=quality.failed_reason("shadow", v), gate=str(v.failing))
        return r.state
    if (now - as_utc(r.stage_started_at)).total_seconds() < stage.min_soak_s or not v.passed:
        return r.state
    if not sched.open:
        _note_closed(r, sched, now)
        return r.state
    why = quality.passed_reason(gates, v) if gates else f"shadow stage: no gates, {stage.min_soak_s:g} s elapsed"
    _apply(session, r, "advance", "auto", reason=why)
    return r.state


def evaluate_running(session: Session, members: MembershipCache) -> None:
    """Evaluate every running rollout (the periodic tick, for soak times)."""
    for r in store.rollouts(session, states=frozenset({"running"})):
        evaluate(session, members, r.id)


def quality_figures(session: Session) -> dict[tuple[int, str], dict[str, float | None]]:
    """(rollout id, kind) -> merged metrics, for the running and paused rollouts with quality telemetry
    (``/metrics``: only those, so the label set stays as small as the rollouts in flight)."""
    out: dict[tuple[int, str], dict[str, float | None]] = {}
    for r in store.rollouts(session, states=machine.OFFERING):
        if not _has_quality(r):
            continue
        for kind in ("shadow", "live"):
            m = quality.merged(session, r, kind)
            if m.summary is not None:
                out[(r.id, kind)] = m.summary.metrics()
    return out


def show(session: Session, members: MembershipCache, rollout_id: int) -> schemas.RolloutOut:
    r = _get(session, rollout_id)
    line = session.get(Line, r.line_id)
    assert line is not None  # foreign key
    stage_rows = store.stages(session, r.id)
    counts = _tally(session, members, r, stage_rows, line).counts
    in_shadow = stage_rows[r.current_stage].mode == "shadow" if stage_rows else False
    sched = schedule(r, utcnow())
    return schemas.RolloutOut(
        id=r.id, line=line.name if line else "?", target_version=r.target_version, previous_stable=r.previous_stable,
        codec=r.codec, selector=r.selector, state=r.state, current_stage=r.current_stage, rollback=r.rollback,
        error_threshold_pct=r.error_threshold_pct, error_threshold_count=r.error_threshold_count, reason=r.reason,
        in_progress_timeout_s=r.in_progress_timeout_s,
        starts_at=r.starts_at, windows=r.windows, open=sched.open, next_open=sched.next_open,
        created_by=r.created_by, created_at=r.created_at, updated_at=r.updated_at,
        quality=quality.describe(session, r, in_shadow, _counted_stages(stage_rows, r.current_stage)),
        stages=[schemas.StageOut(position=s.position, mode=s.mode, percent=s.percent, min_soak_s=s.min_soak_s,
                                 success_threshold_pct=s.success_threshold_pct, min_installed=s.min_installed,
                                 assigned=c["assigned"],
                                 counts={k: v for k, v in c.items() if k != "assigned"})
                for s, c in zip(stage_rows, counts, strict=True)],
    )


def list_rollouts(session: Session, members: MembershipCache, line: str | None = None) -> list[schemas.RolloutOut]:
    line_id = None
    if line is not None:
        row = registry_store.line_by_name(session, line)
        if row is None:
            raise NotFound(f"model line {line!r} does not exist")
        line_id = row.id
    return [show(session, members, r.id) for r in store.rollouts(session, line_id)]
