"""Quality summaries written in group commits: many cars' summaries, one short transaction (issue 18).

A car sends its cumulative comparison summary every few seconds while it shadows or runs a candidate.  Through
the general reports path each one cost its own write transaction and eight to ten ORM queries (about 5 ms of
a worker's CPU, docs/BENCHMARKS.md): at 10,000 cars every 30 s that is most of two cores.  A request that
carries only summaries is instead checked against the poll cache's views (the device by its token, the
line's offering rollouts, the device's recent offers: no SQL when they are cached) and queued here; one
writer per process takes everything queued and stores it in one transaction with a single upsert statement
(a summary replaces the car's stored one only when its seq is higher), then answers every waiting request.

While one batch is being written the next gathers, so at low load a summary waits for nobody, and under load
the transactions grow instead of multiplying.  A request is answered only after its batch committed: an
acknowledged summary is stored, as on the general path.

What the caches cannot vouch for (a rollout that no longer offers, an offer older than the cached ones, an
unknown token, a summary of the wrong version) is not decided here: ``fast_rows`` returns None and the
request takes the general path, which gives every refusal its one implementation
(``rollouts.quality.record``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Executable, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from protocol.quality import QualitySummary
from server.db import Database, utcnow
from server.devices.decision import DeviceView
from server.errors import Unavailable
from server.orm import QualitySummary as SummaryRow
from server.rollouts import quality
from server.rollouts import service as rollouts
from server.rollouts import stages as staging
from server.rollouts.lineview import LineView
from server.rollouts.membership import MembershipCache

MAX_BATCH = 2000  # summaries per transaction (a request holds at most 16)
#: How long the writer lets a batch gather after the first summary arrives.  Each transaction costs about a
#: millisecond of Python (begin, statement, commit) whatever its size; at 300 summaries a second without a
#: wait most batches held one or two.  A car does not wait for its acknowledgement.
LINGER_S = 0.025
_KEY = ("device_pk", "rollout_id", "candidate_version", "kind")


@dataclass(frozen=True, slots=True)
class SummaryWrite:
    """One summary to store, already checked: the row's columns."""

    device_pk: int
    rollout_id: int
    candidate_version: int
    kind: str
    seq: int
    stage: int | None
    frames: int
    agree: int
    summary: dict
    parsed: QualitySummary | None = None  # the summary itself, handed to this process's judgements once stored

    def key(self) -> tuple[int, int, int, str]:
        return self.device_pk, self.rollout_id, self.candidate_version, self.kind


def fast_rows(device: DeviceView, summaries: Sequence[QualitySummary],
              line_of: Callable[[str], LineView | None]) -> list[SummaryWrite] | None:
    """The rows to store if the cached views vouch for every summary, else None (the general path decides).

    Vouching means what ``rollouts.quality.record`` checks: the rollout is one of the line's offering rollouts
    (so it exists and is on that line), it ships ``candidate_version``, and it made this device an offer (one
    of the device's cached recent offers).
    """
    rows = []
    for s in summaries:
        line = line_of(s.line) if s.rollout_id is not None else None
        if line is None:
            return None
        r = next((r for r in line.rollouts if r.id == s.rollout_id), None)
        if r is None or r.version.number != s.candidate_version:
            return None
        if not any(rollout_key == r.id for rollout_key, _version in device.offers):
            return None
        rows.append(SummaryWrite(device.pk, r.id, s.candidate_version, s.kind, s.seq,
                                 staging.stage_of(r.id, device.device_id, r.percents), s.frames, s.agree,
                                 s.to_dict(), s))
    return rows


def _upsert(session: Session, rows: list[SummaryWrite]) -> None:
    """One INSERT ... ON CONFLICT DO UPDATE for the batch: a stored summary is replaced only by a higher seq."""
    latest: dict[tuple[int, int, int, str], SummaryWrite] = {}
    for row in rows:  # one row per key: PostgreSQL refuses to update a row twice in one statement
        held = latest.get(row.key())
        if held is None or row.seq > held.seq:
            latest[row.key()] = row
    now = utcnow()
    values = [{"device_pk": w.device_pk, "rollout_id": w.rollout_id, "candidate_version": w.candidate_version,
               "kind": w.kind, "seq": w.seq, "stage": w.stage, "frames": w.frames, "agree": w.agree,
               "summary": w.summary, "updated_at": now} for w in latest.values()]
    session.execute(_statement(session.get_bind().dialect.name), values)


_STATEMENTS: dict[str, Executable] = {}


def _statement(dialect_name: str) -> Executable:
    """The upsert, built once per dialect: building ``excluded`` and its column proxies was ~5% of a serving
    process's CPU under 300 summaries a second (py-spy, bench/load.py --quality-cars)."""
    stmt = _STATEMENTS.get(dialect_name)
    if stmt is None:
        table: Table = SummaryRow.__table__  # type: ignore[assignment]
        insert = (postgresql if dialect_name == "postgresql" else sqlite).insert(table)
        stmt = _STATEMENTS[dialect_name] = insert.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={c: insert.excluded[c] for c in ("seq", "stage", "frames", "agree", "summary", "updated_at")},
            where=table.c.seq < insert.excluded.seq)
    return stmt


class SummaryIngest:
    """The per-process queue and its writer: ``await submit(rows)`` returns once ``rows`` are committed.

    Raises from ``submit`` what the batch's transaction raised (``Unavailable`` when the database is down):
    nothing was stored for that request, and the car keeps its summaries and sends them again.
    """

    def __init__(self, db: Database, members: MembershipCache, judge_due: Callable[[int], bool]) -> None:
        self.db, self.members, self.judge_due = db, members, judge_due
        self._queue: deque[tuple[list[SummaryWrite], asyncio.Future[None]]] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (tests read it)

    async def submit(self, rows: list[SummaryWrite]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, future))
        if self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write_forever(self._wake), name="summary-ingest")
        assert self._wake is not None
        self._wake.set()
        await future

    async def close(self) -> None:
        """Stop the writer (the app's shutdown, after uvicorn let in-flight requests finish)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        queued, self._queue = list(self._queue), deque()
        _settle(queued, Unavailable("the server is shutting down; send the summaries again"))

    async def _write_forever(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            await asyncio.sleep(LINGER_S)
            wake.clear()
            while self._queue:
                batch, taken = [], 0
                while self._queue and taken < MAX_BATCH:
                    rows, future = self._queue.popleft()
                    batch.append((rows, future))
                    taken += len(rows)
                await self._write(batch)

    async def _write(self, batch: list[tuple[list[SummaryWrite], asyncio.Future[None]]]) -> None:
        try:
            await self.db.run_write(self._store, [row for rows, _ in batch for row in rows])
        except Exception as e:  # noqa: BLE001 - answered to each request below
            if len(batch) > 1 and not isinstance(e, Unavailable):
                # one bad request must not fail the others: write each on its own (not when the database is
                # down: every one would wait out the busy timeout in turn)
                for one in batch:
                    await self._write([one])
                return
            _settle(batch, e)
            return
        self.batches += 1
        _settle(batch, None)

    def _store(self, session: Session, rows: list[SummaryWrite]) -> None:
        _upsert(session, rows)
        # before the judgements below, which see these rows already; should the transaction roll back, a
        # primed summary matches no stored seq and is never used
        quality.parsed_for(self.db.engine).prime(
            (row.device_pk, row.rollout_id, row.kind, row.candidate_version, row.parsed)
            for row in rows if row.parsed is not None)
        for rollout_id in sorted({row.rollout_id for row in rows}):
            if self.judge_due(rollout_id):
                rollouts.evaluate(session, self.members, rollout_id)


def _settle(batch: list[tuple[list[SummaryWrite], asyncio.Future[None]]], error: BaseException | None) -> None:
    for _rows, future in batch:
        if future.done():  # the request went away (client disconnected): nobody to answer
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
