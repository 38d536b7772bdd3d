"""Webhooks (issue 21 item 4): a real registry delivers signed events from its outbox to a real HTTP receiver.

The receiver is a tiny ``http.server`` in a thread on its own port; "down" is that port with nothing listening.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from server.db import upgrade_to_head
from server.process import free_port
from tests.server.factories import Car, create_rollout, stored_state
from tests.support.live_server import LiveServer, run_live_server, temporary_database

SECRET = "receiver-secret-0123456789"
FAST = {"webhook_tick_s": 0.1, "webhook_backoff_s": 0.1, "webhook_backoff_max_s": 0.4}


class Receiver:
    """An HTTP receiver on ``port``: records every POST (headers, raw body) and answers ``status``."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.port = port
        self.status = status
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, raw))
                outer.paths.append(self.path)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for _h, raw in self.got]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.close()


def add_webhook(server: LiveServer, url: str, events: list[str], secret: str | None = SECRET) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "events": events}
    if secret is not None:
        body["secret"] = secret
    r = server.admin().post("/api/v1/webhooks", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def deliveries(server: LiveServer, webhook_id: int) -> list[dict[str, Any]]:
    r = server.admin().get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_webhook_endpoints_refuse_strangers_bad_urls_events_and_secrets_and_store_nothing(
        live_server: LiveServer) -> None:
    server = live_server
    before = stored_state(server)
    anon = server.anonymous()
    assert anon.post("/api/v1/webhooks", json={"url": "http://127.0.0.1/x", "events": ["version.published"]}
                     ).status_code == 401
    assert anon.get("/api/v1/webhooks").status_code == 401
    assert anon.get("/api/v1/webhooks/1/deliveries").status_code == 401
    assert anon.delete("/api/v1/webhooks/1").status_code == 401
    ok = {"url": "https://hooks.example/ota", "events": ["version.published"], "secret": SECRET}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"url": "file:///etc/passwd"}, "body.url"),
        ({"url": "gopher://127.0.0.1:6379/_FLUSHALL"}, "body.url"),
        ({"url": "ftp://hooks.example/x"}, "body.url"),
        ({"url": "javascript:alert(1)"}, "body.url"),
        ({"url": "http://"}, "body.url"),
        ({"url": "https://user:pw@hooks.example/x"}, "body.url"),
        ({"url": "http://hooks.example:99999/x"}, "body.url"),
        ({"url": "http://hooks.example/a b"}, "body.url"),
        ({"url": "https://hooks.example/" + "a" * 3000}, "body.url"),
        ({"events": []}, "body.events"),
        ({"events": ["rollout.exploded"]}, "body.events"),
        ({"events": "version.published"}, "body.events"),
        ({"secret": "short"}, "body.secret"),
        ({"secret": "has spaces in the secret value"}, "body.secret"),
        ({"extra": 1}, "body.extra"),
    ]
    for change, field in bad:
        r = server.admin().post("/api/v1/webhooks", json={**ok, **change})
        assert r.status_code == 422, (change, r.text)
        assert r.json()["detail"].startswith(field), (change, r.json()["detail"])
    assert server.admin().get("/api/v1/webhooks/999/deliveries").status_code == 404
    assert server.admin().delete("/api/v1/webhooks/999").status_code == 404
    assert stored_state(server) == before


def test_a_published_version_reaches_the_receiver_signed_with_its_event_and_delivery_id(
        live_server_factory: Callable[..., LiveServer], receiver: Receiver, zoo: Path) -> None:
    server = live_server_factory(**FAST)
    hook = add_webhook(server, receiver.url, ["version.published"])
    assert "secret" not in hook  # the admin chose it: never echoed
    assert server.admin().get("/api/v1/webhooks").json()[0].get("secret") is None
    server.publish(zoo / "v1.onnx")
    wait_until(lambda: len(receiver.got) == 1, "the delivery")
    headers, raw = receiver.got[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["x-ota-signature"] == expected
    assert headers["x-ota-event"] == "version.published"
    body = json.loads(raw)
    assert headers["x-ota-delivery"] == str(body["id"])
    assert body["event"] == "version.published" and body["data"]["line"] == "road-signs"
    assert body["data"]["version"] == 1
    wait_until(lambda: deliveries(server, hook["id"])[0]["state"] == "delivered", "the log to say delivered")
    log = deliveries(server, hook["id"])
    assert [(d["state"], d["attempts"], d["last_status_code"]) for d in log] == [("delivered", 1, 200)]
    # a tampered body fails the check a receiver makes
    assert headers["x-ota-signature"] != "sha256=" + hmac.new(SECRET.encode(), raw + b" ", hashlib.sha256).hexdigest()


def test_a_car_that_drifts_sends_one_device_drift_event(
        live_server_factory: Callable[..., LiveServer], receiver: Receiver, zoo: Path) -> None:
    server = live_server_factory(**FAST)
    add_webhook(server, receiver.url, ["device.drift"])
    server.publish(zoo / "v1.onnx")
    car = Car(server, "car-drifts")
    car.install(car.poll())
    car.poll()
    car.version, car.model_sha256, car.package_sha256 = 0, None, None  # it silently runs nothing new
    car.poll()
    car.poll()  # still drifting: no second event
    wait_until(lambda: len(receiver.got) >= 1, "the drift event")
    time.sleep(0.5)
    assert len(receiver.got) == 1
    body = json.loads(receiver.got[0][1])
    assert body["event"] == "device.drift" and body["data"]["device_id"] == "car-drifts"
    assert body["data"]["line"] == "road-signs" and "reported installed version 1" in body["data"]["detail"]


def test_a_receiver_that_is_down_gets_every_event_once_it_is_back_in_order_each_once(
        live_server_factory: Callable[..., LiveServer], zoo: Path) -> None:
    server = live_server_factory(**FAST)
    port = free_port()  # nothing listens here yet: the receiver is down
    hook = add_webhook(server, f"http://127.0.0.1:{port}/hook", [
        "version.published", "rollout.started", "rollout.paused", "rollout.resumed", "rollout.advanced",
        "rollout.aborted"])
    other = add_webhook(server, f"http://127.0.0.1:{port}/other", ["rollout.aborted"], secret=None)
    assert len(other["secret"]) >= 32  # made by the server, shown once
    server.publish(zoo / "v1.onnx")
    server.publish(zoo / "v2.onnx")
    r = create_rollout(server, line="road-signs", version=2, stages=[{"percent": 10}, {"percent": 50},
                                                                      {"percent": 100}])
    admin = server.admin()
    for action in ("pause", "resume", "advance", "abort"):
        assert admin.post(f"/api/v1/rollouts/{r['id']}/{action}").status_code == 200
    expected = ["version.published", "version.published", "rollout.started", "rollout.paused", "rollout.resumed",
                "rollout.advanced", "rollout.aborted"]
    wait_until(lambda: deliveries(server, hook["id"])[-1]["attempts"] >= 2, "retries while the receiver is down")
    log = deliveries(server, hook["id"])
    assert len(log) == len(expected) and all(d["state"] == "pending" for d in log)
    assert log[-1]["last_status_code"] is None and "ConnectError" in (log[-1]["last_error"] or "")
    assert all(d["attempts"] == 0 for d in log[:-1])  # only the oldest is tried: the rest keep their order

    receiver = Receiver(port)
    try:
        wait_until(lambda: all(d["state"] == "delivered" for d in deliveries(server, hook["id"])
                               + deliveries(server, other["id"])), "every delivery")
        time.sleep(0.3)  # a duplicate would arrive now
        mine = [b for path, b in zip(receiver.paths, receiver.bodies(), strict=True) if path == "/hook"]
        assert [b["event"] for b in mine] == expected
        ids = [b["id"] for b in receiver.bodies()]
        assert len(ids) == len(set(ids)) == len(expected) + 1  # each once
        aborted = mine[-1]["data"]
        assert aborted["reason"] == "abort by admin" and aborted["state"] == "aborted"
    finally:
        receiver.close()


def test_events_committed_before_a_restart_are_delivered_by_the_next_server(
        tmp_path: Path, receiver: Receiver, zoo: Path) -> None:
    with temporary_database() as pg:
        overrides: dict[str, Any] = {}
        if pg:  # both servers on one PostgreSQL database
            upgrade_to_head(pg)
            overrides["database_url"] = pg
        data = tmp_path / "srv"
        # The first server's worker never runs (a tick of an hour): the event waits in the outbox.
        with run_live_server(data, **overrides, webhook_tick_s=3600) as first:
            hook = add_webhook(first, receiver.url, ["version.published"])
            first.publish(zoo / "v1.onnx")
            assert [d["state"] for d in deliveries(first, hook["id"])] == ["pending"]
        assert receiver.got == []
        with run_live_server(data, **overrides, **FAST) as second:
            wait_until(lambda: len(receiver.got) == 1, "the delivery after the restart")
            assert receiver.bodies()[0]["data"]["version"] == 1
            wait_until(lambda: deliveries(second, hook["id"])[0]["state"] == "delivered", "the log")


def test_a_receiver_that_keeps_failing_is_retried_with_backoff_then_marked_failed(
        live_server_factory: Callable[..., LiveServer], receiver: Receiver, zoo: Path) -> None:
    receiver.status = 500
    server = live_server_factory(**FAST, webhook_max_attempts=3)
    hook = add_webhook(server, receiver.url, ["version.published"])
    server.publish(zoo / "v1.onnx")
    wait_until(lambda: deliveries(server, hook["id"])[0]["state"] == "failed", "the delivery to give up")
    d = deliveries(server, hook["id"])[0]
    assert (d["attempts"], d["last_status_code"], d["next_attempt_at"]) == (3, 500, None)
    assert d["last_error"] == "receiver answered HTTP 500"
    assert len(receiver.got) == 3
    assert len({b["id"] for b in receiver.bodies()}) == 1  # the same delivery each time


def test_a_removed_webhook_gets_no_new_events_and_keeps_its_log(
        live_server_factory: Callable[..., LiveServer], receiver: Receiver, zoo: Path) -> None:
    server = live_server_factory(**FAST)
    hook = add_webhook(server, receiver.url, ["version.published"])
    server.publish(zoo / "v1.onnx")
    wait_until(lambda: len(receiver.got) == 1, "the first delivery")
    r = server.admin().delete(f"/api/v1/webhooks/{hook['id']}")
    assert r.status_code == 200 and r.json()["active"] is False
    assert server.admin().get("/api/v1/webhooks").json() == []
    server.publish(zoo / "v2.onnx")
    time.sleep(0.4)
    assert len(receiver.got) == 1
    assert [d["event"] for d in deliveries(server, hook["id"])] == ["version.published"]
    audit = [e["action"] for e in server.admin().get("/api/v1/audit").json()]
    assert "webhook.add" in audit and "webhook.remove" in audit


def test_metrics_carry_fleet_gauges_from_the_tick(live_server: LiveServer, zoo: Path) -> None:
    server = live_server
    server.publish(zoo / "v1.onnx")
    server.publish(zoo / "v2.onnx")
    cars = [Car(server, f"car-{i}") for i in range(3)]
    for car in cars:
        car.poll()
    r = create_rollout(server, line="road-signs", version=2, stages=[{"percent": 100}])
    offer = cars[0].poll()
    assert offer is not None
    cars[0].fail(offer)

    def scraped() -> str:
        return server.anonymous().get("/metrics").text

    want = [f'ota_rollout_state{{line="road-signs",rollout="{r["id"]}",state="running"}} 1.0',
            'ota_rollouts{state="running"} 1.0', f'ota_rollout_updates{{rollout="{r["id"]}",state="failed"}} 1.0']
    wait_until(lambda: all(w in scraped() for w in want), "the gauges", timeout_s=5)
    text = scraped()
    assert 'ota_devices{line="road-signs",version="none"} 3.0' in text or \
        'ota_devices{line="road-signs",version="0"} 3.0' in text, [ln for ln in text.splitlines() if "ota_devices" in ln]


def test_ota_webhook_commands_add_list_show_deliveries_and_remove(
        live_server_factory: Callable[..., LiveServer], receiver: Receiver, zoo: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    server = live_server_factory(**FAST)

    def ota(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, f"--server={server.url}", f"--token={server.admin_token}"])
        out = capsys.readouterr()
        return code, out.out, out.err

    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET + "\n")
    code, out, _ = ota("webhook", "add", receiver.url, "--events", "rollout.halted,version.published",
                       "--secret-file", str(secret_file), "--json")
    assert code == 0, out
    hook = json.loads(out)
    assert hook["events"] == ["rollout.halted", "version.published"] and "secret" not in hook
    code, _, err = ota("webhook", "add", "file:///etc/passwd", "--events", "version.published")
    assert code == 1 and "url scheme must be http or https" in err
    code, _, err = ota("webhook", "add", receiver.url, "--events", "version.published", "--secret-file",
                       str(tmp_path / "missing"))
    assert code == 1 and "cannot be read" in err
    server.publish(zoo / "v1.onnx")
    wait_until(lambda: len(receiver.got) == 1, "the delivery")
    headers, raw = receiver.got[0]
    assert headers["x-ota-signature"] == "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    code, out, _ = ota("webhook", "list")
    assert code == 0 and receiver.url in out and "rollout.halted,version.published" in out
    wait_until(lambda: "delivered" in ota("webhook", "deliveries", str(hook["id"]))[1], "the log")
    code, out, _ = ota("webhook", "rm", str(hook["id"]))
    assert code == 0 and "removed" in out
    code, out, _ = ota("webhook", "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_two_servers_on_one_database_deliver_each_event_once_in_order(
        tmp_path: Path, receiver: Receiver, zoo: Path) -> None:
    """Both processes run a delivery worker; the claim (SKIP LOCKED on PostgreSQL, the write lock on SQLite)
    and the lease keep them from sending one delivery twice or out of order."""
    with temporary_database() as pg:
        overrides: dict[str, Any] = {"database_url": pg} if pg else {}
        if pg:
            upgrade_to_head(pg)
        data = tmp_path / "srv"
        with run_live_server(data, **overrides, **FAST) as one, run_live_server(data, **overrides, **FAST) as two:
            add_webhook(one, receiver.url, ["version.published", "rollout.started", "rollout.paused",
                                            "rollout.resumed"])
            one.publish(zoo / "v1.onnx")
            two.publish(zoo / "v2.onnx")
            r = create_rollout(one, line="road-signs", version=2, stages=[{"percent": 100}])
            expected = ["version.published", "version.published", "rollout.started"]
            for i in range(6):
                action = "pause" if i % 2 == 0 else "resume"
                assert (one if i % 3 else two).admin().post(f"/api/v1/rollouts/{r['id']}/{action}").status_code == 200
                expected.append(f"rollout.{action}d")
            wait_until(lambda: len(receiver.got) >= len(expected), "every delivery")
            time.sleep(0.5)  # a duplicate would arrive now
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == expected
    assert [b["id"] for b in bodies] == sorted({b["id"] for b in bodies})


def test_an_automatic_halt_sends_its_reason_and_a_rollback_sends_aborted_then_rolled_back(
        live_server_factory: Callable[..., LiveServer], receiver: Receiver, zoo: Path) -> None:
    server = live_server_factory(**FAST)
    server.publish(zoo / "v1.onnx")
    server.publish(zoo / "v2.onnx")
    hook = add_webhook(server, receiver.url, ["rollout.halted", "rollout.aborted", "rollout.rolled_back"])
    car = Car(server, "halting-car")
    car.poll()
    r = create_rollout(server, line="road-signs", version=2, stages=[{"percent": 100}], error_threshold_count=1)
    offer = car.poll()
    assert offer is not None
    car.fail(offer, reason="smoke test mismatch")
    wait_until(lambda: len(receiver.got) == 1, "the halt")
    halted = receiver.bodies()[0]
    assert halted["event"] == "rollout.halted" and halted["data"]["rollout_id"] == r["id"]
    assert halted["data"]["state"] == "halted" and halted["data"]["reason"]
    assert halted["data"]["actor"] == "auto"
    back = server.admin().post(f"/api/v1/rollouts/{r['id']}/rollback", json={"version": 1})
    assert back.status_code == 201, back.text
    wait_until(lambda: len(receiver.got) == 3, "the rollback's events")
    aborted, rolled_back = receiver.bodies()[1:]
    assert aborted["event"] == "rollout.aborted" and aborted["data"]["rollout_id"] == r["id"]
    assert rolled_back["event"] == "rollout.rolled_back" and rolled_back["data"]["rollout_id"] == back.json()["id"]
    assert rolled_back["data"]["version"] == 1
    # the receiver has the third body a moment before the worker records it delivered
    wait_until(lambda: [d["state"] for d in deliveries(server, hook["id"])] == ["delivered"] * 3, "the log")


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    import random

    from server.config import Settings
    from server.webhooks.worker import backoff_s

    settings = Settings(webhook_backoff_s=2.0, webhook_backoff_max_s=60.0)
    rng = random.Random(7)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (99, 60.0)):
        waits = [backoff_s(attempt, settings, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w < ceiling for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not one instant for every delivery
