"""Issue 20: a car on several model lines; what it runs is kept per (device, line), each line judged alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from server.orm import DeviceLine
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout
from tests.support.live_server import LiveServer, run_live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_live_server(tmp_path_factory.mktemp("lines")) as s:
        s.publish(ZOO / "v1.onnx", line="signs", codecs="lossless")
        s.publish(ZOO / "v2.onnx", line="signs", codecs="lossless")
        s.publish(ZOO / "v3.onnx", line="lanes", codecs="lossless")
        yield s


def _rows(server: LiveServer, device_id: str) -> dict[str, tuple[int | None, int | None, bool]]:
    from server.orm import Device

    with server.ctx.db.read_scope() as session:
        pk = session.scalar(select(Device.id).where(Device.device_id == device_id))
        return {r.line: (r.running_version, r.reported_version, r.drift)
                for r in session.scalars(select(DeviceLine).where(DeviceLine.device_pk == pk))}


def test_a_car_on_two_lines_installs_each_and_the_inventory_lists_both(server: LiveServer) -> None:
    car = Car(server, "two-lines-1", tags={"region": "eu"})
    signs_offer = car.poll("signs")
    assert signs_offer is not None and signs_offer["target_version"] == 1
    car.install(signs_offer)
    signs_state = (car.version, car.model_sha256, car.package_sha256)
    car.version, car.model_sha256, car.package_sha256 = 0, None, None
    lanes_offer = car.poll("lanes")
    assert lanes_offer is not None and lanes_offer["line"] == "lanes" and lanes_offer["target_version"] == 1
    car.install(lanes_offer)
    lanes_state = (car.version, car.model_sha256, car.package_sha256)
    assert car.poll("lanes") is None
    car.version, car.model_sha256, car.package_sha256 = signs_state
    assert car.poll("signs") is None
    car.version, car.model_sha256, car.package_sha256 = lanes_state
    assert car.poll("lanes") is None

    assert _rows(server, "two-lines-1") == {"signs": (1, 1, False), "lanes": (1, 1, False)}
    shown = server.admin().get("/api/v1/devices/two-lines-1").json()
    assert [(x["line"], x["running_version"], x["drift"]) for x in shown["lines"]] == [
        ("lanes", 1, False), ("signs", 1, False)]
    assert shown["drift"] is False
    listed = {d["device_id"]: d for d in server.admin().get("/api/v1/devices").json()}
    assert {x["line"] for x in listed["two-lines-1"]["lines"]} == {"lanes", "signs"}
    page = server.admin().get("/dashboard/fleet")
    if page.status_code == 200:  # the dashboard may need a login cookie: the API above is the contract
        assert "lanes v1" in page.text and "signs v1" in page.text


def test_polling_another_line_leaves_the_first_lines_row_as_it_was(server: LiveServer) -> None:
    """A car alternating lines must not flip one device-wide "line" column at every poll (the cache fast path)."""
    car = Car(server, "two-lines-2")
    car.install(car.poll("signs") or {})
    assert car.poll("signs") is None
    before = _rows(server, "two-lines-2")
    car.version, car.model_sha256, car.package_sha256 = 0, None, None
    assert car.poll("lanes") is not None
    after = _rows(server, "two-lines-2")
    assert after["signs"] == before["signs"] == (1, 1, False)
    assert after["lanes"] == (0, None, False)


def test_drift_on_one_line_is_shown_on_that_line_only(server: LiveServer) -> None:
    car = Car(server, "two-lines-3")
    car.install(car.poll("signs") or {})
    car.version, car.model_sha256, car.package_sha256 = 0, None, None
    car.install(car.poll("lanes") or {})
    car.version, car.model_sha256 = 7, None  # lanes: polls with a version it never reported installing
    car.poll("lanes")
    shown = server.admin().get("/api/v1/devices/two-lines-3").json()
    by_line = {x["line"]: x for x in shown["lines"]}
    assert by_line["lanes"]["drift"] is True and "reported installed version 1" in by_line["lanes"]["drift_detail"]
    assert by_line["signs"]["drift"] is False
    assert shown["drift"] is True
    drifted = server.admin().get("/api/v1/devices", params={"drift": "true"}).json()
    assert "two-lines-3" in {d["device_id"] for d in drifted}


def test_a_rollout_of_one_line_counts_only_the_cars_on_that_line(server: LiveServer) -> None:
    on_signs = Car(server, "two-lines-4")
    on_signs.install(on_signs.poll("signs") or {})
    only_lanes = Car(server, "two-lines-5")
    only_lanes.install(only_lanes.poll("lanes") or {})
    r = create_rollout(server, line="signs", version=2)
    assigned = sum(s["assigned"] for s in server.admin().get(f"/api/v1/rollouts/{r['id']}").json()["stages"])
    # every car that polled signs in this module (1, 2, 3, 4) and not the lanes-only car
    assert assigned == 4
    server.admin().post(f"/api/v1/rollouts/{r['id']}/abort")


def test_migration_moves_a_one_line_cars_columns_into_device_lines_and_downgrades(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text

    from server.db import alembic_config, create_private_sqlite_file, make_engine, upgrade_to_head
    from tests.support.live_server import temporary_database

    with temporary_database() as pg:
        url = pg or f"sqlite:///{tmp_path / 'registry.db'}"
        create_private_sqlite_file(url)
        command.upgrade(alembic_config(url), "0005")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO devices (id, device_id, token_sha256, tags, created_at, line, running_version, "
                "running_model_sha256, reported_version, drift, drift_detail, manifest_version, last_seq, proof_ms) "
                "VALUES (1, 'old-car', 't1', '{}', CURRENT_TIMESTAMP, 'signs', 3, 'm3', 2, true, 'drifted', 5, 0, 0), "
                "(2, 'never-polled', 't2', '{}', CURRENT_TIMESTAMP, NULL, NULL, NULL, NULL, false, NULL, 0, 0, 0)"))
        upgrade_to_head(url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT device_pk, line, running_version, running_model_sha256, "
                                     "reported_version, drift, drift_detail FROM device_lines")).all()
            assert [tuple(r) for r in rows] == [(1, "signs", 3, "m3", 2, True, "drifted")]
        command.downgrade(alembic_config(url), "0005")
        with engine.connect() as conn:
            back = conn.execute(text("SELECT device_id, line, running_version, reported_version, drift "
                                     "FROM devices ORDER BY id")).all()
            assert [tuple(r) for r in back] == [("old-car", "signs", 3, 2, True),
                                                ("never-polled", None, None, None, False)]
        engine.dispose()
