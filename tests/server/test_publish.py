"""Publishing over HTTP: versions, packages, storage as deltas with keyframes, bad uploads, concurrency."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from models import codec
from tests.server.factories import stored_state, wait_for_transfers
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """v1..v4 published with keyframes every 2 versions (so v2 and v4 are stored as deltas)."""
    with run_live_server(tmp_path_factory.mktemp("publish"), keyframe_interval=2) as srv:
        for n in range(1, 5):
            srv.publish(ZOO / f"v{n}.onnx", notes=f"version {n}", publisher="tests")
        yield srv


def _checker_failing_model() -> bytes:
    node = helper.make_node("Relu", ["not_defined_anywhere"], ["y"])
    graph = helper.make_graph([node], "broken", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_publish_numbers_versions_and_records_metadata(server: LiveServer) -> None:
    versions = server.admin().get("/api/v1/lines/road-signs/versions").json()
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    v2 = versions[1]
    source = (ZOO / "v2.onnx").read_bytes()
    assert v2["source_sha256"] == hashlib.sha256(source).hexdigest()
    assert v2["source_bytes"] == len(source)
    assert v2["notes"] == "version 2" and v2["publisher"] == "tests"
    pkg = v2["packages"]["lossless"]
    assert pkg["fidelity"]["top1_agreement"] == 1.0
    assert 0 < pkg["delta_from_previous"] < pkg["bytes"]
    lines = server.admin().get("/api/v1/lines").json()
    assert lines == [{"name": "road-signs", "stable_version": 1, "latest_version": 4, "versions": 4,
                     "probe_sha256": None, "probe_count": None, "min_agreement": None}]  # no calibration images


def test_packages_stored_as_deltas_download_byte_identical_to_the_codec_output(server: LiveServer) -> None:
    admin = server.admin()
    versions = admin.get("/api/v1/lines/road-signs/versions").json()
    assert [v["packages"]["lossless"]["stored_as"] for v in versions] == ["full", "delta", "full", "delta"]
    server.ctx.storage.cache.__init__(1)  # empty the cache: force materialization from deltas
    transfers = stored_state(server)["transfers"]
    for v in versions:
        pkg = v["packages"]["lossless"]
        r = admin.get(f"/api/v1/artifacts/{pkg['sha256']}")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == pkg["sha256"]
        assert codec.read_header(r.content)["model_sha256"] == pkg["model_sha256"]
    wait_for_transfers(server, transfers + len(versions))
    storage = admin.get("/api/v1/lines/road-signs/storage").json()
    assert storage["packages"] == 4 and storage["keyframes"] == 2
    assert storage["stored_bytes"] < 0.75 * storage["full_packages_bytes"]


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("not onnx", b"this is a text file, not a model\n" * 10, "not an ONNX"),
    ("truncated", (ZOO / "v1.onnx").read_bytes()[:100_000], "ONNX"),
    ("checker fails", _checker_failing_model(), "onnx.checker"),
    ("empty", b"", "empty"),
])
def test_bad_upload_gets_400_and_stores_nothing(server: LiveServer, name: str, data: bytes, needle: str) -> None:
    before = stored_state(server)
    r = server.admin().post("/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", data)})
    assert r.status_code == 400, (name, r.text)
    assert r.json()["error"] == "invalid_model"
    assert needle in r.json()["detail"]
    assert stored_state(server) == before


def test_publish_without_admin_token_is_401_and_stores_nothing(server: LiveServer) -> None:
    before = stored_state(server)
    data = (ZOO / "v1.onnx").read_bytes()
    for client in (server.anonymous(), server.device("not-a-token")):
        r = client.post("/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", data)})
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
    assert stored_state(server) == before


def test_unknown_codec_and_bad_line_name_are_400(server: LiveServer) -> None:
    data = (ZOO / "v1.onnx").read_bytes()
    before = stored_state(server)
    r = server.admin().post("/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", data)},
                            data={"codecs": "zip"})
    assert r.status_code == 400 and "unknown codec" in r.json()["detail"]
    r = server.admin().post("/api/v1/lines/Bad%20Name/versions", files={"file": ("m.onnx", data)})
    assert r.status_code == 400 and "line name" in r.json()["detail"]
    assert stored_state(server) == before


def test_upload_over_the_size_limit_is_413(tmp_path: Path) -> None:
    with run_live_server(tmp_path / "s", max_upload_bytes=1000) as srv:
        before = stored_state(srv)
        r = srv.admin().post("/api/v1/lines/x/versions", files={"file": ("m.onnx", (ZOO / "v1.onnx").read_bytes())})
        assert r.status_code == 413
        assert stored_state(srv) == before


def test_missing_version_and_line_are_404(server: LiveServer) -> None:
    assert server.admin().get("/api/v1/lines/road-signs/versions/99").status_code == 404
    assert server.admin().get("/api/v1/lines/nope/versions").json()["error"] == "not_found"


def test_concurrent_publishes_get_distinct_version_numbers(live_server: LiveServer) -> None:
    data = [(ZOO / f"v{n}.onnx").read_bytes() for n in (1, 2, 3)]
    results: list[int] = []
    errors: list[BaseException] = []

    def publish(model: bytes) -> None:
        try:
            results.append(live_server.publish(model, line="race")["version"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(d,)) for d in data]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [1, 2, 3]
    versions = live_server.admin().get("/api/v1/lines/race/versions").json()
    assert sorted(v["source_sha256"] for v in versions) == sorted(hashlib.sha256(d).hexdigest() for d in data)


def test_checker_failing_model_is_really_invalid_for_onnx() -> None:
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(onnx.load_from_string(_checker_failing_model()))
