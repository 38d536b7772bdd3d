"""``GET /api/v1/devices`` at scale (issue 21): keyset pages by device id, an opaque ``X-Next-Cursor``, filters in SQL.

Real registry, real cars over HTTP (``Car``); the pagination test enrols cars between page fetches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.server.factories import Car, stored_state
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with run_live_server(tmp_path_factory.mktemp("inventory")) as srv:
        srv.publish(ZOO / "v1.onnx")
        yield srv


def _ids(server: LiveServer, **params: Any) -> list[str]:
    r = server.admin().get("/api/v1/devices", params=params)
    assert r.status_code == 200, r.text
    return [d["device_id"] for d in r.json()]


def _every_page(server: LiveServer, between: Any = None, **params: Any) -> list[str]:
    """Follow X-Next-Cursor to the end, calling ``between(page_number, last_id)`` after each page."""
    seen: list[str] = []
    cursor: str | None = None
    n = 0
    while True:
        r = server.admin().get("/api/v1/devices", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        assert isinstance(r.json(), list)  # the body stays a list: readers from before cursors still work
        seen += [d["device_id"] for d in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            return seen
        n += 1
        if between is not None:
            between(n, seen[-1])


def test_list_devices_unauthenticated_is_401(server: LiveServer) -> None:
    assert server.anonymous().get("/api/v1/devices").status_code == 401
    assert server.device("nope").get("/api/v1/devices", params={"limit": 5}).status_code == 401


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "many"}, "limit"),
    ({"cursor": "!!not-base64!!"}, "cursor"), ({"cursor": "Zm9vYmFy"}, "cursor"), ({"cursor": "x" * 401}, "cursor"),
    ({"tag": "region"}, "tag"), ({"tag": "=eu"}, "tag"), ({"state": "sleeping"}, "state"),
    ({"version": -1}, "version"), ({"seen_since": "2026-12-07T06:00:00"}, "seen_since"), ({"q": "x" * 201}, "q"),
])
def test_bad_cursor_limit_or_filter_is_422_naming_the_field_and_stores_nothing(
        server: LiveServer, params: dict[str, Any], field: str) -> None:
    before = stored_state(server, audit=True)
    r = server.admin().get("/api/v1/devices", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert stored_state(server, audit=True) == before


def test_pages_are_keyset_by_device_id_and_stable_under_concurrent_enrolments(server: LiveServer) -> None:
    first = [f"page-{i:02d}" for i in range(0, 20, 2)]
    for name in first:
        Car(server, name)
    behind: list[str] = []
    ahead: list[str] = []

    def enrol_between(page: int, last: str) -> None:
        # one car whose id sorts before the cursor (already passed) and one after it (still to come)
        n = int(last[5:7])
        behind.append(f"page-{n - 1:02d}b{page}")
        ahead.append(f"page-{n + 1:02d}b{page}")
        Car(server, behind[-1])
        Car(server, ahead[-1])

    seen = _every_page(server, enrol_between, q="page-", limit=3)
    assert len(ahead) >= 3  # several pages were fetched with enrolments between them
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # in order, none twice
    assert set(first) <= set(seen)  # every car there from the start, exactly once
    assert set(ahead) <= set(seen)  # a car enrolled ahead of the cursor shows up on a later page
    assert not set(behind) & set(seen)  # one enrolled behind it does not shift or repeat anything
    assert _every_page(server, q="page-", limit=1000) == sorted(first + behind + ahead)


def test_a_full_page_carries_a_cursor_and_the_last_page_none(server: LiveServer) -> None:
    for i in range(3):
        Car(server, f"edge-{i}")
    r = server.admin().get("/api/v1/devices", params={"q": "edge-", "limit": 3})
    assert [d["device_id"] for d in r.json()] == ["edge-0", "edge-1", "edge-2"]
    cursor = r.headers["X-Next-Cursor"]  # a full page: there may be more
    r = server.admin().get("/api/v1/devices", params={"q": "edge-", "limit": 3, "cursor": cursor})
    assert r.json() == [] and "X-Next-Cursor" not in r.headers
    r = server.admin().get("/api/v1/devices", params={"q": "edge-", "limit": 4})
    assert len(r.json()) == 3 and "X-Next-Cursor" not in r.headers


def test_filters_by_tag_line_version_state_drift_and_search_run_together(server: LiveServer) -> None:
    idle = Car(server, "flt-idle", {"region": "eu"})  # never polls: no line
    offered = Car(server, "flt-offered", {"region": "eu", "hw": "b"})
    installed = Car(server, "flt-installed", {"region": "us"})
    assert offered.poll() is not None
    offer = installed.poll()
    assert offer is not None
    installed.install(offer)
    installed.poll()
    assert _ids(server, q="flt-", tag="region=eu") == ["flt-idle", "flt-offered"]
    assert _ids(server, q="flt-", tag=["region=eu", "hw=b"]) == ["flt-offered"]
    assert _ids(server, q="FLT-OFF") == ["flt-offered"]  # case-insensitive part of the id
    assert _ids(server, q="flt-", line="road-signs") == ["flt-installed", "flt-offered"]
    assert _ids(server, q="flt-", line="road-signs", version=1) == ["flt-installed"]
    assert _ids(server, q="flt-", version=0) == ["flt-offered"]
    assert _ids(server, q="flt-", line="no-such-line") == []
    assert _ids(server, q="flt-", state="offered") == ["flt-offered"]
    assert _ids(server, q="flt-", state="installed") == ["flt-installed"]
    assert _ids(server, q="flt-", drift="true") == []
    assert _ids(server, q="flt-", seen_since="2999-01-01T00:00:00Z") == []
    assert idle.device_id not in _ids(server, q="flt-", seen_since="2000-01-01T00:00:00Z")  # never seen


def test_decommissioned_cars_leave_the_inventory_pages(server: LiveServer) -> None:
    Car(server, "gone-1")
    Car(server, "gone-2")
    assert server.admin().post("/api/v1/devices/gone-1/decommission").status_code == 200
    assert _ids(server, q="gone-") == ["gone-2"]


def test_ota_devices_list_shows_one_page_and_all_follows_the_cursor(
        server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import admin_cmds
    from cli.main import main

    for i in range(5):
        Car(server, f"cli-{i}", {"fleet": "cli"})
    common = [f"--server={server.url}", f"--token={server.admin_token}", "--search", "cli-"]
    assert main(["devices", "list", "--limit", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "cli-0" in out and "cli-1" in out and "cli-2" not in out and "--all" in out
    old_page, admin_cmds.DEVICES_PAGE = admin_cmds.DEVICES_PAGE, 2  # three requests for five cars
    try:
        assert main(["devices", "list", "--all", "--json", "--tag", "fleet=cli", *common]) == 0
    finally:
        admin_cmds.DEVICES_PAGE = old_page
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == [f"cli-{i}" for i in range(5)]
    assert main(["devices", "list", "--limit", "0", *common]) == 1
    assert "limit" in capsys.readouterr().err
