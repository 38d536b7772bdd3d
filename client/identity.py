"""The car's identity on disk: device id, device token and the pinned fleet key.

Written once at enrolment (atomically) and read at every start, so a car
keeps trusting the key it first saw (trust on first use, then pinned).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from client.atomic import write_atomic
from client.errors import StorageError


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
