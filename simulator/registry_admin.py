"""The few admin calls a rehearsal makes (publish, start a rollout, read it and its accounting), over HTTP.

The simulator is a client of the registry like any operator tool; it never
imports ``server``.  Errors carry the server's own ``{"error", "detail"}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

API = "/api/v1"


class AdminError(RuntimeError):
    """The registry refused an admin call; the message carries its status and detail."""


class RegistryAdmin:
    """Synchronous admin client (the calls are few and sequential; the cars are the async part)."""

    def __init__(self, server_url: str, admin_token: str, timeout_s: float = 300.0, retry_s: float = 120.0) -> None:
        self.retry_s = retry_s
        self.http = httpx.Client(base_url=server_url.rstrip("/") + API, timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {admin_token}"})

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, ok: int = 200, **kw: Any) -> Any:
        # 503 is the registry's "database busy, nothing was done, retry shortly": a loaded SQLite
        # registry says it under a big fleet, so retry for a while before giving up.
        delay, deadline = 0.5, time.monotonic() + self.retry_s
        while True:
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError as e:
                raise AdminError(f"{method} {path}: registry unreachable ({e})") from e
            if r.status_code != 503 or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        if r.status_code != ok:
            raise AdminError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json()

    def publish(self, model: bytes | Path, line: str, notes: str = "", publisher: str = "ota-demo", *,
                contract: dict[str, Any] | None = None, probe: Path | None = None,
                codecs: str | None = None, variant_of: int | None = None) -> dict[str, Any]:
        """Publish a version; ``contract`` (JSON object of contract fields) and ``probe`` (the line's calibration
        images, an .npz) go as the form field and file part of the same names, as ``ota publish`` sends them;
        ``variant_of`` N publishes another export of version N instead (issue 20)."""
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        form = {"notes": notes, "publisher": publisher}
        if contract is not None:
            form["contract"] = json.dumps(contract)
        if codecs is not None:
            form["codecs"] = codecs
        if variant_of is not None:
            form["variant_of"] = str(variant_of)
        files = {"file": ("model.onnx", data)}
        if probe is not None:
            files["probe"] = ("probe.npz", Path(probe).read_bytes())
        return self._call("POST", f"/lines/{line}/versions", ok=201, files=files, data=form)

    def versions(self, line: str) -> list[dict[str, Any]]:
        try:
            return list(self._call("GET", f"/lines/{line}/versions"))
        except AdminError as e:
            if "-> 404" in str(e):
                return []
            raise

    def version(self, line: str, number: int) -> dict[str, Any]:
        """One published version (its packages with their SHA-256s, labels), as the publish answered it."""
        return self._call("GET", f"/lines/{line}/versions/{number}")

    def start_rollout(self, line: str, version: int, stages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        return self._call("POST", "/rollouts", ok=201, json={"line": line, "version": version, "stages": stages, **kw})

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return self._call("GET", f"/rollouts/{rollout_id}")

    def act(self, rollout_id: int, action: str) -> dict[str, Any]:
        """``pause``, ``resume``, ``advance`` or ``abort``."""
        return self._call("POST", f"/rollouts/{rollout_id}/{action}")

    def artifact(self, sha256: str) -> bytes:
        """An artifact's bytes (admins may fetch any package or delta)."""
        r = self.http.get(f"/artifacts/{sha256}")
        if r.status_code != 200:
            raise AdminError(f"GET /artifacts/{sha256[:12]} -> {r.status_code}: {r.text[:500]}")
        return r.content

    def accounting(self, rollout_id: int) -> dict[str, Any]:
        return self._call("GET", f"/accounting/rollouts/{rollout_id}")

    def transfers(self, limit: int = 10_000) -> list[dict[str, Any]]:
        return list(self._call("GET", "/accounting/transfers", params={"limit": limit}))
