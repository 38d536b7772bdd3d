"""``GET /api/v1/rollouts/{id}/devices``: the cars a rollout offered its version to, paged by keyset cursor in
offer order, filtered by state, stage and device id (issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.rollouts.stages import stage_of
from tests.server.factories import Car, create_rollout, stored_state
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with run_live_server(tmp_path_factory.mktemp("rollout-devices")) as srv:
        srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        yield srv


def _pages(server: LiveServer, rollout_id: int, params: dict[str, Any], between: Any = None
           ) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        r = server.admin().get(f"/api/v1/rollouts/{rollout_id}/devices",
                               params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        pages.append(r.json())
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            return pages
        if between is not None and len(pages) == 1:
            between()


def _ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [d["device_id"] for p in pages for d in p]


def test_pages_list_every_offered_car_once_in_offer_order_while_more_cars_are_offered(server: LiveServer) -> None:
    first = [Car(server, f"order-{i:02d}", {"fleet": "order"}) for i in range(7)]
    rollout = create_rollout(server, line="road-signs", version=2, selector={"fleet": "order"})
    for car in reversed(first):  # offer order is not id order
        assert car.poll() is not None
    late: list[Car] = []

    def more_offers() -> None:
        for i in range(3):
            late.append(Car(server, f"order-late-{i}", {"fleet": "order"}))
            assert late[-1].poll() is not None

    pages = _pages(server, rollout["id"], {"limit": 3}, between=more_offers)
    assert _ids(pages) == [c.device_id for c in reversed(first)] + [c.device_id for c in late]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    row = pages[0][0]
    assert row["state"] == "offered" and row["stage"] == 0 and row["stuck"] is False and row["target_version"] == 2

    offer = first[0].poll()
    assert offer is not None
    first[0].install(offer)
    assert _ids(_pages(server, rollout["id"], {"state": "installed"})) == ["order-00"]
    assert _ids(_pages(server, rollout["id"], {"q": "LATE-1"})) == ["order-late-1"]  # part of the id, any case
    assert _pages(server, rollout["id"], {"state": "failed"}) == [[]]


def test_stage_filter_keeps_the_cars_whose_bucket_falls_in_that_stage(server: LiveServer) -> None:
    cars = [Car(server, f"stage-{i:02d}", {"fleet": "stage"}) for i in range(16)]
    rollout = create_rollout(server, line="road-signs", version=2, selector={"fleet": "stage"},
                             stages=[{"percent": 50}, {"percent": 100}])
    rid = rollout["id"]
    assert server.admin().post(f"/api/v1/rollouts/{rid}/advance").status_code == 200
    for car in cars:
        car.poll()
    expected = {s: [c.device_id for c in cars if stage_of(rid, c.device_id, [50, 100]) == s] for s in (0, 1)}
    assert expected[0] and expected[1]  # sixteen cars land in both halves
    for s in (0, 1):
        rows = [d for p in _pages(server, rid, {"stage": s, "limit": 2}) for d in p]
        assert sorted(d["device_id"] for d in rows) == sorted(expected[s]) and {d["stage"] for d in rows} == {s}


@pytest.fixture(scope="module")
def bad_rollout(server: LiveServer) -> int:
    Car(server, "bad-input", {"fleet": "bad"})
    return int(create_rollout(server, line="road-signs", version=2, selector={"fleet": "bad"})["id"])


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "many"}, "limit"),
    ({"cursor": "!!not-base64!!"}, "cursor"), ({"cursor": "Zm9vYmFy"}, "cursor"), ({"cursor": "x" * 101}, "cursor"),
    ({"state": "sleeping"}, "state"), ({"stage": -1}, "stage"), ({"stage": 5}, "stage"), ({"q": "x" * 201}, "q"),
])
def test_bad_cursor_limit_or_filter_is_422_naming_the_field_and_stores_nothing(
        server: LiveServer, bad_rollout: int, params: dict[str, Any], field: str) -> None:
    before = stored_state(server, audit=True)
    r = server.admin().get(f"/api/v1/rollouts/{bad_rollout}/devices", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert stored_state(server, audit=True) == before


def test_the_list_needs_the_admin_token_and_a_known_rollout(server: LiveServer) -> None:
    assert server.anonymous().get("/api/v1/rollouts/1/devices").status_code == 401
    assert server.admin().get("/api/v1/rollouts/99999/devices").status_code == 404
