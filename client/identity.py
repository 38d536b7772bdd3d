"""The car's identity on disk: device id, device token, the pinned fleet key, and the car's own key pair.

``identity.json`` is written at enrolment (atomically) and read at every start, so a car keeps
trusting the fleet key it first saw (trust on first use, then pinned).

``device-key.pem`` is the car's own Ed25519 private key, generated on first start and never sent
anywhere: the server stores its public key at enrolment, and possession of the private key is the car's
lasting credential (docs/PROTOCOL.md "Device identity").  It signs a proof when the car re-enrols (its
bearer token was lost or rotated: no enrolment token needed) and every install report.  The file is
created 0600 with ``O_EXCL`` under a temporary name and hard-linked into place, so it is never readable
by others and never half-written, even for a moment.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.atomic import fsync_dir, storage_error, write_atomic
from client.errors import StorageError
from client.manifest import canonical_json

DEVICE_KEY_FILE = "device-key.pem"


@dataclass(frozen=True)
class Identity:
    """Credentials and the pinned public key."""

    device_id: str
    device_token: str
    public_key: bytes
    key_id: str


def load_identity(path: Path) -> Identity | None:
    """The stored identity, or None for a car never enrolled.

    Raises:
        StorageError: the file exists but is unreadable or malformed (delete it and re-enrol).
    """
    try:
        data = json.loads(path.read_bytes())
        return Identity(data["device_id"], data["device_token"], base64.b64decode(data["public_key"]), data["key_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StorageError(f"{path} is unreadable ({e}); delete it and start the agent with --enroll-token") from e


def save_identity(path: Path, identity: Identity, *, fsync: bool = True) -> None:
    """Persist the identity atomically."""
    data = {
        "device_id": identity.device_id,
        "device_token": identity.device_token,
        "public_key": base64.b64encode(identity.public_key).decode(),
        "key_id": identity.key_id,
    }
    write_atomic(path, json.dumps(data, indent=1).encode(), fsync=fsync, what="device identity",
                 mode=0o600)  # it holds the device token: private from its first instant


class DeviceKey:
    """The car's own Ed25519 key: its public half goes in the enrolment body, the private half signs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_b64 = base64.b64encode(raw).decode()

    def sign(self, obj: dict[str, Any]) -> str:
        """Base64 Ed25519 signature of the canonical JSON of ``obj``."""
        return base64.b64encode(self._key.sign(canonical_json(obj))).decode()

    def enroll_proof(self, device_id: str, now_ms: int | None = None) -> dict[str, Any]:
        """The ``proof`` of a re-enrolment that keeps this key (the server refuses a replayed or stale one)."""
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        signed = {"type": "enroll", "device_id": device_id, "public_key": self.public_b64, "timestamp": ts}
        return {"timestamp": ts, "signature": self.sign(signed)}

    def sign_report(self, report: dict[str, Any]) -> dict[str, Any]:
        """The report with its ``signature`` (over the report without that field), ready to send."""
        body = {k: v for k, v in report.items() if k != "signature"}
        return {**body, "signature": self.sign(body)}


def load_or_create_device_key(path: Path, *, fsync: bool = True) -> DeviceKey:
    """The car's key from ``path``, generated there on first start (0600 from its creation).

    Raises:
        StorageError: the file is unreadable or not an Ed25519 key (move it away only if the operator will
            reauthorise the device: its registered key is lost with it), or the disk refused the write.
    """
    try:
        return _load_key(path)
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created the key meanwhile: then that one wins
        except FileExistsError:
            return _load_key(path)
        finally:
            tmp.unlink(missing_ok=True)
        if fsync:
            fsync_dir(path.parent)
    except OSError as e:
        raise storage_error(e, "device key", path) from e
    return DeviceKey(key)


def _load_key(path: Path) -> DeviceKey:
    data = path.read_bytes()  # FileNotFoundError: the caller creates it
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise StorageError(f"{path} is not a readable device key ({e}); the operator must run `ota devices "
                           "reauthorize <id>` before this car can enrol with a new key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise StorageError(f"{path} holds a {type(key).__name__}, not an Ed25519 device key")
    return DeviceKey(key)
