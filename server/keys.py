"""The fleet's keys, TUF-style: an offline root key delegates to the online key that signs offers.

    root key (offline, the operator's)  --signs-->  delegation {version, online key, expires}
    online key (the server's data dir)   --signs-->  offers and "no offer" statuses

A car is provisioned with the root *public* key before its first contact (``ota agent --root-key``), so
it never trusts whatever key a first answer presents.  The server holds only the online private key and
the root-signed delegation naming it; it serves the delegation at ``GET /api/v1/keys``.  ``ota keys
rotate`` (on the machine that holds the root key) makes a new online key and a delegation with a higher
version: a car that sees the new version stops trusting the old online key, so rotation is also
revocation, and no car is re-provisioned.

Files (data dir; every secret created 0600 from the start, never chmod-ed afterwards):
``signing-key.pem`` the online key, ``delegation.json`` the root-signed delegation, ``root.pub`` the
root public key (base64, not secret).  ``root-key.pem`` exists in the data dir only on a development
server, which generates everything on first start; a production server refuses to start with it there,
without the others, or with a key file that group or others can read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from server.config import InsecureConfiguration, Settings
from server.files import write_private
from server.security import Signer, canonical_json, verify_envelope

log = logging.getLogger(__name__)

DELEGATION_FILE = "delegation.json"
ROOT_PUBLIC_FILE = "root.pub"
DEV_ROOT_KEY_FILE = "root-key.pem"
DEFAULT_DELEGATION_DAYS = 365


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret atomically, the file created 0600 (never readable by others, not for a moment)."""
    write_private(path, data)


def write_public(path: Path, data: bytes) -> None:
    """Write a non-secret file atomically (0644)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private(path: Path) -> Ed25519PrivateKey:
    """Raises InsecureConfiguration when the file is missing or not an Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise InsecureConfiguration(f"{path} does not exist") from e
    except ValueError as e:
        raise InsecureConfiguration(f"{path} is not a PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InsecureConfiguration(f"{path} is not an Ed25519 private key")
    return key


def load_root_public(path: Path) -> bytes:
    """The raw root public key from a ``root.pub`` file (base64 of the 32 raw bytes)."""
    raw = base64.b64decode(path.read_text().strip(), validate=True)
    Ed25519PublicKey.from_public_bytes(raw)  # raises ValueError for anything else
    return raw


def sign_delegation(root: Ed25519PrivateKey, online_public: bytes, version: int, expires: datetime) -> dict[str, Any]:
    """A root-signed envelope naming ``online_public`` as the key that signs offers (docs/PROTOCOL.md)."""
    signed = {
        "type": "delegation",
        "version": version,
        "root_keyid": key_id(raw_public(root)),
        "online_keys": [{"keyid": key_id(online_public), "public_key": base64.b64encode(online_public).decode()}],
        "expires": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    sig = root.sign(canonical_json(signed))
    return {"signed": signed, "signatures": [{"keyid": signed["root_keyid"], "sig": base64.b64encode(sig).decode()}]}


@dataclass(frozen=True)
class KeyRing:
    """What a running server holds: the online signer and the delegation that vouches for it."""

    signer: Signer
    delegation: dict[str, Any]
    root_public: bytes
    stamp: tuple[int, int] = (0, 0)  # the delegation file's (mtime_ns, size) when loaded: a change means a rotation

    @property
    def root_keyid(self) -> str:
        return key_id(self.root_public)

    @property
    def version(self) -> int:
        return int(self.delegation["signed"]["version"])


def _check_mode(path: Path, production: bool) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        msg = (f"{path} is readable by group or others (mode {mode:o}): the online signing key must be private "
               f"(chmod 600 {path})")
        if production:
            raise InsecureConfiguration(msg)
        log.warning("%s", msg)


def _paths(settings: Settings) -> tuple[Path, Path, Path]:
    return settings.key_path, settings.data_dir / DELEGATION_FILE, settings.data_dir / ROOT_PUBLIC_FILE


def init_keys(settings: Settings, root_key_out: Path, *, days: int = DEFAULT_DELEGATION_DAYS) -> KeyRing:
    """Make a root key (written to ``root_key_out``, to be kept offline), an online key and delegation v1.

    Raises:
        InsecureConfiguration: keys already exist (use ``rotate_online_key``), or the root key would be
            written where one exists.
    """
    key_path, delegation_path, root_pub_path = _paths(settings)
    for existing in (key_path, delegation_path, root_key_out):
        if existing.exists():
            raise InsecureConfiguration(f"{existing} already exists: `ota keys rotate` makes a new online key; "
                                        "move the old files away first to start a new root")
    root = Ed25519PrivateKey.generate()
    online = Ed25519PrivateKey.generate()
    write_secret(root_key_out, private_pem(root))
    write_secret(key_path, private_pem(online))
    delegation = sign_delegation(root, raw_public(online), 1, datetime.now(UTC) + timedelta(days=days))
    write_public(delegation_path, canonical_json(delegation))
    write_public(root_pub_path, base64.b64encode(raw_public(root)) + b"\n")
    return KeyRing(Signer(online), delegation, raw_public(root))


def rotate_online_key(settings: Settings, root_key_path: Path, *, days: int = DEFAULT_DELEGATION_DAYS) -> KeyRing:
    """Replace the online key: a new key and a delegation one version higher, signed by the root key.

    Cars that see the new delegation stop trusting the old online key (rotation is revocation).  A running
    server keeps the key it loaded until it restarts.

    Raises:
        InsecureConfiguration: the root key does not match the data dir's root.pub, or no delegation exists.
    """
    key_path, delegation_path, root_pub_path = _paths(settings)
    root = load_private(root_key_path)
    current = load_keyring(settings, create=False)
    if raw_public(root) != current.root_public:
        raise InsecureConfiguration(f"{root_key_path} is not the root key this registry's {root_pub_path} names")
    online = Ed25519PrivateKey.generate()
    delegation = sign_delegation(root, raw_public(online), current.version + 1,
                                 datetime.now(UTC) + timedelta(days=days))
    write_secret(key_path, private_pem(online))
    write_public(delegation_path, canonical_json(delegation))
    return KeyRing(Signer(online), delegation, current.root_public)


def _dev_bootstrap(settings: Settings) -> None:
    """Development only: make the root key in the data dir (with a warning) and delegate to the online key."""
    key_path, delegation_path, root_pub_path = _paths(settings)
    root_path = settings.data_dir / DEV_ROOT_KEY_FILE
    if root_path.exists():
        root = load_private(root_path)
    else:
        root = Ed25519PrivateKey.generate()
        write_secret(root_path, private_pem(root))
        write_public(root_pub_path, base64.b64encode(raw_public(root)) + b"\n")
        log.warning("development registry: generated a root key in %s; in production the root key is kept "
                    "offline (`ota keys init --root-key-out ...`)", root_path)
    if not key_path.exists():
        write_secret(key_path, private_pem(Ed25519PrivateKey.generate()))
    if not delegation_path.exists():
        online = raw_public(load_private(key_path))
        delegation = sign_delegation(root, online, 1, datetime.now(UTC) + timedelta(days=DEFAULT_DELEGATION_DAYS))
        write_public(delegation_path, canonical_json(delegation))


def load_keyring(settings: Settings, *, create: bool = True) -> KeyRing:
    """Load and check the online key and its delegation; a development server creates what is missing.

    Raises:
        InsecureConfiguration: a production server without the keys, with the root key in its data dir,
            with a key file others can read, or with a delegation that does not name its key, does not
            verify under root.pub, or has expired.
    """
    production = settings.environment == "production"
    key_path, delegation_path, root_pub_path = _paths(settings)
    if production and (settings.data_dir / DEV_ROOT_KEY_FILE).exists():
        raise InsecureConfiguration(f"{settings.data_dir / DEV_ROOT_KEY_FILE} is on the server: the root key "
                                    "must be kept offline; move it off this machine")
    if create and not production:
        _dev_bootstrap(settings)
    missing = [p for p in (key_path, delegation_path, root_pub_path) if not p.exists()]
    if missing:
        raise InsecureConfiguration(
            f"missing {', '.join(str(p) for p in missing)}: create the fleet keys once with "
            f"`ota keys init --data-dir {settings.data_dir} --root-key-out /offline/root-key.pem` "
            "and provision cars with root.pub")
    _check_mode(key_path, production)
    stamp = keys_stamp(settings)
    online = load_private(key_path)
    try:
        root_public = load_root_public(root_pub_path)
        delegation = json.loads(delegation_path.read_bytes())
    except ValueError as e:
        raise InsecureConfiguration(f"{root_pub_path} or {delegation_path} is malformed ({e})") from e
    if not isinstance(delegation, dict) or not verify_envelope(delegation, root_public):
        raise InsecureConfiguration(f"{delegation_path} is not signed by the root key in {root_pub_path}")
    signed = delegation["signed"]
    named = {k.get("keyid") for k in signed.get("online_keys", []) if isinstance(k, dict)}
    if key_id(raw_public(online)) not in named:
        raise InsecureConfiguration(f"{delegation_path} does not name the key in {key_path}: "
                                    "run `ota keys rotate` with the root key")
    expires = datetime.fromisoformat(str(signed.get("expires", "")).replace("Z", "+00:00"))
    if expires <= datetime.now(UTC):
        raise InsecureConfiguration(f"the delegation in {delegation_path} expired at {signed['expires']}: "
                                    "run `ota keys rotate` with the root key")
    return KeyRing(Signer(online), delegation, root_public, stamp)


def keys_stamp(settings: Settings) -> tuple[int, int]:
    """(mtime_ns, size) of the delegation file, (0, 0) when it is missing."""
    try:
        st = (settings.data_dir / DELEGATION_FILE).stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)
