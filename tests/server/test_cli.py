"""`ota serve` (a real subprocess) and the operator commands (`ota publish|rollout|devices`) against a live server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cli.main import main
from server.process import child_env, serve
from tests.server.factories import Car
from tests.support.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "models" / "zoo"


def _ota(capsys: pytest.CaptureFixture[str], server: LiveServer, *argv: str) -> tuple[int, str, str]:
    # "--token=..." because a random token may start with "-", which argparse would take for an option
    code = main([*argv, f"--server={server.url}", f"--token={server.admin_token}"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_operator_cli_publishes_rolls_out_and_lists(live_server: LiveServer, capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    code, out, _ = _ota(capsys, live_server, "publish", str(ZOO / "v1.onnx"), "--line", "road-signs",
                        "--notes", "first", "--json")
    assert code == 0 and json.loads(out)["version"] == 1
    code, out, _ = _ota(capsys, live_server, "publish", str(ZOO / "v2.onnx"))
    assert code == 0 and "road-signs version 2" in out and "lossless" in out
    car = Car(live_server, "cli-car", {"region": "eu"})
    car.poll()
    code, out, _ = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--select", "region=eu",
                        "--stage", "50::100", "--stage", "100", "--error-count", "3", "--json")
    rollout = json.loads(out)
    assert code == 0 and rollout["stages"][0]["success_threshold_pct"] == 100 and rollout["selector"] == {"region": "eu"}
    rid = str(rollout["id"])
    assert _ota(capsys, live_server, "rollout", "pause", rid)[0] == 0
    code, _, err = _ota(capsys, live_server, "rollout", "pause", rid)
    assert code == 1 and "illegal_transition" in err
    assert _ota(capsys, live_server, "rollout", "resume", rid)[0] == 0
    code, out, _ = _ota(capsys, live_server, "rollout", "show", rid)
    assert code == 0 and f"rollout {rid}" in out and "bytes sent" in out
    code, out, _ = _ota(capsys, live_server, "rollout", "list", "--json")
    assert [r["id"] for r in json.loads(out)] == [rollout["id"]]
    code, out, _ = _ota(capsys, live_server, "rollout", "rollback", rid, "--version", "1", "--json")
    assert code == 0 and json.loads(out)["rollback"] is True
    code, out, _ = _ota(capsys, live_server, "devices", "list", "--tag", "region=eu")
    assert code == 0 and "cli-car" in out
    code, out, _ = _ota(capsys, live_server, "devices", "show", "cli-car", "--json")
    assert code == 0 and json.loads(out)["device_id"] == "cli-car"


def test_rollout_create_with_shadow_and_gates_and_show_prints_them(live_server: LiveServer,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    live_server.publish(ZOO / "v1.onnx")
    live_server.publish(ZOO / "v2.onnx")
    code, _, err = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--shadow", "ten:60")
    assert code == 1 and "PERCENT:SECONDS" in err
    code, _, err = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--gate", "agreement=>0.9")
    assert code == 1 and "agreement=>0.9" in err
    code, out, _ = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--shadow", "10:3600:5",
                        "--gate", "agreement>=0.97", "--gate", "min_frames=5000", "--json")
    rollout = json.loads(out)
    assert code == 0 and rollout["stages"][0]["mode"] == "shadow" and rollout["quality"]["shadow"]["sample_every"] == 5
    code, out, _ = _ota(capsys, live_server, "rollout", "show", str(rollout["id"]))
    assert code == 0 and "stage 1: 10%  SHADOW" in out and "shadow: 10% for at least 3600s, 1 frame in 5" in out
    assert "gate agreement>=0.97: now -" in out and "gate min_frames=5000: now -" in out
    assert "verdict: pending (waiting for enough frames)" in out


def test_rollout_create_with_a_start_and_windows_and_show_says_when_it_opens(
        live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    live_server.publish(ZOO / "v1.onnx")
    live_server.publish(ZOO / "v2.onnx")
    code, _, err = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--window", "mon-fri 01:00")
    assert code == 1 and "DAYS HH:MM-HH:MM ZONE" in err
    code, _, err = _ota(capsys, live_server, "rollout", "create", "--version", "2",
                        "--window", "mon-fri 01:00-05:00 Europe/Atlantis")
    assert code == 1 and "tz" in err and "Europe/Atlantis" in err
    code, out, _ = _ota(capsys, live_server, "rollout", "create", "--version", "2",
                        "--starts-at", "2099-01-05T00:30:00+00:00", "--window", "mon-fri 01:00-05:00 Europe/Berlin",
                        "--json")
    rollout = json.loads(out)
    assert code == 0 and rollout["open"] is False and rollout["next_open"] == "2099-01-05T00:30:00Z"
    code, out, _ = _ota(capsys, live_server, "rollout", "show", str(rollout["id"]))
    assert code == 0 and "window mon-fri 01:00-05:00 Europe/Berlin" in out
    assert "starts at 2099-01-05T00:30:00Z" in out and "closed: next opens 2099-01-05T00:30:00Z" in out


def test_operator_cli_reports_bad_input_clearly(live_server: LiveServer, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, _, err = _ota(capsys, live_server, "publish", str(junk))
    assert code == 1 and "invalid_model" in err
    code = main(["devices", "list", "--server", live_server.url, "--token", "wrong"])
    assert code == 1 and "401" in capsys.readouterr().err
    code = main(["devices", "list", "--server", "http://127.0.0.1:9", "--token", "x"])
    assert code == 1 and "cannot reach" in capsys.readouterr().err


def test_ota_serve_migrates_an_empty_database_and_serves(tmp_path: Path) -> None:
    with serve(tmp_path / "data", env=child_env()) as reg:  # SQLite in the data dir, nothing migrated yet
        r = httpx.get(f"{reg.url}/readyz", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ready"
        with reg.admin() as admin:
            lines = admin.get("/api/v1/lines")
        assert lines.status_code == 200 and lines.json() == []
        assert "ota_http_requests_total" in httpx.get(f"{reg.url}/metrics").text
