"""Publishing any classifier: its contract and its calibration images, refused whole (4xx, nothing stored) when
either does not fit, and recorded (contract changes, unmeasured packages) when they do (issue 17)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from sqlalchemy import select

from models import zoo
from server.orm import AuditEntry
from tests.models.variants import variant
from tests.server.factories import stored_state
from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _post(server: LiveServer, model: bytes, contract: str | None = None, probe: bytes | None = None,
          **form: str) -> Any:
    files = {"file": ("m.onnx", model)}
    if probe is not None:
        files["probe"] = ("probe.npz", probe)
    data = {**form, **({"contract": contract} if contract is not None else {})}
    return server.admin().post("/api/v1/lines/my-line/versions", files=files, data=data)


@pytest.fixture(scope="module")
def dynamic_spatial() -> bytes:
    return variant(onnx.load(ZOO / "v1.onnx"), dims=["N", 3, "H", "W"]).SerializeToString()


def _pickled() -> bytes:
    return npz(images=np.array([np.zeros((4, 4, 3), np.uint8), "x"], dtype=object))


REFUSED = [
    # (name, contract spec, probe, status, words the message must hold)
    ("wrong input size", {"input_size": 227}, None, 422, ["fixed to 64", "--input-size 64"]),
    ("wrong channel count", {"layout": "NHWC"}, None, 422, ["channels", "--layout"]),
    ("labels count", {"labels": ["a", "b"]}, None, 422, ["2 labels", "classes"]),
    ("unknown output", {"output_name": "nope"}, None, 422, ["no output 'nope'", "logits"]),
    ("malformed spec", "{not json", None, 400, ["not valid JSON"]),
    ("spec not an object", "[1, 2]", None, 400, ["JSON object"]),
    ("probe not npz", None, b"GIF89a not a zip", 400, ["not an .npz"]),
    ("pickled probe", None, "pickled", 400, ["pickle"]),
    ("probe dtype", None, npz(images=np.zeros((2, 8, 8, 3), np.float32)), 400, ["float32", "not uint8"]),
    ("probe rank", None, npz(images=np.zeros((8, 8), np.uint8)), 400, ["shape [8, 8]"]),
    ("too many images", None, npz(images=np.zeros((1001, 2, 2, 3), np.uint8)), 400, ["more than 1000 images"]),
    ("empty probe", None, npz(images=np.zeros((0, 2, 2, 3), np.uint8)), 400, ["no images"]),
]


@pytest.mark.parametrize(("spec", "probe", "status", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_contract_or_probe_that_does_not_fit_is_refused_naming_it_and_nothing_is_stored(
        live_server: LiveServer, spec: Any, probe: Any, status: int, words: list[str]) -> None:
    live_server.publish(ZOO / "v1.onnx", line="my-line")  # an existing line: not even its images may change
    before = stored_state(live_server)
    lines_before = live_server.admin().get("/api/v1/lines").json()
    contract = spec if isinstance(spec, str) or spec is None else json.dumps(spec)
    r = _post(live_server, (ZOO / "v2.onnx").read_bytes(), contract, _pickled() if probe == "pickled" else probe,
              codecs="lossless,int8")
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["detail"], r.json()
    assert "nothing was stored" in r.json()["detail"].lower()
    assert stored_state(live_server) == before
    assert live_server.admin().get("/api/v1/lines").json() == lines_before


def test_dynamic_height_and_width_without_a_size_name_the_flag_and_store_nothing(
        live_server: LiveServer, dynamic_spatial: bytes) -> None:
    before = stored_state(live_server)
    r = _post(live_server, dynamic_spatial)
    assert r.status_code == 422 and "--input-size" in r.json()["detail"], r.text
    assert stored_state(live_server) == before
    v = live_server.publish(dynamic_spatial, line="my-line", contract=json.dumps({"input_size": [64, 64]}))
    assert (v["contract"]["height"], v["contract"]["width"]) == (64, 64)


def test_images_that_would_make_too_large_a_gate_input_are_refused_before_any_work(
        live_server: LiveServer, dynamic_spatial: bytes) -> None:
    before = stored_state(live_server)
    r = _post(live_server, dynamic_spatial, json.dumps({"input_size": 4096}),
              npz(images=np.zeros((6, 2, 2, 3), np.uint8)), codecs="int8")
    assert r.status_code == 400 and "send at most 5 images" in r.json()["detail"], r.text
    assert stored_state(live_server) == before


def test_a_lossy_package_of_a_line_without_images_is_unmeasured_and_a_rollout_needs_the_flag(
        live_server: LiveServer) -> None:
    v = live_server.publish(ZOO / "v1.onnx", codecs="lossless,int8")
    assert v["packages"]["int8"]["fidelity"] == {"status": "unmeasured", "top1_agreement": None,
                                                 "max_abs_diff": None, "probe_count": None, "gate": None}
    assert v["packages"]["lossless"]["fidelity"]["status"] == "exact"
    admin = live_server.admin()
    r = admin.post("/api/v1/rollouts", json={"line": "road-signs", "version": 1, "codec": "int8"})
    assert r.status_code == 422 and "never measured" in r.json()["detail"], r.text
    assert "--allow-unmeasured" in r.json()["detail"] and "allow_unmeasured" in r.json()["detail"]
    r = admin.post("/api/v1/rollouts", json={"line": "road-signs", "version": 1})
    assert r.status_code == 201 and r.json()["codec"] == "lossless"  # nothing lossy passed: lossless
    r = admin.post("/api/v1/rollouts", json={"line": "road-signs", "version": 1, "codec": "int8",
                                             "allow_unmeasured": True})
    assert r.status_code == 201 and r.json()["codec"] == "int8"


def test_min_agreement_without_images_is_refused_naming_probe(live_server: LiveServer) -> None:
    before = stored_state(live_server)
    r = _post(live_server, (ZOO / "v1.onnx").read_bytes(), codecs="int8", min_agreement="0.9")
    assert r.status_code == 400 and "--probe" in r.json()["detail"], r.text
    assert stored_state(live_server) == before


def test_images_are_kept_once_per_line_and_gate_every_later_version(live_server: LiveServer) -> None:
    probe = (ZOO / "probe.npz").read_bytes()
    v1 = live_server.publish(ZOO / "v1.onnx", codecs="lossless,int8", probe=probe, min_agreement=0.9)
    fid = v1["packages"]["int8"]["fidelity"]
    assert fid["status"] == "measured" and fid["probe_count"] == 256 and fid["gate"] == 0.9
    assert 0.9 <= fid["top1_agreement"] <= 1.0
    (line,) = live_server.admin().get("/api/v1/lines").json()
    assert (line["probe_count"], line["min_agreement"]) == (256, 0.9)
    blobs = stored_state(live_server)["blob files"]
    v2 = live_server.publish(ZOO / "v2.onnx", codecs="lossless,int8")  # no --probe: the line's images
    assert v2["packages"]["int8"]["fidelity"]["probe_count"] == 256
    assert v2["packages"]["int8"]["fidelity"]["gate"] == 0.9
    assert stored_state(live_server)["blob files"] > blobs  # packages; the probe blob was not sent again
    r = live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
    assert r.status_code == 201 and r.json()["codec"] == "int8"  # the smallest package that passed the gate
    # raising the line's gate above what v2 measured makes its int8 package unshippable without the flag
    live_server.publish(ZOO / "v3.onnx", codecs="lossless", min_agreement=1.0)
    r = live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2, "codec": "int8"})
    if v2["packages"]["int8"]["fidelity"]["top1_agreement"] < 1.0:
        assert r.status_code == 422 and "below the line's gate 1.0" in r.json()["detail"], r.text
    r = live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
    assert r.status_code == 201
    assert r.json()["codec"] == ("int8" if v2["packages"]["int8"]["fidelity"]["top1_agreement"] >= 1.0
                                 else "lossless")


def test_a_new_probe_replaces_the_lines_images(live_server: LiveServer) -> None:
    images, _ = zoo.probe_images()
    live_server.publish(ZOO / "v1.onnx", probe=(ZOO / "probe.npz").read_bytes())
    first = live_server.admin().get("/api/v1/lines").json()[0]
    assert first["min_agreement"] == 0.99  # the default gate of a line with images
    small = npz(**{f"im{i}": images[i, : 20 + i, : 30 + 2 * i] for i in range(5)})  # separate arrays, any sizes
    live_server.publish(ZOO / "v2.onnx", probe=small)
    line = live_server.admin().get("/api/v1/lines").json()[0]
    assert line["probe_count"] == 5 and line["probe_sha256"] != first["probe_sha256"]
    assert live_server.ctx.blobs.get(line["probe_sha256"]) == small


def test_a_contract_change_is_recorded_and_shown(live_server: LiveServer) -> None:
    v1 = live_server.publish(ZOO / "v1.onnx")
    assert v1["contract"] == zoo.contract("v1").to_dict() and v1["contract_changed"] == []
    v2 = live_server.publish(ZOO / "v2.onnx", contract=json.dumps({"mean": [0.4, 0.4, 0.4], "resize": "crop"}))
    assert sorted(v2["contract_changed"]) == ["mean", "resize"]
    v3 = live_server.publish((ZOO / "v3.onnx").read_bytes())  # inherits the line's contract: no change
    assert v3["contract_changed"] == [] and v3["contract"]["mean"] == [0.4, 0.4, 0.4]
    with live_server.ctx.db.session_scope() as s:
        entries = [(a.action, a.detail) for a in s.scalars(select(AuditEntry).where(
            AuditEntry.action == "version.contract_changed"))]
    assert entries == [("version.contract_changed", {"line": "road-signs", "version": 2,
                                                     "fields": ["resize", "mean"]})]
    page = live_server.admin().get("/api/v1/lines/road-signs/versions/2").json()
    assert page["contract_changed"] == v2["contract_changed"]


def test_cli_publish_sends_spec_flags_and_a_folder_of_images_and_prints_the_contract(
        live_server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from PIL import Image

    from cli.main import main

    images, _ = zoo.probe_images()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):  # any sizes, PNG and JPEG
        Image.fromarray(images[i]).resize((40 + 10 * i, 50)).save(folder / f"p{i}.{'png' if i else 'jpg'}")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**zoo.contract("v1").to_dict(), "mean": [0.1, 0.1, 0.1]}))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(zoo.contract("v1").labels) + "\n")
    server = [f"--server={live_server.url}", f"--token={live_server.admin_token}"]

    def ota(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, *server])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = ota("publish", str(ZOO / "v1.onnx"), "--line", "cli-line", "--spec", str(spec), "--mean", "0.5",
                         "--labels", str(labels), "--probe", str(folder), "--codecs", "lossless,int8",
                         "--min-agreement", "0")
    assert code == 0, err
    assert "contract: input input NCHW 64x64 (stretch), RGB, scale 0..1, mean 0.5,0.5,0.5" in out  # flag over spec
    assert "on 3 images, gate 0" in out
    line = live_server.admin().get("/api/v1/lines").json()[0]
    assert line["probe_count"] == 3
    code, out, err = ota("publish", str(ZOO / "v2.onnx"), "--line", "cli-line", "--channel-order", "bgr",
                         "--codecs", "lossless")
    assert code == 0 and "contract changed from version 1: channel_order" in out, out + err
    code, out, _ = ota("versions", "--line", "cli-line")
    assert code == 0 and out.count("contract:") == 2 and "BGR" in out
    code, _, err = ota("publish", str(ZOO / "v2.onnx"), "--line", "cli-line", "--spec", str(labels))
    assert code == 1 and "--spec" in err and "JSON" in err
    code, _, err = ota("rollout", "create", "--line", "cli-line", "--version", "1", "--codec", "int8",
                       "--allow-unmeasured")
    assert code == 0, err


def test_models_dashboard_shows_each_versions_contract_its_change_and_unmeasured_packages(
        live_server: LiveServer) -> None:
    live_server.publish(ZOO / "v1.onnx", codecs="lossless,int8")
    live_server.publish(ZOO / "v2.onnx", codecs="lossless,int8", contract=json.dumps({"channel_order": "BGR"}))
    browser = live_server.anonymous()
    r = browser.post("/dashboard/login", data={"token": live_server.admin_token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    html = browser.get("/dashboard/models").text
    assert html.count('data-field="contract"') == 2
    assert "64×64 NCHW (stretch), RGB 0..1, mean 0.5/0.5/0.5 std 0.25/0.25/0.25 → logits, 10 labels" in html
    assert 'data-changed="channel_order"' in html and "contract changed: channel_order" in html
    assert html.count('data-status="unmeasured"') == 2 and html.count(">unmeasured</span>") == 2
    assert html.count('data-status="exact"') == 2
