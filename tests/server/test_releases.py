"""Issue 20 item 2, first part: a release names one existing version per line; bad input stores nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cli.main import main
from tests.conftest import ZOO
from tests.server.factories import stored_state
from tests.support.live_server import LiveServer, run_live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_live_server(tmp_path_factory.mktemp("releases")) as s:
        s.publish(ZOO / "v1.onnx", line="signs", codecs="lossless")
        s.publish(ZOO / "v2.onnx", line="signs", codecs="lossless")
        s.publish(ZOO / "v3.onnx", line="lanes", codecs="lossless")
        yield s


def test_creating_a_release_needs_the_admin_token(server: LiveServer) -> None:
    before = stored_state(server)
    r = server.device("not-the-admin").post("/api/v1/releases", json={"name": "r0", "pins": {"signs": 1}})
    assert r.status_code == 401
    assert stored_state(server) == before


@pytest.mark.parametrize(("body", "status", "named"), [
    ({"name": "r-bad", "pins": {"signs": 9}}, 422, "pins.signs: line 'signs' has no version 9"),
    ({"name": "r-bad", "pins": {"signs": 1, "wheels": 1}}, 422, "pins.wheels: no model line 'wheels'"),
    ({"name": "r-bad", "pins": {}}, 422, "pins"),
    ({"name": "r-bad", "pins": {"signs": 0}}, 422, "pins"),
    ({"name": "r-bad", "pins": {f"l{i}": 1 for i in range(17)}}, 422, "pins"),
    ({"name": "../x", "pins": {"signs": 1}}, 422, "name"),
    ({"pins": {"signs": 1}}, 422, "name"),
])
def test_a_bad_release_is_refused_naming_the_field_and_stores_nothing(
        server: LiveServer, body: dict[str, object], status: int, named: str) -> None:
    before = stored_state(server)
    r = server.admin().post("/api/v1/releases", json=body)
    assert r.status_code == status, r.text
    assert named in r.text
    assert stored_state(server) == before


def test_a_release_pins_versions_of_several_lines_and_names_are_unique(server: LiveServer) -> None:
    r = server.admin().post("/api/v1/releases", json={"name": "drive-7", "pins": {"signs": 2, "lanes": 1}})
    assert r.status_code == 201, r.text
    out = r.json()
    assert [(m["line"], m["version"]) for m in out["members"]] == [("lanes", 1), ("signs", 2)]
    assert server.admin().get("/api/v1/releases/drive-7").json() == out
    before = stored_state(server)
    again = server.admin().post("/api/v1/releases", json={"name": "drive-7", "pins": {"signs": 1}})
    assert again.status_code == 409 and again.json()["error"] == "release_exists"
    assert stored_state(server) == before
    assert server.admin().get("/api/v1/releases/nope").status_code == 404
    audit = server.admin().get("/api/v1/audit", params={"limit": 5}).json()
    assert any(a["action"] == "release.create" for a in audit)


def test_ota_release_create_and_show(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    def ota(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, f"--server={server.url}", f"--token={server.admin_token}"])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = ota("release", "create", "cli-rel", "--pin", "signs=1", "--pin", "lanes=1", "--json")
    assert code == 0 and {m["line"] for m in json.loads(out)["members"]} == {"signs", "lanes"}
    code, _, err = ota("release", "create", "cli-bad", "--pin", "signs=42")
    assert code == 1 and "no version 42" in err
    code, _, err = ota("release", "create", "cli-bad", "--pin", "signs=seven")
    assert code == 1 and "must be a number" in err
    code, out, _ = ota("release", "show", "cli-rel")
    assert code == 0 and "signs v1" in out and "lanes v1" in out
