"""Issue 20 item 3: a version is offered only to cars that can run it, over real HTTP on a real registry.

Versions record what they need at publish (IR version and opsets read from the real ONNX model, plus the
publisher's requirements); cars report what they have (protocol.platform.Platform) at enrolment and in polls;
a car that cannot run a rollout's version is never offered it, is counted ``incompatible`` (not failed, not
waited for), and the rollout completes on the others.
"""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import onnx
import pytest

from cli.main import main
from protocol.platform import Platform
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout, stored_state
from tests.support.live_server import LiveServer

_lines = count(1)
NEW = Platform.for_runtime("1.32.0", ("CPUExecutionProvider",), "x86_64", 4096).to_dict()
OLD = Platform.for_runtime("1.17.3", ("CPUExecutionProvider",), "aarch64", 1024).to_dict()  # up to opset 20


def _at_opset(path: Any, opset: int) -> bytes:
    """A real zoo model re-exported at another ai.onnx opset (its operators are the same in 17..21)."""
    model = onnx.load(path)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _line_with_v1(server: LiveServer) -> tuple[str, dict[str, Any]]:
    name = f"compat-{next(_lines)}"
    return name, server.publish(ZOO / "v1.onnx", line=name)


def _runs_v1(car: Car, line: str, v1: dict[str, Any]) -> Car:
    car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
    car.package_sha256 = v1["packages"]["lossless"]["sha256"]
    assert car.poll(line) is None
    return car


def test_publish_records_the_models_ir_and_opsets_and_the_publishers_requirements(server: LiveServer) -> None:
    line, v1 = _line_with_v1(server)
    assert v1["requirements"]["ir_version"] == 8 and v1["requirements"]["opsets"] == {"ai.onnx": 17}
    v2 = server.publish(_at_opset(ZOO / "v2.onnx", 21), line=line, contract=json.dumps(v1["contract"]),
                        requirements=json.dumps({"min_ort_version": "1.18", "providers": ["CPUExecutionProvider"],
                                                 "opsets": {"ai.onnx": 19}}))
    needs = v2["requirements"]
    assert needs["opsets"] == {"ai.onnx": 21}  # the stricter of the model's and the publisher's
    assert needs["min_ort_version"] == "1.18" and needs["providers"] == ["CPUExecutionProvider"]
    assert server.admin().get(f"/api/v1/lines/{line}/versions/2").json()["requirements"] == needs


def test_malformed_requirements_are_422_naming_the_field_and_store_nothing(server: LiveServer) -> None:
    line, _v1 = _line_with_v1(server)
    before = stored_state(server)
    data = (ZOO / "v2.onnx").read_bytes()
    for bad, field in (("{not json", "not valid JSON"), ('["x"]', "expected a JSON object"),
                       ('{"min_ort": "1.2"}', "unknown field 'min_ort'"),
                       ('{"min_ort_version": "new"}', "requirements.min_ort_version"),
                       ('{"opsets": {"ai.onnx": 100000}}', "requirements.opsets.ai.onnx"),
                       ('{"min_memory_mb": -1}', "requirements.min_memory_mb"),
                       ('{"providers": ["' + "x" * 100 + '"]}', "requirements.providers[0]")):
        r = server.admin().post(f"/api/v1/lines/{line}/versions", files={"file": ("m.onnx", data)},
                                data={"requirements": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"] == "requirements" and field in r.json()["detail"], r.text
    assert stored_state(server) == before


def test_malformed_platform_is_422_naming_the_field(server: LiveServer) -> None:
    before = stored_state(server)
    for bad, field in (({**NEW, "ir_version": "ten"}, "platform.ir_version"),
                       ({**NEW, "ort_version": "latest"}, "platform.ort_version"),
                       ({**NEW, "providers": ["p"] * 100}, "platform.providers"),
                       ({**NEW, "gpu": True}, "unknown field 'gpu'")):
        r = server.device(server.enrollment_token).post("/api/v1/devices/enroll", json={
            "device_id": "compat-bad-platform", "platform": bad})
        assert r.status_code == 422 and field in r.text, r.text
    assert stored_state(server) == before


def test_a_car_whose_runtime_is_too_old_is_never_offered_and_counted_incompatible_not_failed(
        server: LiveServer) -> None:
    line, v1 = _line_with_v1(server)
    server.publish(_at_opset(ZOO / "v2.onnx", 21), line=line, contract=json.dumps(v1["contract"]))
    tags = {"fleet": line}
    new = [_runs_v1(Car(server, f"{line}-new-{i}", tags, platform=NEW), line, v1) for i in range(3)]
    old = _runs_v1(Car(server, f"{line}-old", tags, platform=OLD), line, v1)
    unknown = _runs_v1(Car(server, f"{line}-unknown", tags), line, v1)  # never reported: treated as able
    r = create_rollout(server, line=line, version=2, selector=tags,
                       stages=[{"percent": 100, "success_threshold_pct": 100}], error_threshold_count=1)
    assert r["stages"][0]["counts"] == {"incompatible": 1, "pending": 4}
    for car in (*new, unknown):
        offer = car.poll(line)
        assert offer is not None and offer["target_version"] == 2
        car.install(offer)
    assert old.poll(line) is None  # the car keeps v1: it would fail to load an opset-21 model
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "completed", shown["reason"]  # 4 of 4 that can run it: the threshold is met
    assert shown["stages"][0]["counts"] == {"incompatible": 1, "installed": 4}
    assert old.poll(line) is None  # v2 is now stable, and still not for this car


def test_a_car_that_upgrades_its_runtime_says_so_in_a_poll_and_then_gets_the_version(server: LiveServer) -> None:
    line, v1 = _line_with_v1(server)
    server.publish(ZOO / "v2.onnx", line=line, requirements=json.dumps({"min_ort_version": "1.20"}))
    tags = {"fleet": line}
    car = _runs_v1(Car(server, f"{line}-car", tags, platform=OLD), line, v1)
    _runs_v1(Car(server, f"{line}-other", tags, platform=NEW), line, v1)
    rollout = create_rollout(server, line=line, version=2, selector=tags, stages=[{"percent": 100}])
    assert car.poll(line) is None and car.poll(line) is None  # the second one from the cache: still none
    offer = car.poll(line, platform=NEW)
    assert offer is not None and offer["target_version"] == 2
    detail = server.admin().get(f"/api/v1/rollouts/{rollout['id']}").json()
    assert detail["stages"][0]["counts"].get("incompatible", 0) == 0


def test_a_rollout_no_selected_car_can_run_is_refused_naming_the_requirement(server: LiveServer) -> None:
    line, v1 = _line_with_v1(server)
    server.publish(ZOO / "v2.onnx", line=line, requirements=json.dumps({"min_ort_version": "99.0"}))
    tags = {"fleet": line}
    for i in range(2):
        _runs_v1(Car(server, f"{line}-car-{i}", tags, platform=NEW), line, v1)
    before = stored_state(server)
    r = server.admin().post("/api/v1/rollouts", json={"line": line, "version": 2, "selector": tags})
    assert r.status_code == 422 and r.json()["error"] == "incompatible", r.text
    assert "ONNX Runtime >= 99.0 needed" in r.json()["detail"] and "2 of 2 cars" in r.json()["detail"]
    assert stored_state(server) == before
    # a car that never reported its platform may be able to: the rollout is accepted
    _runs_v1(Car(server, f"{line}-unknown", tags), line, v1)
    assert server.admin().post("/api/v1/rollouts", json={"line": line, "version": 2,
                                                         "selector": tags}).status_code == 201


def test_ota_shows_what_a_version_needs_and_the_incompatible_cars(server: LiveServer, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    line, v1 = _line_with_v1(server)
    spec = tmp_path / "contract.json"
    spec.write_text(json.dumps(v1["contract"]))
    code = main(["publish", str(ZOO / "v2.onnx"), f"--line={line}", "--requires", '{"min_ort_version": "1.20"}',
                 f"--spec={spec}", f"--server={server.url}", f"--token={server.admin_token}"])
    assert code == 0, capsys.readouterr().err
    tags = {"fleet": line}
    _runs_v1(Car(server, f"{line}-old", tags, platform=OLD), line, v1)
    _runs_v1(Car(server, f"{line}-new", tags, platform=NEW), line, v1)
    rollout = create_rollout(server, line=line, version=2, selector=tags, stages=[{"percent": 100}])
    capsys.readouterr()
    assert main(["versions", f"--line={line}", f"--server={server.url}", f"--token={server.admin_token}"]) == 0
    out = capsys.readouterr().out
    assert "needs: IR 8, ai.onnx opset 17" in out and "ONNX Runtime >= 1.20" in out
    assert main(["rollout", "show", str(rollout["id"]), f"--server={server.url}",
                 f"--token={server.admin_token}"]) == 0
    assert "incompatible=1" in capsys.readouterr().out

