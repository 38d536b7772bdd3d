"""``ota keys``: the fleet's root key and the online key it delegates to (server/keys.py).

``init`` once, on a machine that can keep the root key offline afterwards; ``rotate`` whenever the
online key must change (scheduled, or because it leaked): cars follow the new delegation without being
re-provisioned, and stop trusting the old key.  Restart the registry to load a rotated key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="fleet signing keys: init, rotate, show")
    sub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="the registry's data dir (OTA_DATA_DIR)")
    i = sub.add_parser("init", parents=[common], help="make the root key (keep it offline), the online key, "
                                                      "delegation v1 and root.pub (provision cars with it)")
    i.add_argument("--root-key-out", type=Path, required=True, help="where to write the root private key (0600)")
    i.add_argument("--days", type=int, default=365, help="how long the delegation is valid")
    i.set_defaults(func=init)
    r = sub.add_parser("rotate", parents=[common], help="new online key and a delegation one version higher; "
                                                        "cars stop trusting the old key")
    r.add_argument("--root-key", type=Path, required=True, help="the root private key (from `ota keys init`)")
    r.add_argument("--days", type=int, default=365, help="how long the new delegation is valid")
    r.set_defaults(func=rotate)
    s = sub.add_parser("show", parents=[common], help="root key id, delegation version, online key id, expiry")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=show)


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if args.data_dir:
        os.environ["OTA_DATA_DIR"] = args.data_dir
    from server.config import Settings

    return Settings()


def _summary(ring) -> dict[str, object]:  # type: ignore[no-untyped-def]
    signed = ring.delegation["signed"]
    return {"root_keyid": ring.root_keyid, "delegation_version": ring.version, "online_keyid": ring.signer.key_id,
            "expires": signed["expires"]}


def init(args: argparse.Namespace) -> int:
    from server.config import InsecureConfiguration
    from server.keys import ROOT_PUBLIC_FILE, init_keys

    settings = _settings(args)
    try:
        ring = init_keys(settings, args.root_key_out, days=args.days)
    except InsecureConfiguration as e:
        print(f"ota keys init: {e}", file=sys.stderr)
        return 2
    print(json.dumps(_summary(ring)))
    print(f"root key written to {args.root_key_out}: move it OFF this machine.  Provision every car with "
          f"{settings.data_dir / ROOT_PUBLIC_FILE} (ota agent --root-key).", file=sys.stderr)
    return 0


def rotate(args: argparse.Namespace) -> int:
    from server.config import InsecureConfiguration
    from server.keys import rotate_online_key

    try:
        ring = rotate_online_key(_settings(args), args.root_key, days=args.days)
    except InsecureConfiguration as e:
        print(f"ota keys rotate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(_summary(ring)))
    print("restart the registry (ota serve) to sign with the new key", file=sys.stderr)
    return 0


def show(args: argparse.Namespace) -> int:
    from server.config import InsecureConfiguration
    from server.keys import load_keyring

    try:
        ring = load_keyring(_settings(args), create=False)
    except InsecureConfiguration as e:
        print(f"ota keys show: {e}", file=sys.stderr)
        return 2
    summary = _summary(ring)
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0
