"""``ota audit`` and the rollout safety flags (issue 21) against a live server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cli.audit_cmd import when
from cli.main import main
from tests.conftest import ZOO
from tests.support.live_server import LiveServer


def _ota(capsys: pytest.CaptureFixture[str], server: LiveServer, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, f"--server={server.url}", f"--token={server.admin_token}"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ota_audit_filters_pages_and_refuses_a_bad_time(live_server: LiveServer,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    live_server.publish(ZOO / "v1.onnx")
    live_server.publish(ZOO / "v2.onnx")
    assert live_server.admin().post("/api/v1/lines/road-signs/versions",
                                    files={"file": ("m.onnx", b"junk")}).status_code == 400
    code, out, _ = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--stage", "10:60:90:3",
                        "--stage", "100:60:90", "--in-progress-timeout", "120", "--json")
    rollout = json.loads(out)
    assert code == 0 and [s["min_installed"] for s in rollout["stages"]] == [3, 0]
    assert rollout["in_progress_timeout_s"] == 120
    code, out, _ = _ota(capsys, live_server, "rollout", "show", str(rollout["id"]))
    assert code == 0 and "needs 3 installed" in out
    code, _, err = _ota(capsys, live_server, "rollout", "create", "--version", "2", "--stage", "10:60:90:x")
    assert code == 1 and "MIN_INSTALLED" in err

    code, out, _ = _ota(capsys, live_server, "audit", "--action", "version.publish", "--outcome", "refused")
    assert code == 0 and "version.publish" in out and "refused" in out and "line:road-signs" in out
    assert out.count("version.publish") == 1
    code, out, _ = _ota(capsys, live_server, "audit", "--action", "rollout.*", "--since", "1h", "--json")
    assert code == 0 and [a["action"] for a in json.loads(out)] == ["rollout.create"]
    code, out, _ = _ota(capsys, live_server, "audit", "--limit", "1", "--all", "--json")
    everything = json.loads(out)
    assert code == 0 and len(everything) >= 4 and len({a["id"] for a in everything}) == len(everything)
    code, out, _ = _ota(capsys, live_server, "audit", "--actor", "nobody")
    assert code == 0 and "no audit entries match" in out
    code, _, err = _ota(capsys, live_server, "audit", "--since", "last tuesday")
    assert code == 1 and "--since" in err and "ISO 8601" in err


def test_when_reads_look_backs_and_timestamps_as_utc() -> None:
    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    assert when("2h", "--since", now) == "2026-12-07T04:00:00+00:00"
    assert when("2026-12-07T05:00:00Z", "--since") == "2026-12-07T05:00:00+00:00"
    assert when("2026-12-07T05:00:00", "--since") == "2026-12-07T05:00:00+00:00"
