"""State-change reports: built from the journal, queued in it, sent in batches.

Every report gets the next ``seq`` from the journal, so it survives a power cut
in the same atomic write as the state change it describes.  ``flush`` sends the
whole outbox in one request; the server acknowledges each seq (a re-sent one
is a no-op on its side) and only then are they dropped here.  While offline the
outbox grows up to ``report_queue_max``; beyond that the oldest progress
reports (``downloading``) go first, then the oldest of any kind.

Quality summaries (issue 18) ride on the same request as a top-level
``quality`` list: the journal keeps only the latest cumulative one per
comparison (``queue_quality``), each with its own seq from the same counter,
until the registry lists that seq in ``quality_accepted``.  A registry that
does not know them answers without that list, and they stay queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from client.api import RegistryClient
from client.errors import ServerError
from client.slots import Journal
from protocol.offer import format_time
from protocol.quality import MAX_SUMMARIES, QualitySummary
from protocol.report import REPORTED, Report, UpdateState, cut_reason

log = logging.getLogger("client.reports")

STATES = tuple(str(s) for s in REPORTED)


def utc_now_iso(now: datetime | None = None) -> str:
    """ISO 8601 UTC with a Z, the protocol's time format."""
    return format_time(now or datetime.now(UTC))


class SeqCounter:
    """The next report ``seq`` of a car whose lines keep separate journals (``client.multiagent``).

    The registry keeps one seq space per device and treats a re-sent seq as already applied, so two lines
    must never use the same one.  Each journal still records its own ``next_seq`` in the write that queues the
    report, so after a crash the highest of them (``start``) is past every seq that was ever queued.
    """

    def __init__(self, start: int = 1) -> None:
        self.next = start


@contextmanager
def shared_seq(journal: Journal, counter: SeqCounter | None) -> Iterator[None]:
    """Take seqs from ``counter`` (None: the journal's own) while queueing into ``journal``."""
    if counter is None:
        yield
        return
    journal.next_seq = max(journal.next_seq, counter.next)
    try:
        yield
    finally:
        counter.next = max(counter.next, journal.next_seq)


def enqueue(
    journal: Journal,
    *,
    state: str,
    rollout_id: int | None,
    manifest_version: int,
    target_version: int,
    reason: str | None = None,
    bytes_received: int = 0,
    artifact: str | None = None,
    elapsed_s: float = 0.0,
    now: datetime | None = None,
    queue_max: int = 500,
) -> dict[str, Any]:
    """Append one report to the journal's outbox (the caller saves the journal)."""
    if state not in STATES:
        raise ValueError(f"unknown report state {state!r}; one of {', '.join(STATES)}")
    running = journal.active
    report = Report(
        seq=journal.next_seq, rollout_id=rollout_id, manifest_version=manifest_version,
        target_version=target_version, state=UpdateState(state), reason=cut_reason(reason),
        bytes_received=int(bytes_received), artifact=artifact, elapsed_s=round(float(elapsed_s), 3),
        running_version=running.version if running else 0,
        running_model_sha256=running.model_sha256 if running else None, at=utc_now_iso(now),
    ).to_dict()
    journal.next_seq += 1
    journal.outbox.append(report)
    _trim(journal, queue_max)
    log.info("report seq=%d state=%s target=v%d bytes=%d reason=%s", report["seq"], state, target_version,
             bytes_received, reason)
    return report


def _trim(journal: Journal, queue_max: int) -> None:
    while len(journal.outbox) > queue_max:
        progress = next((i for i, r in enumerate(journal.outbox) if r["state"] == "downloading"), 0)
        journal.outbox.pop(progress)


def _quality_key(q: dict[str, Any]) -> tuple[Any, ...]:
    return q.get("kind"), q.get("rollout_id"), q.get("candidate_version")


def queue_quality(journal: Journal, summary: QualitySummary) -> dict[str, Any] | None:
    """Keep ``summary`` as the latest of its comparison, with the next seq (the caller saves the journal).

    Returns what was queued, or None when the summary says nothing new since the one queued (no seq spent).
    At most ``MAX_SUMMARIES`` comparisons are kept, the oldest going first: one request carries them all.
    """
    d = summary.to_dict()
    key = _quality_key(d)
    old = next((q for q in journal.quality if _quality_key(q) == key), None)
    if old is not None and {**old, "seq": 0} == {**d, "seq": 0}:
        return None
    d["seq"] = journal.next_seq
    journal.next_seq += 1
    QualitySummary.from_dict(d)  # what we send is what the registry bounds: a bug here fails loudly
    journal.quality = [q for q in journal.quality if _quality_key(q) != key][-(MAX_SUMMARIES - 1):] + [d]
    log.info("quality seq=%d %s v%d vs v%d: %d frames, %d agree, %d dropped", d["seq"], d["kind"],
             d["candidate_version"], d["baseline_version"], d["frames"], d["agree"], d["dropped"])
    return d


def stored_quality(journal: Journal, kind: str, rollout_id: int | None,
                   candidate_version: int) -> QualitySummary | None:
    """The latest summary the journal holds for this comparison (to continue it after a restart)."""
    for q in journal.quality:
        if _quality_key(q) == (kind, rollout_id, candidate_version):
            try:
                return QualitySummary.from_dict(q)
            except ValueError:
                return None
    return None


Signer = Callable[[dict[str, Any]], dict[str, Any]]


async def flush(api: RegistryClient, journal: Journal, *, batch_max: int = 100, sign: Signer | None = None) -> int:
    """Send queued reports; removes the ones the server answered for.  Returns how many were answered.

    ``sign`` adds the car key's signature to each report as it is sent (the outbox keeps them unsigned), so
    the server counts the car's installs toward a rollout without having to see the download.

    Raises:
        Offline, ServerError, Unauthorized: nothing was removed; the reports stay queued.
    """
    answered = 0
    quality = list(journal.quality)  # sent once per flush, with the first request
    while journal.outbox or quality:
        batch = journal.outbox[:batch_max]
        try:
            ack = await api.send_reports([sign(r) for r in batch] if sign else batch, quality)
        except ServerError as e:
            if e.status_code != 422:
                raise
            if quality:  # the summaries, not the reports, may be what the registry refuses: keep them queued
                log.warning("registry refused the quality summaries (%s); keeping them for later", e)
                quality = []
                continue
            if len(batch) > 1:
                batch_max = 1  # one malformed report must not hold up the others: find it
                continue
            log.error("server cannot parse report seq=%s (%s); dropping it", batch[0]["seq"], e)
            journal.outbox.pop(0)
            answered += 1
            continue
        if quality:
            taken = set(ack.quality_accepted)
            journal.quality = [q for q in journal.quality if q["seq"] not in taken]
            answered += len(taken & {q["seq"] for q in quality})
            quality = []
        done = set(ack.accepted) | {int(r.get("seq", -1)) for r in ack.rejected}
        for r in ack.rejected:
            log.warning("server rejected report seq=%s: %s %s", r.get("seq"), r.get("error"), r.get("detail"))
        if not done & {r["seq"] for r in batch}:
            break  # the server answered for none of them (or there were none): do not spin
        journal.outbox = [r for r in journal.outbox if r["seq"] not in done]
        answered += len(done)
    return answered
