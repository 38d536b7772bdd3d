"""Shadow stages and quality gates over real HTTP (issue 18): summaries stored per seq, merged, judged; a shadow
stage promoted by its gates or halted naming the failing one; a live gate that fails halts the rollout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path
from typing import Any

from sqlalchemy import select

from protocol.quality import QualitySummary
from server.db import Database
from server.devices.summaries import SummaryIngest, SummaryWrite
from server.orm import Device
from server.rollouts.membership import MembershipCache
from server.rollouts.stages import stage_of
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout, stored_state, summary
from tests.support.live_server import LiveServer, run_live_server

_lines = count(1)


def _line(server: LiveServer) -> tuple[str, dict[str, Any]]:
    """A fresh line with v1 (stable) and v2."""
    name = f"shadow-{next(_lines)}"
    v1 = server.publish(ZOO / "v1.onnx", line=name)
    server.publish(ZOO / "v2.onnx", line=name)
    return name, v1


def _fleet(server: LiveServer, line: str, v1: dict[str, Any], n: int) -> list[Car]:
    cars = []
    for i in range(n):
        car = Car(server, f"{line}-car-{i:03d}", {"region": "eu"})
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        car.package_sha256 = v1["packages"]["lossless"]["sha256"]
        assert car.poll(line) is None
        cars.append(car)
    return cars


def _shadow_cars(cars: list[Car], rollout: dict[str, Any]) -> list[Car]:
    percents = [s["percent"] for s in rollout["stages"]]
    return [c for c in cars if stage_of(rollout["id"], c.device_id, percents) == 0]


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _verify(car: Car, offer: dict[str, Any]) -> None:
    """A shadow car's path: download, verify, and stay at verified (it does not install)."""
    for state in ("downloading", "downloaded", "verified"):
        assert car.report(offer, state).status_code == 200


def _audit(server: LiveServer, action: str, rollout_id: int) -> list[dict[str, Any]]:
    rows = server.admin().get("/api/v1/audit", params={"limit": 1000}).json()
    return [a for a in rows if a["action"] == action and a["detail"].get("rollout_id") == rollout_id]


def test_bad_gates_and_shadow_settings_are_refused_naming_the_field_and_store_nothing(server: LiveServer) -> None:
    line, _ = _line(server)
    admin = server.admin()
    before = stored_state(server)
    r = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "gates": ["agreement>=0.9", "agreement=>0.9"]})
    assert r.status_code == 422 and "gates" in r.json()["detail"] and "agreement=>0.9" in r.json()["detail"]
    r = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "gates": ["accuracy>=0.9"]})
    assert r.status_code == 422 and "unknown metric 'accuracy'" in r.json()["detail"]
    r = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "shadow": {"percent": 0}})
    assert r.status_code == 422 and "shadow.percent" in r.json()["detail"]
    r = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "shadow": {"percent": 10, "min_s": -1}})
    assert r.status_code == 422 and "shadow.min_s" in r.json()["detail"]
    r = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "shadow": {"percent": 60},
                                             "stages": [{"percent": 50}, {"percent": 100}]})
    assert r.status_code == 422 and "shadow.percent" in r.json()["detail"]
    assert stored_state(server) == before


def test_shadow_stage_offers_a_shadow_plan_to_its_cars_only(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 16)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 40, "min_s": 3600, "sample_every": 5},
                       gates=["agreement>=0.97", "min_frames=5000"])
    assert [(s["mode"], s["percent"]) for s in r["stages"]] == [("shadow", 40), ("live", 100)]
    assert r["quality"]["gates"] == ["agreement>=0.97", "min_frames=5000"]
    assert r["quality"]["shadow"]["sample_every"] == 5 and r["quality"]["verdict"]["passed"] is None
    shadow = {c.device_id for c in _shadow_cars(cars, r)}
    assert 0 < len(shadow) < len(cars)
    for car in cars:
        offer = car.poll(line)
        if car.device_id in shadow:
            assert offer is not None and offer["quality"]["mode"] == "shadow"
            assert offer["quality"]["sample_every"] == 5 and offer["target_version"] == 2
        else:
            assert offer is None


def test_summaries_keep_the_highest_seq_and_merge_across_cars(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 12)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 50, "min_s": 3600},
                       gates=["agreement>=0.5", "min_frames=100000"])
    a, b = _shadow_cars(cars, r)[:2]
    offer_a, offer_b = a.poll(line), b.poll(line)
    assert offer_a is not None and offer_b is not None
    ack = a.send_quality(summary(offer_a, seq=5, frames=100, agree=90))
    assert ack.status_code == 200 and ack.json()["quality_accepted"] == [5], ack.text
    # a re-sent or older seq is acknowledged and changes nothing
    assert a.send_quality(summary(offer_a, seq=5, frames=999, agree=0)).json()["quality_accepted"] == [5]
    assert a.send_quality(summary(offer_a, seq=4, frames=999, agree=0)).json()["quality_accepted"] == [4]
    figures = show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]
    assert figures["frames"] == 100 and figures["agreement"] == 0.9 and figures["cars"] == 1
    assert b.send_quality(summary(offer_b, seq=1, frames=100, agree=70)).json()["quality_accepted"] == [1]
    assert a.send_quality(summary(offer_a, seq=6, frames=200, agree=190)).json()["quality_accepted"] == [6]
    q = show_rollout(server, r["id"])["quality"]
    assert q["summaries"]["shadow"]["frames"] == 300 and q["summaries"]["shadow"]["cars"] == 2
    assert abs(q["summaries"]["shadow"]["agreement"] - 260 / 300) < 1e-9
    assert len(q["summaries"]["shadow"]["class_counts"]["candidate"]) == 4
    assert q["verdict"]["passed"] is None  # 300 frames of the 100,000 the gate wants
    _wait("a history point", lambda: any(p["frames"] == 300 for p in show_rollout(server, r["id"])["quality"]["history"]))
    gauge = f'ota_rollout_quality_frames{{kind="shadow",rollout="{r["id"]}"}} 300.0'
    _wait("the frames gauge (set by the rollout tick)", lambda: gauge in server.admin().get("/metrics").text)
    assert show_rollout(server, r["id"])["state"] == "running"


def test_summaries_for_another_rollout_or_version_are_refused_one_by_one(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 8)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 50, "min_s": 3600},
                       gates=["min_frames=100000"])
    inside = _shadow_cars(cars, r)[0]
    outside = next(c for c in cars if c not in _shadow_cars(cars, r))
    offer = inside.poll(line)
    assert offer is not None and outside.poll(line) is None
    good = summary(offer, seq=2, frames=10, agree=10)
    other_version = {**summary(offer, seq=3, frames=10, agree=10), "candidate_version": 9}
    ack = inside.send_quality(good, other_version).json()
    assert ack["quality_accepted"] == [2] and [x["seq"] for x in ack["quality_rejected"]] == [3]
    ack = outside.send_quality(summary(offer, seq=1, frames=10, agree=10)).json()
    assert ack["quality_accepted"] == [] and "made no offer" in ack["quality_rejected"][0]["detail"]
    assert show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]["frames"] == 10


def test_malformed_quality_is_422_and_applies_nothing_not_even_the_reports(server: LiveServer) -> None:
    line, v1 = _line(server)
    (car,) = _fleet(server, line, v1, 1)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 100, "min_s": 3600},
                       stages=[{"percent": 100}], gates=["min_frames=100000"])
    offer = car.poll(line)
    assert offer is not None and offer["rollout_id"] == r["id"]
    before = stored_state(server)
    report = {"seq": 1, "rollout_id": r["id"], "target_version": 2, "state": "downloading"}
    bad = {**summary(offer, seq=1, frames=10, agree=11)}
    for body, words in (({"reports": [report], "quality": [bad]}, "exceeds"),
                        ({"reports": [], "quality": [{"kind": "shadow"}]}, "quality[0]"),
                        ({"reports": [], "quality": [summary(offer, seq=i, frames=1, agree=1) for i in range(17)]},
                         "quality"),
                        ({"reports": [], "quality": [{**summary(offer, seq=1, frames=1, agree=1), "kind": "x"}]},
                         "kind"),
                        ({"reports": []}, "reports is empty")):
        resp = car.http.post("/api/v1/device/reports", json=body)
        assert resp.status_code == 422 and words in resp.json()["detail"], resp.text
    assert stored_state(server) == before


def test_shadow_gates_pass_after_min_s_promote_and_the_shadow_car_installs_from_verified(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 10)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 40, "min_s": 0.5},
                       gates=["agreement>=0.9", "min_frames=200"])
    shadow = _shadow_cars(cars, r)
    car = shadow[0]
    offer = car.poll(line)
    assert offer is not None and offer["quality"]["mode"] == "shadow"
    _verify(car, offer)
    assert car.send_quality(summary(offer, seq=1, frames=100, agree=99)).status_code == 200
    time.sleep(0.6)
    assert show_rollout(server, r["id"])["current_stage"] == 0  # 100 frames: not enough yet
    assert car.send_quality(summary(offer, seq=2, frames=250, agree=240)).status_code == 200
    _wait("promotion", lambda: show_rollout(server, r["id"])["current_stage"] == 1)
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "running" and shown["reason"].startswith("shadow gates passed: agreement 0.96 on 250 frames")
    assert _audit(server, "rollout.advance", r["id"])
    live = car.poll(line)
    assert live is not None and live["manifest_version"] > offer["manifest_version"]
    assert live["quality"]["mode"] == "live" and live["quality"]["rollback_below_agreement"] == 0.9
    assert live["package"] == offer["package"]  # the package it already holds
    installed = car.report(live, "installed", running_version=2, running_model_sha256=live["model_sha256"])
    assert installed.status_code == 200 and installed.json()["accepted"] == [car.seq], installed.text
    device = server.admin().get(f"/api/v1/devices/{car.device_id}").json()
    assert device["updates"][0]["state"] == "installed" and device["reported_version"] == 2
    others = [c for c in cars if c not in shadow]
    assert all((o := c.poll(line)) and o["quality"]["mode"] == "live" for c in others)


def test_a_failing_shadow_gate_halts_naming_it_and_the_shadow_stage_never_goes_live(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 10)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 50, "min_s": 0},
                       gates=["agreement>=0.97", "latency_p99_ratio<=1.3", "min_frames=100"])
    car = _shadow_cars(cars, r)[0]
    offer = car.poll(line)
    assert offer is not None
    _verify(car, offer)
    assert car.send_quality(summary(offer, seq=1, frames=100, agree=83)).status_code == 200
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "halted" and shown["current_stage"] == 0
    assert shown["reason"] == "shadow gate agreement>=0.97 failed: agreement 0.83 on 100 frames"
    assert shown["quality"]["verdict"] == {"passed": False, "failing": "agreement>=0.97",
                                           "describe": "gate agreement>=0.97 failed: agreement = 0.83"}
    (halt,) = _audit(server, "rollout.halt", r["id"])
    assert halt["detail"]["gate"] == "agreement>=0.97" and "agreement 0.83" in halt["detail"]["reason"]
    assert car.poll(line) is None and all(c.poll(line) is None for c in cars)


def test_a_shadow_stage_without_gates_promotes_after_min_s(server: LiveServer) -> None:
    line, v1 = _line(server)
    _fleet(server, line, v1, 3)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 30, "min_s": 0.3})
    assert r["current_stage"] == 0
    _wait("promotion", lambda: show_rollout(server, r["id"])["current_stage"] == 1)
    assert "no gates" in show_rollout(server, r["id"])["reason"]


def test_a_failing_live_gate_halts_the_rollout(server: LiveServer) -> None:
    line, v1 = _line(server)
    (car,) = _fleet(server, line, v1, 1)
    r = create_rollout(server, line=line, version=2, stages=[{"percent": 100}],
                       gates=["agreement>=0.95", "min_frames=50"])
    offer = car.poll(line)
    assert offer is not None and offer["quality"]["mode"] == "live"
    car.install(offer, download=False)
    assert car.send_quality(summary(offer, seq=1, frames=60, agree=59, kind="live")).status_code == 200
    assert show_rollout(server, r["id"])["state"] == "running"
    assert car.send_quality(summary(offer, seq=2, frames=120, agree=100, kind="live")).status_code == 200
    # judged on the first summary at once, then at most every quality_judge_s on ingest and on every tick
    _wait("the halt", lambda: show_rollout(server, r["id"])["state"] == "halted")
    shown = show_rollout(server, r["id"])
    assert shown["reason"].startswith("stage 0 live gate agreement>=0.95 failed: agreement 0.8333 on 120 frames")
    assert shown["quality"]["summaries"]["live"]["frames"] == 120


def test_a_live_comparison_rollback_counts_toward_the_error_threshold(server: LiveServer) -> None:
    line, v1 = _line(server)
    (car,) = _fleet(server, line, v1, 1)
    r = create_rollout(server, line=line, version=2, stages=[{"percent": 100}], error_threshold_count=1,
                       gates=["agreement>=0.95"])
    offer = car.poll(line)
    assert offer is not None
    car.install(offer, download=False)
    car.report(offer, "rolled_back", reason="live comparison failed: agreement 0.61 on 120 frames",
               running_version=1, running_model_sha256=v1["packages"]["lossless"]["model_sha256"])
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "halted" and "error threshold" in shown["reason"]


def test_summaries_are_stored_at_once_and_judged_at_most_every_quality_judge_s(tmp_path: Path) -> None:
    """10,000 cars reporting every 30 s must not make every summary a whole-rollout merge: after the first
    summary, a rollout only summaries touched is judged on ingest at most every ``quality_judge_s`` (and on
    the rollout tick, here two minutes away), while each summary is stored and shown at once."""
    with run_live_server(tmp_path, rollout_tick_s=120.0, quality_judge_s=60.0) as slow:
        line, v1 = _line(slow)
        (car,) = _fleet(slow, line, v1, 1)
        r = create_rollout(slow, line=line, version=2, stages=[{"percent": 100}],
                           gates=["agreement>=0.95", "min_frames=50"])
        offer = car.poll(line)
        assert offer is not None
        car.install(offer, download=False)
        assert car.send_quality(summary(offer, seq=1, frames=60, agree=59, kind="live")).status_code == 200
        assert car.send_quality(summary(offer, seq=2, frames=120, agree=100, kind="live")).status_code == 200
        shown = show_rollout(slow, r["id"])
        assert shown["quality"]["summaries"]["live"]["frames"] == 120  # stored at once
        assert shown["state"] == "running"  # a failing figure, not judged yet: the next judgement halts it
        back = car.report(offer, "rolled_back", reason="an install report is judged at once, throttle or not")
        assert back.status_code == 200, back.text
        shown = show_rollout(slow, r["id"])
        assert shown["state"] == "halted", shown["reason"]


def test_summary_only_requests_from_many_cars_are_stored_through_the_group_commit(server: LiveServer) -> None:
    """Summary-only requests take the cached path (server/devices/summaries.py): each is acknowledged after its
    batch committed, a stale seq changes nothing, and every car's summary is merged."""
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 16)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 100, "min_s": 3600},
                       gates=["min_frames=100000"])
    offers = {c.device_id: c.poll(line) for c in cars}
    assert all(offers.values())
    batches = server.ctx.summaries.batches
    with ThreadPoolExecutor(8) as pool:
        acks = list(pool.map(lambda c: c.send_quality(summary(offers[c.device_id], seq=3, frames=10, agree=9)),
                             cars))
    assert [a.json()["quality_accepted"] for a in acks] == [[3]] * len(cars), acks[0].text
    assert server.ctx.summaries.batches > batches  # went through the group commit, not the general path
    stale = cars[0].send_quality(summary(offers[cars[0].device_id], seq=2, frames=999, agree=0))
    assert stale.json()["quality_accepted"] == [2]
    shadow = show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]
    assert shadow["cars"] == 16 and shadow["frames"] == 160 and abs(shadow["agreement"] - 0.9) < 1e-9
    # what the group-committed path does not vouch for is answered by the route, as before
    good = summary(offers[cars[0].device_id], seq=9, frames=10, agree=9)
    torn = {k: v for k, v in good.items() if k != "candidate"}
    for body in ({"reports": [], "quality": [torn]}, {"reports": None, "quality": [good]}, {"quality": [7]}):
        bad = cars[0].http.post("/api/v1/device/reports", json=body)
        assert bad.status_code == 422 and ("quality" in bad.text or "reports" in bad.text), (body, bad.text)
    stranger = server.device("not-a-token").post("/api/v1/device/reports", json={"quality": [good]})
    assert stranger.status_code == 401
    assert show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]["frames"] == 160


def test_concurrent_summaries_are_written_in_one_transaction_keeping_each_cars_highest_seq(server: LiveServer) -> None:
    """What makes ingest scale: summaries queued while no batch is being written go in one transaction (here
    all 40 submitted before the writer first runs), and two of one car in the same batch keep the higher seq."""
    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 20)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 100, "min_s": 3600},
                       gates=["min_frames=100000"])
    offers = {c.device_id: c.poll(line) for c in cars}
    with server.ctx.db.read_scope() as session:
        pks = {c.device_id: session.scalar(select(Device.id).where(Device.device_id == c.device_id)) for c in cars}
    rows = []
    for c in cars:
        for seq, agree in ((7, 10), (5, 0)):  # the older summary queued second must not replace the newer
            s = QualitySummary.from_dict(summary(offers[c.device_id], seq=seq, frames=10, agree=agree))
            rows.append(SummaryWrite(pks[c.device_id], r["id"], 2, "shadow", s.seq, 0, s.frames, s.agree,
                                     s.to_dict()))
    db = Database(server.ctx.settings.sqlalchemy_url)  # its own write limiter, for this test's event loop
    ingest = SummaryIngest(db, MembershipCache(), lambda _rollout: False)

    async def submit_all() -> None:
        await asyncio.gather(*(ingest.submit([row]) for row in rows))
        await ingest.close()

    try:
        asyncio.run(submit_all())
    finally:
        db.dispose()
    assert ingest.batches == 1
    shadow = show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]
    assert shadow["cars"] == 20 and shadow["frames"] == 200 and shadow["agreement"] == 1.0


def test_two_registries_in_one_process_never_mix_their_parsed_summaries(tmp_path: Path) -> None:
    """Judging reuses parsed summaries by row id and seq (rollouts/quality.py ParsedSummaries): per database,
    so two registries whose first summary rows share id 1 and seq 1 each merge their own."""
    figures = []
    with run_live_server(tmp_path / "a") as a, run_live_server(tmp_path / "b") as b:
        for srv, frames in ((a, 40), (b, 70)):
            line, v1 = _line(srv)
            (car,) = _fleet(srv, line, v1, 1)
            r = create_rollout(srv, line=line, version=2, shadow={"percent": 100, "min_s": 3600},
                               gates=["min_frames=100000"])
            offer = car.poll(line)
            assert offer is not None
            assert car.send_quality(summary(offer, seq=1, frames=frames, agree=frames)).status_code == 200
            figures.append((srv, r["id"]))
        assert [show_rollout(srv, rid)["quality"]["summaries"]["shadow"]["frames"] for srv, rid in figures] == [40, 70]


def test_running_totals_follow_every_new_seq_stage_move_and_deleted_row(server: LiveServer) -> None:
    """A judgement moves only the cars whose summary changed in or out of its stage's running sum
    (rollouts/quality.py ParsedSummaries); after each kind of change the sums equal a merge of every stored row."""
    from functools import reduce

    from sqlalchemy import delete, update

    from server.orm import QualitySummary as SummaryRow
    from server.orm import Rollout
    from server.rollouts import quality

    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 6)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 100, "min_s": 3600},
                       gates=["min_frames=100000"])
    offers = {c.device_id: c.poll(line) for c in cars}

    def send(c: Car, seq: int, frames: int, agree: int, classes: int) -> None:
        ack = c.send_quality(summary(offers[c.device_id], seq=seq, frames=frames, agree=agree, classes=classes))
        assert ack.json()["quality_accepted"] == [seq], ack.text

    def check(stages: set[int] | None = None) -> None:
        with server.ctx.db.read_scope() as session:
            rollout = session.get(Rollout, r["id"])
            got = quality.merged(session, rollout, "shadow", stages)
            rows = [QualitySummary.from_dict(row.summary) for row in session.scalars(
                select(SummaryRow).where(SummaryRow.rollout_id == r["id"]))
                if stages is None or row.stage in stages]
        want = reduce(QualitySummary.merge, rows) if rows else None
        assert got.cars == len(rows)
        strip = lambda s: {k: v for k, v in s.to_dict().items() if k != "seq"}  # noqa: E731
        assert (got.summary and strip(got.summary)) == (want and strip(want))

    for i, c in enumerate(cars):
        send(c, 1, 10 * (i + 1), 9 * (i + 1), classes=3 + i)
    check()
    send(cars[0], 2, 500, 100, classes=40)  # a new seq with more classes than any other car named
    send(cars[3], 4, 70, 70, classes=2)  # fewer frames and classes than it said before (a car restarted)
    check()
    with server.ctx.db.session_scope() as session:
        ids = sorted(session.scalars(select(SummaryRow.id).where(SummaryRow.rollout_id == r["id"])))
        session.execute(update(SummaryRow).where(SummaryRow.id == ids[1]).values(stage=1))
        session.execute(delete(SummaryRow).where(SummaryRow.id == ids[2]))
    check()
    check({0})
    check({1})
    with server.ctx.db.session_scope() as session:
        session.execute(delete(SummaryRow).where(SummaryRow.rollout_id == r["id"]))
    check()


def test_a_judgement_takes_the_summaries_the_group_commit_just_stored_without_reading_their_json(
        server: LiveServer) -> None:
    """The group commit hands its parsed summaries to the judgements of its process (ParsedSummaries.prime):
    none of them is read back from the database, and a primed one whose seq is not the stored row's (as if
    another worker had stored a newer one) is never used: the row is read instead."""
    from server.rollouts import quality

    line, v1 = _line(server)
    cars = _fleet(server, line, v1, 8)
    r = create_rollout(server, line=line, version=2, shadow={"percent": 100, "min_s": 3600},
                       gates=["min_frames=100000"])
    offers = {c.device_id: c.poll(line) for c in cars}
    parsed = quality.parsed_for(server.ctx.db.engine)
    show_rollout(server, r["id"])
    read = parsed.rows_read
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: c.send_quality(summary(offers[c.device_id], seq=3, frames=10, agree=9)), cars))
    shadow = show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]
    assert shadow["cars"] == 8 and shadow["frames"] == 80
    assert parsed.rows_read == read  # every one came primed
    # primed with a seq the database does not hold (as if another worker stored a newer one): read instead
    with server.ctx.db.read_scope() as session:
        pk = session.scalar(select(Device.id).where(Device.device_id == cars[0].device_id))
    fake = QualitySummary.from_dict(summary(offers[cars[0].device_id], seq=99, frames=1000, agree=0))
    parsed.prime([(pk, r["id"], "shadow", 2, fake)])
    with_reports = cars[0].http.post("/api/v1/device/reports", json={
        "reports": [], "quality": [summary(offers[cars[0].device_id], seq=4, frames=20, agree=20)]})
    assert with_reports.status_code == 200, with_reports.text
    shadow = show_rollout(server, r["id"])["quality"]["summaries"]["shadow"]
    assert shadow["frames"] == 90 and parsed.rows_read == read + 1
