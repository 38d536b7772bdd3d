"""Small helpers for the server tests: snapshots of what is stored, devices that poll and report."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy import func, select

from protocol.platform import Platform
from server.orm import Base
from tests.support.device_keys import DeviceKey
from tests.support.live_server import LiveServer


def stored_state(server: LiveServer, *, audit: bool = False) -> dict[str, int]:
    """Row count of every table plus the number of blob files: 'nothing changed' means this is equal.

    The audit log is left out unless ``audit``: a refused request is recorded there (issue 21), and that
    row is the one thing a refusal stores."""
    counts = {}
    with server.ctx.db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name == "audit_log" and not audit:
                continue
            counts[table.name] = conn.execute(select(func.count()).select_from(table)).scalar_one()
    counts["blob files"] = server.ctx.blobs.count()
    return counts


def wait_for_transfers(server: LiveServer, count: int, timeout_s: float = 5.0) -> None:
    """Transfer records are written as a download's response ends, just after the client has the bytes;
    wait for them so that a later 'nothing changed' snapshot does not race a late record."""
    deadline = time.monotonic() + timeout_s
    while stored_state(server)["transfers"] < count:
        assert time.monotonic() < deadline, "transfer records did not appear"
        time.sleep(0.02)


def create_rollout(server: LiveServer, **body: Any) -> dict[str, Any]:
    """Create a rollout through the admin API; fails the test unless the server answers 201."""
    r = server.admin().post("/api/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def show_rollout(server: LiveServer, rollout_id: int) -> dict[str, Any]:
    """The rollout as ``GET /api/v1/rollouts/{id}`` shows it (stages, counts, state)."""
    return server.admin().get(f"/api/v1/rollouts/{rollout_id}").json()


def summary(offer: dict[str, Any], seq: int, frames: int, agree: int, kind: str = "shadow", classes: int = 4,
            latency_ms: float = 2.0, baseline_latency_ms: float = 2.0) -> dict[str, Any]:
    """A car's cumulative quality summary of ``offer``'s version against version 1: ``frames`` compared,
    ``agree`` of them with the same top-1 class (as protocol.quality.QualitySummary.to_dict() writes it)."""
    from protocol.quality import ModelStats, QualitySummary

    cand, base = ModelStats(), ModelStats()
    for i in range(frames):
        base.record(i % classes, 0.9, baseline_latency_ms)
        cand.record(i % classes if i < agree else (i + 1) % classes, 0.85, latency_ms)
    return QualitySummary(kind=kind, line=offer["line"], rollout_id=offer["rollout_id"],
                          candidate_version=offer["target_version"], baseline_version=1, seq=seq, frames=frames,
                          agree=agree, sampled=frames, dropped=0, candidate=cand, baseline=base).to_dict()


class Car:
    """A device speaking the protocol with plain httpx (the real agent is tested in tests/client).

    It holds its own Ed25519 key, registered at enrolment, and signs its reports with it unless
    ``signs`` is False (a phantom: its installs count toward a rollout only after a full download).
    """

    def __init__(self, server: LiveServer, device_id: str, tags: dict[str, str] | None = None,
                 signs: bool = True, platform: dict[str, Any] | None = None) -> None:
        self.server = server
        self.device_id = device_id
        self.key = DeviceKey()
        self.signs = signs
        self.platform = platform  # what it reports it can run (issue 20; protocol.platform.Platform.to_dict())
        body = {"device_id": device_id, "tags": tags or {}, "public_key": self.key.public_b64}
        if platform is not None:
            body["platform"] = platform
        r = server.device(server.enrollment_token).post("/api/v1/devices/enroll", json=body)
        assert r.status_code == 201, r.text
        self.enrollment = r.json()
        self.http: httpx.Client = server.device(self.enrollment["device_token"])
        self.seq = 0
        self.version = 0
        self.package_sha256: str | None = None
        self.model_sha256: str | None = None

    def poll(self, line: str = "road-signs", platform: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Poll; ``platform`` sends a (changed) platform in full, else the digest of the one enrolled with."""
        body: dict[str, Any] = {
            "line": line, "current_version": self.version, "current_model_sha256": self.model_sha256,
            "current_package_sha256": self.package_sha256, "agent_state": "idle"}
        if platform is not None:
            self.platform = body["platform"] = platform
        if self.platform is not None:
            body["platform_sha256"] = Platform.from_dict(self.platform).digest()
        r = self.http.post("/api/v1/device/poll", json=body)
        assert r.status_code == 200, r.text
        offer = r.json()["offer"]
        return offer["signed"] if offer else None

    def report(self, offer: dict[str, Any], state: str, **extra: Any) -> httpx.Response:
        self.seq += 1
        body = {"seq": self.seq, "rollout_id": offer["rollout_id"], "manifest_version": offer["manifest_version"],
                "target_version": offer["target_version"], "state": state, **extra}
        if self.signs:
            body = self.key.signed_report(body)
        return self.http.post("/api/v1/device/reports", json={"reports": [body]})

    def install(self, offer: dict[str, Any], download: bool = True) -> None:
        """Walk the happy path: download the smallest artifact, report each state, run the new version."""
        assert self.report(offer, "downloading").status_code == 200
        got = 0
        if download:
            art = offer["delta"] or offer["package"]
            expected = stored_state(self.server)["transfers"] + 1
            r = self.http.get(art["url"])
            assert r.status_code == 200, r.text
            got = len(r.content)
            wait_for_transfers(self.server, expected)
        for state in ("downloaded", "verified"):
            assert self.report(offer, state, bytes_received=got).status_code == 200
        r = self.report(offer, "installed", bytes_received=got, running_version=offer["target_version"],
                        running_model_sha256=offer["model_sha256"])
        assert r.status_code == 200, r.text
        self.version = offer["target_version"]
        self.model_sha256 = offer["model_sha256"]
        self.package_sha256 = offer["package"]["sha256"]

    def send_quality(self, *summaries: dict[str, Any]) -> httpx.Response:
        """Send quality summaries (``QualitySummary.to_dict()``) alone, as a car does between reports."""
        return self.http.post("/api/v1/device/reports", json={"reports": [], "quality": list(summaries)})

    def fail(self, offer: dict[str, Any], reason: str = "smoke test mismatch") -> None:
        assert self.report(offer, "downloading").status_code == 200
        assert self.report(offer, "failed", reason=reason).status_code == 200
