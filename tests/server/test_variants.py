"""Issue 20 item 3, variants: one version, several exports, each car offered the one it can run.

Over real HTTP on a real registry with real zoo models: version N at a new opset (ai.onnx 21) and, published
``variant_of`` N, the same weights at opset 17 for cars whose ONNX Runtime stops at opset 20.  The new car gets
the version's own export, the old car the variant; both are "on version N" for the rollout; a variant's transfer
delta starts from the same variant of the car's version, else the car gets the full package.
"""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import onnx
import pytest

from cli.main import main
from models import zoo
from protocol.platform import Platform
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout, stored_state
from tests.support.live_server import LiveServer

_lines = count(1)
NEW = Platform.for_runtime("1.32.0", ("CPUExecutionProvider",), "x86_64", 4096).to_dict()
OLD = Platform.for_runtime("1.17.3", ("CPUExecutionProvider",), "aarch64", 1024).to_dict()  # up to opset 20
ONE_STAGE = [{"percent": 100, "success_threshold_pct": 100}]


def _at_opset(name: str, opset: int) -> bytes:
    """A real zoo model re-exported at another ai.onnx opset (its operators are the same in 17..21)."""
    model = onnx.load(ZOO / name)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _publish(server: LiveServer, line: str, name: str, opset: int, contract: dict[str, Any] | None = None,
             **form: Any) -> dict[str, Any]:
    return server.publish(_at_opset(name, opset), line=line, codecs="lossless",
                          contract=json.dumps(contract) if contract is not None else None, **form)


def _contract() -> dict[str, Any]:
    return zoo.contract("v1").to_dict()


def _on(car: Car, line: str, version: dict[str, Any], export: dict[str, Any] | None = None) -> Car:
    """The car runs ``version`` (its own export, or ``export``: one of its variants) and has polled once."""
    pkg = (export or version)["packages"]["lossless"]
    car.version, car.model_sha256, car.package_sha256 = version["version"], pkg["model_sha256"], pkg["sha256"]
    car.poll(line)
    return car


def test_each_car_gets_the_export_it_can_run_and_a_variant_car_is_on_the_version(server: LiveServer) -> None:
    line = f"variants-{next(_lines)}"
    tags = {"fleet": line}
    v1 = _publish(server, line, "v1.onnx", 17, _contract())
    _publish(server, line, "v2.onnx", 21, v1["contract"])
    v2 = _publish(server, line, "v2.onnx", 17, variant_of=2, notes="for ONNX Runtime before 1.18")
    assert v2["version"] == 2 and v2["requirements"]["opsets"] == {"ai.onnx": 21}
    [variant] = v2["variants"]
    assert variant["variant"] == 1 and variant["requirements"]["opsets"] == {"ai.onnx": 17}
    assert variant["packages"]["lossless"]["model_sha256"] != v2["packages"]["lossless"]["model_sha256"]
    assert server.admin().get(f"/api/v1/lines/{line}/versions/2").json()["variants"] == v2["variants"]
    new = _on(Car(server, f"{line}-new", tags, platform=NEW), line, v1)
    old = _on(Car(server, f"{line}-old", tags, platform=OLD), line, v1)

    r = create_rollout(server, line=line, version=2, selector=tags, stages=ONE_STAGE, error_threshold_count=1)
    assert r["stages"][0]["counts"] == {"pending": 2}  # the old car can run the variant: not incompatible
    offer_new, offer_old = new.poll(line), old.poll(line)
    assert offer_new is not None and offer_old is not None
    assert offer_new["target_version"] == offer_old["target_version"] == 2
    assert offer_new["package"]["sha256"] == v2["packages"]["lossless"]["sha256"]
    assert offer_old["package"]["sha256"] == variant["packages"]["lossless"]["sha256"]
    assert offer_old["model_sha256"] == variant["packages"]["lossless"]["model_sha256"]
    assert offer_old["delta"] is None  # v1 has no such variant: the full package
    assert offer_new["delta"] is not None and offer_new["delta"]["base_package_sha256"] == new.package_sha256
    new.install(offer_new)
    old.install(offer_old)
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "completed", shown["reason"]
    assert shown["stages"][0]["counts"] == {"installed": 2}
    assert old.poll(line) is None and new.poll(line) is None  # each runs version 2 (its own export of it)


def test_the_newest_fitting_opset_wins_and_a_car_that_fits_no_export_is_incompatible(server: LiveServer) -> None:
    line = f"variants-{next(_lines)}"
    tags = {"fleet": line}
    v1 = _publish(server, line, "v1.onnx", 17, _contract())
    _publish(server, line, "v2.onnx", 21, v1["contract"])
    _publish(server, line, "v2.onnx", 17, variant_of=2)
    v2 = _publish(server, line, "v2.onnx", 18, variant_of=2)
    by_opset = {v["requirements"]["opsets"]["ai.onnx"]: v for v in v2["variants"]}
    ancient = Platform.for_runtime("1.11.0", ("CPUExecutionProvider",), "x86_64", 1024).to_dict()  # opset 16
    old = _on(Car(server, f"{line}-old", tags, platform=OLD), line, v1)
    stuck = _on(Car(server, f"{line}-ancient", tags, platform=ancient), line, v1)
    r = create_rollout(server, line=line, version=2, selector=tags, stages=ONE_STAGE)
    assert r["stages"][0]["counts"] == {"incompatible": 1, "pending": 1}
    offer = old.poll(line)
    assert offer is not None and offer["package"]["sha256"] == by_opset[18]["packages"]["lossless"]["sha256"]
    assert stuck.poll(line) is None


def test_a_variant_whose_contract_differs_from_its_versions_is_422_and_stores_nothing(server: LiveServer) -> None:
    line = f"variants-{next(_lines)}"
    v1 = _publish(server, line, "v1.onnx", 17, _contract())
    before = stored_state(server)
    other = {**v1["contract"], "channel_order": "BGR" if v1["contract"]["channel_order"] == "RGB" else "RGB"}
    r = server.admin().post(f"/api/v1/lines/{line}/versions", files={"file": ("m.onnx", _at_opset("v1.onnx", 17))},
                            data={"variant_of": "1", "codecs": "lossless", "contract": json.dumps(other)})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "contract" and "channel_order" in r.json()["detail"], r.text
    assert stored_state(server) == before


def test_a_variant_of_a_version_that_does_not_exist_is_404_and_a_bad_number_422(server: LiveServer) -> None:
    line = f"variants-{next(_lines)}"
    data = _at_opset("v1.onnx", 17)
    r = server.anonymous().post(f"/api/v1/lines/{line}/versions", files={"file": ("m.onnx", data)},
                             data={"variant_of": "1"})
    assert r.status_code == 401, r.text  # unauthenticated first
    _publish(server, line, "v1.onnx", 17, _contract())
    before = stored_state(server)
    for number, status, says in (("2", 404, "no version 2"), ("0", 422, "variant_of"), ("x", 422, "variant_of")):
        r = server.admin().post(f"/api/v1/lines/{line}/versions", files={"file": ("m.onnx", data)},
                                data={"variant_of": number, "codecs": "lossless"})
        assert r.status_code == status and says in r.text, (number, r.text)
    r = server.admin().post("/api/v1/lines/no-such-line/versions", files={"file": ("m.onnx", data)},
                            data={"variant_of": "1", "codecs": "lossless"})
    assert r.status_code == 404, r.text
    assert stored_state(server) == before


def test_a_variant_car_gets_a_delta_from_the_same_variant_of_its_version(server: LiveServer) -> None:
    line = f"variants-{next(_lines)}"
    tags = {"fleet": line}
    v1 = _publish(server, line, "v1.onnx", 21, _contract())
    v1 = _publish(server, line, "v1.onnx", 17, variant_of=1)
    _publish(server, line, "v2.onnx", 21, v1["contract"])
    v2 = _publish(server, line, "v2.onnx", 17, variant_of=2)
    old = Car(server, f"{line}-old", tags, platform=OLD)
    first = old.poll(line)  # a new car: the stable v1, as the variant it can run
    assert first is not None and first["package"]["sha256"] == v1["variants"][0]["packages"]["lossless"]["sha256"]
    old.install(first)
    create_rollout(server, line=line, version=2, selector=tags, stages=ONE_STAGE)
    offer = old.poll(line)
    assert offer is not None and offer["package"]["sha256"] == v2["variants"][0]["packages"]["lossless"]["sha256"]
    assert offer["delta"] is not None and offer["delta"]["base_package_sha256"] == first["package"]["sha256"]
    assert offer["delta"]["size"] < offer["package"]["size"]
    old.install(offer)
    assert old.poll(line) is None


def test_ota_publish_variant_of_and_ota_versions_show_the_variant(server: LiveServer, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    line = f"variants-{next(_lines)}"
    v1 = _publish(server, line, "v1.onnx", 21, _contract())
    model = tmp_path / "v1-opset17.onnx"
    model.write_bytes(_at_opset("v1.onnx", 17))
    auth = [f"--server={server.url}", f"--token={server.admin_token}"]
    code = main(["publish", str(model), f"--line={line}", "--variant-of", "1", "--codecs", "lossless",
                 "--requires", '{"arch": ["aarch64", "x86_64"]}', *auth])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["versions", f"--line={line}", *auth]) == 0
    out = capsys.readouterr().out
    assert "needs: IR 8, ai.onnx opset 21" in out
    assert "variant 1" in out and "ai.onnx opset 17" in out and "arch aarch64 or x86_64" in out, out
    assert len(server.admin().get(f"/api/v1/lines/{line}/versions").json()) == 1  # still one version
    assert v1["variants"] == []
