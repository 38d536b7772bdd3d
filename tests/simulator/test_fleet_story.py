"""The demo's story on a small fleet, end to end: ``ota serve`` in a child process, 20 real agents behind
simulated 2G/3G/LTE/Wi-Fi links (drops, dead zones, parked cars), v1 then eight staged rollouts including a
version no car can reproduce, one that installs and then fails on live camera frames, in shadow mode with
quality gates a build that confuses two speed limits in fog (halted in shadow) and the real v4 (promoted), and
v5 re-exported at opset 21 with an opset-17 variant for the cars on ONNX Runtime 1.14.  One run per module; each test asks one question of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.demo_cmd import running_server
from cli.main import main as ota
from client.slots import SlotStore
from client.trust import read_root_key
from simulator.story import DemoOptions, run_story

CARS = 20
OLD_RUNTIME = "1.14"  # simulator.fleet.RUNTIMES: the cars whose ONNX Runtime stops at opset 18
PROMISED_KEYS = {"cars", "updated", "failed", "rolled_back", "bytes_sent", "bytes_full_fp32", "bytes_full_package",
                 "failed_inferences", "wall_s"}


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("demo")
    # lossless packs in a fraction of a second (deep takes seconds per version); everything else is the demo's
    with running_server(data, codecs="lossless", tick_s=0.5) as srv:
        opts = DemoOptions(cars=CARS, time_scale=120, seed=7, quiet=True, detail=True, min_soak_s=0.5,
                           phase_timeout_real_s=60)
        report = asyncio.run(run_story(srv.url, srv.admin_token, srv.enrollment_token, data / "cars", opts,
                                       read_root_key(srv.data_dir / "root.pub")))
        admin = httpx.Client(base_url=srv.url + "/api/v1", headers={"Authorization": f"Bearer {srv.admin_token}"})
        transfers = admin.get("/accounting/transfers", params={"limit": 10000}).json()
        rollouts = {r["id"]: r for r in admin.get("/rollouts").json()}
        devices = {d["device_id"]: d for d in admin.get("/devices").json()}
        admin.close()
        yield {"report": report, "transfers": transfers, "rollouts": rollouts, "devices": devices, "server": srv,
               "data": data}


def _outcome(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in report["rollouts"] if o["name"] == name)


def test_story_json_has_the_promised_figures(story: dict[str, Any]) -> None:
    r = story["report"]
    assert PROMISED_KEYS <= set(r)
    assert r["cars"] == CARS and r["updated"] == CARS
    assert r["failed_inferences"] == 0 and r["inferences"] > CARS
    assert 0 < r["bytes_sent"] < r["bytes_full_package"] < r["bytes_full_fp32"]
    assert [o["name"] for o in r["rollouts"]] == ["v1", "v2", "v3", "bad", "bad-live", "fog", "v4", "v5",
                                                  "new-opset"]
    assert [o["state"] for o in r["rollouts"][1:]] == ["completed", "completed", "halted", "halted", "halted",
                                                       "completed", "completed", "completed"]
    assert r["rolled_back"] >= 2 and r["failed"] == 0
    json.dumps(r)  # one JSON object, as --json prints it


def test_the_demo_publishes_the_imagenet_model_and_its_road_sign_transfer_as_one_line(story: dict[str, Any]) -> None:
    t = story["report"]["transfer"]
    with story["server"].admin() as admin:
        v2 = admin.get(f"/api/v1/lines/{t['line']}/versions/2").json()
    assert t["versions"] == [1, 2] and t["contract_changed"] == ["labels"] == v2["contract_changed"]
    assert v2["contract"]["channel_order"] == "BGR" and v2["contract"]["height"] == 227
    assert len(v2["contract"]["labels"]) == 11
    assert 0 < t["delta_bytes"] < t["package_bytes"] / 10  # only conv10 changed: a car fetches a few tens of KB


def test_every_car_ends_on_the_last_version_or_on_a_reported_failure(story: dict[str, Any]) -> None:
    report = story["report"]
    last = report["rollouts"][-1]["version"]
    for car in report["cars_detail"]:
        if car["end_version"] != last:
            assert car["failed"], f"{car['device_id']} is on v{car['end_version']} without a reported failure"
    assert sum(c["end_version"] == last for c in report["cars_detail"]) == CARS
    assert report["versions"] == {f"v{last}": CARS}


def test_server_bytes_equal_what_the_cars_received(story: dict[str, Any]) -> None:
    sent: dict[str, int] = {}
    for t in story["transfers"]:
        sent[t["device_id"]] = sent.get(t["device_id"], 0) + t["bytes_sent"]
    cars = story["report"]["cars_detail"]
    assert len(story["transfers"]) < 10000  # we saw every transfer record
    for car in cars:
        got = car["artifact_bytes"]
        if car["drops"] == 0:
            # every response body was read to its end: what the server wrote is what the car got
            assert sent.get(car["device_id"], 0) == got, car["device_id"]
        else:
            # a cut connection loses what was in flight: the server counted it, the car never saw it
            assert sent.get(car["device_id"], 0) >= got, car["device_id"]
    clean = [c for c in cars if c["drops"] == 0]
    # enough cars never lost a connection for the equality to mean something: how many do is chance (each
    # link's drops are drawn per chunk, and which chunks a car reads depends on timing); 4 to 8 of 20 seen
    assert len(clean) >= 3
    assert sum(c["artifact_bytes"] for c in clean) == sum(sent.get(c["device_id"], 0) for c in clean)


def _on_variant(car: dict[str, Any], install: dict[str, Any], report: dict[str, Any]) -> bool:
    """An old-runtime car's install of the opset-21 version: the variant, a full package (its version had none)."""
    return car["runtime"] == OLD_RUNTIME and install["target_version"] == _outcome(report, "new-opset")["version"]


def test_delta_updates_were_used_wherever_the_car_had_a_base(story: dict[str, Any]) -> None:
    report = story["report"]
    for car in report["cars_detail"]:
        kinds = [i["artifact"] for i in car["installs"]]
        assert kinds[0] == "full", car  # nothing on disk yet
        # "staged": a version the car shadowed goes live from the package it fetched (by delta) to shadow it
        later = [i["artifact"] for i in car["installs"][1:] if not _on_variant(car, i, report)]
        assert set(later) <= {"delta", "staged"}, car
        shadowed = {o["version"] for o in report["rollouts"] if o.get("shadow")}
        for i in car["installs"][1:]:
            if _on_variant(car, i, report):
                assert i["artifact"] == "full", i
                continue
            assert i["bytes_received"] < i["package_bytes"], i  # offered only when smaller than the package
            assert i["artifact"] == "delta" or i["target_version"] in shadowed, i
    parked = [c for c in report["cars_detail"] if c["device_id"] in report["parked"]]
    assert parked
    for car in parked:  # back after missing v2..v5: one update from v1 straight to a later version
        first, second = car["installs"][:2]
        assert first["target_version"] == 1, car
        assert second["artifact"] in ("delta", "staged") or _on_variant(car, second, report), car
        assert second["target_version"] >= _outcome(report, "v4")["version"], car


def test_old_runtime_cars_run_the_opset_17_variant_and_every_other_car_the_opset_21_export(
        story: dict[str, Any]) -> None:
    report = story["report"]
    phase = _outcome(report, "new-opset")
    old = [c for c in report["cars_detail"] if c["runtime"] == OLD_RUNTIME]
    assert 0 < len(old) < CARS
    with story["server"].admin() as admin:
        v = admin.get(f"/api/v1/lines/{report['line']}/versions/{phase['version']}").json()
    assert v["requirements"]["opsets"]["ai.onnx"] == 21
    [variant] = v["variants"]
    assert variant["requirements"]["opsets"]["ai.onnx"] == 17
    variant_models = {p["model_sha256"] for p in variant["packages"].values()}
    for car in report["cars_detail"]:
        assert car["end_version"] == phase["version"], car
        assert (car["end_model_sha256"] in variant_models) == (car["runtime"] == OLD_RUNTIME), car
    assert report["variants"] == phase["variants"]
    assert report["variants"]["cars_by_export"] == {"primary": CARS - len(old), "variant 1": len(old)}
    assert report["variants"]["incompatible_without_variants"] == len(old)
    rollout = story["rollouts"][phase["rollout"]]
    assert rollout["state"] == "completed"
    assert not any(s["counts"].get("incompatible") for s in rollout["stages"])  # the variant fits them all


def test_halted_rollout_never_reached_later_stages(story: dict[str, Any]) -> None:
    bad = _outcome(story["report"], "bad")
    rollout = story["rollouts"][bad["rollout"]]
    assert rollout["state"] == "halted" and rollout["current_stage"] == 0
    assert "error threshold" in (rollout["reason"] or "")
    canary, *later = rollout["stages"]
    assert canary["counts"].get("failed", 0) >= 1 and canary["counts"].get("installed", 0) == 0
    for stage in later:
        assert set(stage["counts"]) <= {"pending"}, stage
    later_devices = {t["device_id"] for t in story["transfers"] if t["rollout_id"] == bad["rollout"]}
    assert len(later_devices) <= canary["assigned"]
    for car in story["report"]["cars_detail"]:
        assert bad["version"] not in [i["target_version"] for i in car["installs"]]


def test_ota_simulate_joins_new_cars_to_the_same_registry(story: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    srv = story["server"]
    code = ota(["simulate", "--server", srv.url, "--cars", "4", "--networks", "wifi", "--json", "--time-scale", "120",
                "--data-dir", str(story["data"]), "--state-dir", str(tmp_path), "--line", story["report"]["line"],
                "--prefix", "late", "--duration", "3600", "--initial-install"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert PROMISED_KEYS <= set(out)
    assert out["cars"] == 4 and out["updated"] == 4 and out["failed"] == 0
    last = story["report"]["rollouts"][-1]["version"]
    assert out["versions"] == {f"v{last}": 4}  # the stable version after the last completed rollout
    assert out["bytes_sent"] == out["bytes_full_package"]  # new cars: full packages, nothing else
    assert out["factory_image"] is None
    for car in _car_dirs(tmp_path):  # enrolled empty: no model before the one it downloaded
        assert SlotStore(car).load().previous is None, car.name


def _car_dirs(state_dir: Path) -> list[Path]:
    return sorted(p for p in state_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _simulate_late_cars(story: dict[str, Any], state_dir: Path, *extra: str) -> int:
    return ota(["simulate", "--server", story["server"].url, "--cars", "4", "--networks", "wifi", "--json",
                "--time-scale", "120", "--state-dir", str(state_dir), "--line", story["report"]["line"],
                "--prefix", "factory", "--duration", "3600", *extra])


def test_ota_simulate_flashes_v1_at_the_factory_by_default_and_not_twice(
        story: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _simulate_late_cars(story, tmp_path, "--data-dir", str(story["data"])) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "flashed onto 4 cars" in captured.err and "--initial-install" in captured.err
    v1 = httpx.get(f"{story['server'].url}/api/v1/lines/{story['report']['line']}/versions/1",
                   headers={"Authorization": f"Bearer {story['server'].admin_token}"}).json()
    assert {k: out["factory_image"][k] for k in ("version", "codec", "cars_flashed")} == {
        "version": 1, "codec": "lossless", "cars_flashed": 4}  # this registry packs lossless only
    assert out["factory_image"]["package_bytes"] == v1["packages"]["lossless"]["bytes"]
    last = story["report"]["rollouts"][-1]["version"]
    assert out["updated"] == 4 and out["installs"] == 4 and out["failed"] == 0  # one update each: v1 -> stable
    assert out["versions"] == {f"v{last}": 4}
    cars = _car_dirs(tmp_path)
    assert len(cars) == 4
    for car in cars:  # booted the flashed v1, then updated from it: v1 is the fallback slot
        journal = SlotStore(car).load()
        assert journal.active is not None and journal.active.version == last, car.name
        assert journal.previous is not None and journal.previous.version == 1, car.name
        assert journal.previous.package_sha256 == v1["packages"]["lossless"]["sha256"], car.name

    # A second run on the same state dir boots what the cars have: nothing is flashed over a model.
    assert _simulate_late_cars(story, tmp_path, "--data-dir", str(story["data"])) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["factory_image"]["cars_flashed"] == 0 and again["installs"] == 0
    assert again["versions"] == {f"v{last}": 4}


def test_ota_simulate_without_an_admin_token_refuses_to_flash_and_names_both_ways_out(
        story: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTA_ADMIN_TOKEN", raising=False)
    # "--opt=value": a random token may begin with "-", which argparse would read as another option
    code = _simulate_late_cars(story, tmp_path, f"--enroll-token={story['server'].enrollment_token}",
                               "--root-key", str(story["data"] / "root.pub"))
    assert code == 2
    err = capsys.readouterr().err
    assert "--admin-token" in err and "--initial-install" in err
    assert not tmp_path.exists() or _car_dirs(tmp_path) == []  # no car was flashed or started


def test_ota_demo_refuses_a_fleet_too_small_for_a_canary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert ota(["demo", "--cars", "3", "--data-dir", str(tmp_path), "--exit-when-done"]) == 2
    assert "--cars must be at least 10" in capsys.readouterr().err
    assert not (tmp_path / "registry.db").exists()


def test_a_version_that_fails_on_live_frames_is_installed_then_rolled_back_and_its_rollout_halts(
        story: dict[str, Any]) -> None:
    live = _outcome(story["report"], "bad-live")
    rollout = story["rollouts"][live["rollout"]]
    assert rollout["state"] == "halted" and rollout["current_stage"] == 0
    assert "rolled back" in (rollout["reason"] or "")
    canary, *later = rollout["stages"]
    assert canary["counts"].get("rolled_back", 0) >= 2  # at least the 20% error threshold of the canary
    assert canary["counts"].get("failed", 0) == 0  # the smoke test passed: nobody refused it
    for stage in later:
        assert set(stage["counts"]) <= {"pending"}, stage
    rolled = [c for c in story["report"]["cars_detail"] if c["rolled_back"]]
    # Every car that rolled back told the registry by the end; the phase's own count (taken once the
    # registry had halted and the online cars had settled) saw at most those.
    assert len(rolled) == sum(s["counts"].get("rolled_back", 0) for s in rollout["stages"])
    assert 2 <= live["rolled_back"] <= len(rolled)
    for car in rolled:
        # it installed the bad version, rolled back, and was not offered it again: its next install is v4 or v5
        versions = [i["target_version"] for i in car["installs"]]
        assert live["version"] in versions, car
        assert versions.count(live["version"]) == 1 and versions[-1] > live["version"], car
    assert story["report"]["failed_inferences"] == 0  # the previous model answered every failed frame


def test_the_fog_confuser_is_halted_in_shadow_by_the_agreement_gate_and_never_drives(story: dict[str, Any]) -> None:
    fog = _outcome(story["report"], "fog")
    rollout = story["rollouts"][fog["rollout"]]
    assert rollout["state"] == "halted" and rollout["current_stage"] == 0
    shadow, *live = rollout["stages"]
    assert shadow["mode"] == "shadow" and all(s["mode"] == "live" for s in live)
    assert "agreement>=" in (rollout["reason"] or ""), rollout["reason"]
    for stage in rollout["stages"]:  # shadow cars verified it and ran it beside; nobody installed it
        assert stage["counts"].get("installed", 0) == 0, stage
    for stage in live:
        assert set(stage["counts"]) <= {"pending"}, stage
    assert shadow["counts"].get("verified", 0) >= 1, shadow
    for car in story["report"]["cars_detail"]:
        assert fog["version"] not in [i["target_version"] for i in car["installs"]], car["device_id"]
    # the registry's own figures, and the demo's summary naming the gate that stopped it
    full = _rollout(story, fog["rollout"])
    verdict, figures = full["quality"]["verdict"], full["quality"]["summaries"]["shadow"]
    assert verdict["passed"] is False and verdict["failing"].startswith("agreement>=")
    assert figures["frames"] >= 1000 and figures["agreement"] < 0.94
    gates = {g["name"]: g for g in story["report"]["quality_gates"]}
    assert gates["fog"]["outcome"] == "halted in shadow" and gates["fog"]["stopped_by"] == verdict["failing"]
    assert fog["stopped_by"] == verdict["failing"] and fog["installed"] == 0


def test_the_good_version_is_promoted_from_shadow_by_its_gates(story: dict[str, Any]) -> None:
    v4 = _outcome(story["report"], "v4")
    rollout = _rollout(story, v4["rollout"])
    assert rollout["state"] == "completed" and rollout["stages"][0]["mode"] == "shadow"
    assert rollout["current_stage"] == len(rollout["stages"]) - 1
    verdict, figures = rollout["quality"]["verdicts"]["shadow"], rollout["quality"]["summaries"]["shadow"]
    assert verdict["passed"] is True and verdict["failing"] is None
    assert figures["frames"] >= 1000 and figures["agreement"] >= 0.94
    assert v4["promoted_by_gates"] is True and v4["stopped_by"] is None and v4["operator_advanced_stages"] == []
    gates = {g["name"]: g for g in story["report"]["quality_gates"]}
    assert gates["v4"]["outcome"] == "promoted from shadow"
    assert rollout["stages"][0]["assigned"] >= 1  # cars shadowed it before it went live
    assert sum(s["counts"].get("installed", 0) for s in rollout["stages"]) >= 1


def _rollout(story: dict[str, Any], rollout_id: int) -> dict[str, Any]:
    with story["server"].admin() as admin:
        r = admin.get(f"/api/v1/rollouts/{rollout_id}")
    assert r.status_code == 200, r.text
    return r.json()
