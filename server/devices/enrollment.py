"""Who may hold a device id: enrolment, re-enrolment, and the operator's reauthorise / revoke / decommission.

The rules (docs/PROTOCOL.md "Enrollment" and "Device identity"):

- a NEW id enrols with an enrolment token (``tokens.redeem``) and, normally, the car's own public key;
- an id that EXISTS is refused (409) unless the request carries a proof signed by the id's current key
  (``device_keys.check_proof``; no enrolment token needed: the key is the credential), or the operator
  pre-authorised the next enrolment of that id (once, before a deadline; with an enrolment token);
- a re-enrolment rotates the device token and may replace the key, and never rewrites the tags;
- a revoked device's token and key stop working at once; only ``reauthorize`` brings it back.

Every decision, refusals included, is written to the audit log (a refusal in its own transaction: the
route's transaction is rolled back).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server import audit
from server.config import Settings
from server.db import as_utc, utcnow
from server.devices import device_keys, schemas, store, tokens
from server.errors import Conflict, NotFound, Unauthorized
from server.orm import Device
from server.security import Signer, new_token, token_digest


def _exists(device_id: str) -> Conflict:
    return Conflict(f"device {device_id!r} is already enrolled; a car re-enrols with a proof signed by its "
                    f"registered key, or an operator allows one re-enrolment with `ota devices reauthorize "
                    f"{device_id}`", code="device_exists")


def _new_device(session: Session, body: schemas.EnrollIn, grant: tokens.Grant, token: str) -> Device:
    device = Device(device_id=body.device_id, token_sha256=token_digest(token),
                    tags={**body.tags, **grant.tags}, public_key=body.public_key, proof_ms=0,
                    created_at=utcnow(), manifest_version=0, last_seq=0)
    try:
        with session.begin_nested():
            session.add(device)
            session.flush()
    except IntegrityError as e:  # enrolled concurrently: the winner holds the id
        raise _exists(body.device_id) from e
    return device


def _by_proof(device: Device, body: schemas.EnrollIn, now: datetime) -> None:
    """Raises Unauthorized unless the proof is good and the device is not revoked."""
    assert body.proof is not None
    if device.revoked_at is not None:
        raise Unauthorized(f"device {device.device_id!r} is revoked; only `ota devices reauthorize "
                           f"{device.device_id}` brings it back")
    new_key = body.public_key or device.public_key or ""
    device_keys.check_proof(device.public_key, int(device.proof_ms or 0), device.device_id, new_key,
                     body.proof.timestamp, body.proof.signature, int(now.timestamp() * 1000))
    device.proof_ms = body.proof.timestamp
    device.public_key = new_key or None


def _reauthorized(device: Device, now: datetime) -> bool:
    return device.reauthorized_until is not None and now <= as_utc(device.reauthorized_until)


def enroll(session: Session, settings: Settings, signer: Signer, enrollment_token: str | None,
           body: schemas.EnrollIn, delegation: dict[str, Any]) -> schemas.EnrollOut:
    """Enrol a new id, or re-enrol an existing one by key proof or the operator's pre-authorisation.

    Raises:
        Unauthorized: bad or missing enrolment token, or a bad, stale or replayed proof.
        Conflict: the id exists and the request neither proves its key nor was pre-authorised.
    """
    now, token = utcnow(), new_token()
    device = store.by_device_id(session, body.device_id)
    # a pre-authorised re-enrolment with an enrolment token wins over a proof (the car may have lost its key)
    if device is not None and body.proof is not None and not (enrollment_token and _reauthorized(device, now)):
        _by_proof(device, body, now)
        actor, outcome = f"device:{device.device_id}", "proof"
    else:
        grant = tokens.redeem(session, settings, enrollment_token, now)
        actor = grant.actor
        if device is None:
            device, outcome = _new_device(session, body, grant, token), "created"
        elif _reauthorized(device, now):
            outcome = "reauthorized"
            device.public_key = body.public_key
            device.proof_ms, device.reauthorized_until = 0, None
            device.revoked_at = device.decommissioned_at = None
        else:
            raise _exists(body.device_id)
    device.token_sha256 = token_digest(token)
    platform = body.parsed_platform()
    if platform is not None:  # what the car can run (issue 20); a re-enrolment after an upgrade updates it
        device.platform, device.platform_sha256 = platform.to_dict(), platform.digest()
    session.flush()
    audit.record(session, actor, "device.enroll", device_id=device.device_id, outcome=outcome,
                 key=device.public_key)
    return schemas.EnrollOut(device_id=device.device_id, device_token=token, public_key=signer.public_b64,
                             key_id=signer.key_id, poll_interval_s=device.poll_interval_s or settings.poll_interval_s,
                             delegation=delegation)


def record_refusal(session: Session, body: schemas.EnrollIn, client: str, status: int, reason: str) -> None:
    """Audit a refused enrolment (run in a transaction of its own, after the enrolment's was rolled back)."""
    audit.record(session, f"client:{client}", "device.enroll", device_id=body.device_id, outcome="refused",
                 status=status, reason=reason, with_proof=body.proof is not None)


def _device(session: Session, device_id: str) -> Device:
    device = store.by_device_id(session, device_id)
    if device is None:
        raise NotFound(f"device {device_id!r} is not enrolled (`ota devices list` shows the fleet)")
    return device


def _action_out(device: Device, action: str) -> schemas.DeviceActionOut:
    return schemas.DeviceActionOut(device_id=device.device_id, action=action, revoked_at=device.revoked_at,
                                   decommissioned_at=device.decommissioned_at,
                                   reauthorized_until=device.reauthorized_until)


def reauthorize(session: Session, device_id: str, valid_s: int, actor: str) -> schemas.DeviceActionOut:
    """Allow the next enrolment of this id (with an enrolment token) to replace its key, once, within ``valid_s``.

    Raises:
        NotFound: the device is not enrolled.
    """
    device = _device(session, device_id)
    device.reauthorized_until = utcnow() + timedelta(seconds=valid_s)
    session.flush()
    audit.record(session, actor, "device.reauthorize", device_id=device_id, outcome="ok",
                 until=device.reauthorized_until.isoformat())
    return _action_out(device, "reauthorize")


def revoke(session: Session, device_id: str, actor: str, decommission: bool = False) -> schemas.DeviceActionOut:
    """Revoke the device at once: its token is replaced by one nobody holds (401 on poll, download, report; the
    poll caches drop it on the commit's change notice) and its key proves nothing.  ``decommission`` also
    takes it out of the inventory and the rollouts' counts.

    Raises:
        NotFound: the device is not enrolled.
    """
    device = _device(session, device_id)
    now = utcnow()
    device.token_sha256 = token_digest(new_token())
    device.revoked_at = device.revoked_at or now
    device.reauthorized_until = None
    if decommission:
        device.decommissioned_at = device.decommissioned_at or now
    session.flush()
    action = "device.decommission" if decommission else "device.revoke"
    audit.record(session, actor, action, device_id=device_id, outcome="ok")
    return _action_out(device, action.split(".")[1])
