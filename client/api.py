"""The registry's HTTP API as the car sees it (docs/PROTOCOL.md), over async httpx.

The transport is injectable: tests pass nothing (real sockets), the simulator
wraps the real transport in a link model.  Every failure becomes one of the
agent's errors: ``Offline`` when the registry cannot be reached,
``Unauthorized`` on 401, ``ServerError`` for anything else it should not have said.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import httpx

from client.errors import DownloadError, ServerError, Unauthorized

API = "/api/v1"


class Offline(DownloadError):
    """The registry could not be reached (connect, read or timeout); retry with backoff."""


@dataclass(frozen=True)
class Enrollment:
    """What enrolment returns: the device credential and the fleet key to pin."""

    device_id: str
    device_token: str
    public_key: bytes
    key_id: str
    poll_interval_s: float
    delegation: dict[str, Any] | None = None  # root-signed; the agent believes public_key only through it


@dataclass(frozen=True)
class PollResult:
    """The server's answer to a poll: how long to wait, and maybe a signed offer envelope."""

    poll_interval_s: float
    offer: dict[str, Any] | None
    status: Any = None  # with no offer: the signed status the agent checks for freshness


@dataclass(frozen=True)
class ReportAck:
    """Which report seqs the server took (or already had) and which it refused."""

    accepted: list[int]
    rejected: list[dict[str, Any]]
    #: Seqs of the quality summaries the registry stored (or already had); absent from an older registry.
    quality_accepted: list[int] = field(default_factory=list)


class RegistryClient:
    """Async client for the device endpoints; one per agent."""

    def __init__(
        self,
        server_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=server_url.rstrip("/"),
            transport=transport,
            timeout=httpx.Timeout(timeout_s),
            headers={"User-Agent": "ota-agent/0.1"},
        )
        self.device_token: str | None = None

    async def aclose(self) -> None:
        await self.http.aclose()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.device_token}"} if self.device_token else {}

    async def _post(self, path: str, body: dict[str, Any], token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return await self.http.post(API + path, json=body, headers=headers)
        except httpx.TransportError as e:
            raise Offline(f"registry unreachable at {self.http.base_url} ({type(e).__name__}: {e})") from e

    async def enroll(self, device_id: str, enroll_token: str | None, tags: dict[str, str],
                     public_key: str | None = None, proof: dict[str, Any] | None = None,
                     platform: dict[str, Any] | None = None) -> Enrollment:
        """Enrol a new id with an enrolment token, or re-enrol (rotating the token) with a ``proof`` signed by
        the car's registered key (then no enrolment token is needed).

        Raises:
            Unauthorized: the enrolment token or the proof was refused.
            ServerError: any other refusal (409: the id is enrolled with another key) or a malformed answer.
            Offline: the registry is unreachable.
        """
        body: dict[str, Any] = {"device_id": device_id, "tags": tags}
        if public_key is not None:
            body["public_key"] = public_key
        if proof is not None:
            body["proof"] = proof
        if platform is not None:
            body["platform"] = platform
        resp = await self._post("/devices/enroll", body, enroll_token)
        body = _json(resp, "enrolment", expect=(200, 201))
        try:
            return Enrollment(
                device_id=str(body["device_id"]),
                device_token=str(body["device_token"]),
                public_key=base64.b64decode(body["public_key"], validate=True),
                key_id=str(body["key_id"]),
                poll_interval_s=float(body.get("poll_interval_s", 60)),
                delegation=body.get("delegation"),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise ServerError(f"enrolment answer is missing or has a bad field: {e}") from e

    async def poll(
        self,
        line: str,
        current_version: int,
        current_model_sha256: str | None,
        current_package_sha256: str | None,
        agent_state: str,
        platform_sha256: str | None = None,
        platform: dict[str, Any] | None = None,
    ) -> PollResult:
        """Tell the registry what runs here and get its offer, if any.

        ``platform_sha256`` is the digest of what the car can run (issue 20), ``platform`` the platform itself
        when the registry may not have it yet.

        Raises:
            Unauthorized, ServerError, Offline: as for ``enroll``.
        """
        body: dict[str, Any] = {
            "line": line,
            "current_version": current_version,
            "current_model_sha256": current_model_sha256,
            "current_package_sha256": current_package_sha256,
            "agent_state": agent_state,
        }
        if platform_sha256 is not None:
            body["platform_sha256"] = platform_sha256
        if platform is not None:
            body["platform"] = platform
        data = _json(await self._post("/device/poll", body, self.device_token), "poll")
        offer = data.get("offer")
        if offer is not None and not isinstance(offer, dict):
            raise ServerError(f"poll answer's offer is not an object: {type(offer).__name__}")
        try:
            interval = float(data.get("poll_interval_s", 60))
        except (TypeError, ValueError) as e:
            raise ServerError(f"poll_interval_s is not a number: {data.get('poll_interval_s')!r}") from e
        return PollResult(interval, offer, data.get("status"))

    async def keys(self) -> dict[str, Any]:
        """The registry's current root-signed delegation (``GET /keys``; the caller verifies it).

        Raises:
            ServerError, Offline: as for ``enroll``.
        """
        try:
            resp = await self.http.get(API + "/keys")
        except httpx.TransportError as e:
            raise Offline(f"registry unreachable at {self.http.base_url} ({type(e).__name__}: {e})") from e
        delegation = _json(resp, "keys").get("delegation")
        if not isinstance(delegation, dict):
            raise ServerError("keys answer carries no delegation object")
        return delegation

    async def send_reports(self, reports: list[dict[str, Any]],
                           quality: list[dict[str, Any]] | None = None) -> ReportAck:
        """Send queued reports (and quality summaries, issue 18) in one request; the server acknowledges
        each seq.

        Raises:
            Unauthorized, ServerError, Offline: as for ``enroll``.
        """
        body: dict[str, Any] = {"reports": reports}
        if quality:
            body["quality"] = quality
        resp = await self._post("/device/reports", body, self.device_token)
        if resp.status_code == 409 and len(reports) == 1:
            err = _error_body(resp)
            return ReportAck([], [{"seq": reports[0]["seq"], "error": err[0], "detail": err[1]}])
        data = _json(resp, "reports")
        try:
            accepted = [int(s) for s in data.get("accepted", [])]
            quality_accepted = [int(s) for s in data.get("quality_accepted", None) or []]
        except (TypeError, ValueError) as e:
            raise ServerError(f"reports answer lists a seq that is not an integer: {e}") from e
        rejected = [r for r in data.get("rejected", []) if isinstance(r, dict)]
        return ReportAck(accepted, rejected, quality_accepted)


def _error_body(resp: httpx.Response) -> tuple[str, str]:
    try:
        data = resp.json()
        return str(data.get("error", resp.status_code)), str(data.get("detail", resp.text[:200]))
    except ValueError:
        return str(resp.status_code), resp.text[:200]


def _json(resp: httpx.Response, what: str, expect: tuple[int, ...] = (200,)) -> dict[str, Any]:
    if resp.status_code not in expect:
        code, detail = _error_body(resp)
        cls = Unauthorized if resp.status_code == 401 else ServerError
        raise cls(f"{what} refused with {resp.status_code} {code}: {detail}", resp.status_code, code)
    try:
        data = resp.json()
    except ValueError as e:
        raise ServerError(f"{what} answer is not JSON: {resp.text[:120]!r}") from e
    if not isinstance(data, dict):
        raise ServerError(f"{what} answer is not a JSON object")
    return data
