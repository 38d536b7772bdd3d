"""``ota webhook add|list|rm|deliveries``: the registry's webhooks (issue 21), over the admin API."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.admin_cmds import CliError, _call, _common, _emit, _run


def _row(w: dict[str, Any]) -> str:
    state = "active" if w["active"] else "removed"
    return f"{w['id']:>4}  {state:8s} {w['url']}  events {','.join(w['events'])}  by {w['created_by']}"


def _secret(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        secret = path.read_text().strip()
    except OSError as e:
        raise CliError(f"--secret-file {path} cannot be read ({e.strerror})") from e
    if not secret:
        raise CliError(f"--secret-file {path} is empty")
    return secret


def webhook_add(args: argparse.Namespace) -> int:
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    body: dict[str, Any] = {"url": args.url, "events": events}
    secret = _secret(args.secret_file)
    if secret is not None:
        body["secret"] = secret
    w = _call(args, "POST", "/webhooks", json=body)
    rows = [_row(w)]
    if w.get("secret"):
        rows.append(f"secret (shown once; receivers check X-OTA-Signature with it): {w['secret']}")
    return _emit(args, w, rows)


def webhook_list(args: argparse.Namespace) -> int:
    ws = _call(args, "GET", "/webhooks", params={"removed": "true"} if args.all else None)
    return _emit(args, ws, [_row(w) for w in ws] or ["no webhooks"])


def webhook_rm(args: argparse.Namespace) -> int:
    w = _call(args, "DELETE", f"/webhooks/{args.id}")
    return _emit(args, w, [_row(w)])


def webhook_deliveries(args: argparse.Namespace) -> int:
    ds = _call(args, "GET", f"/webhooks/{args.id}/deliveries", params={"limit": args.limit})
    rows = [f"{d['id']:>6}  {d['event']:20s} {d['state']:9s} attempts {d['attempts']:>2}  "
            f"status {d['last_status_code'] if d['last_status_code'] is not None else '-':>3}  "
            f"{d['last_error'] or ''}" for d in ds]
    return _emit(args, ds, rows or ["no deliveries"])


def register(subparsers: argparse._SubParsersAction) -> None:
    wh = subparsers.add_parser("webhook", help="send rollout, version and drift events to HTTP receivers").add_subparsers(
        dest="webhook_command", metavar="ACTION", required=True)
    a = wh.add_parser("add", help="subscribe a URL to events (deliveries are signed with HMAC-SHA256)")
    a.add_argument("url", help="http(s) URL of the receiver")
    a.add_argument("--events", required=True,
                   help="comma list: rollout.started, rollout.advanced, rollout.paused, rollout.resumed, "
                        "rollout.halted, rollout.completed, rollout.aborted, rollout.rolled_back, "
                        "version.published, device.drift")
    a.add_argument("--secret-file", type=Path, metavar="FILE",
                   help="the signing secret (16-256 printable characters); default: the server makes one and "
                        "prints it once")
    _common(a)
    a.set_defaults(func=_run(webhook_add))
    ls = wh.add_parser("list", help="list webhooks")
    ls.add_argument("--all", action="store_true", help="include removed ones")
    _common(ls)
    ls.set_defaults(func=_run(webhook_list))
    rm = wh.add_parser("rm", help="remove a webhook (pending deliveries are dropped; the log stays)")
    rm.add_argument("id", type=int)
    _common(rm)
    rm.set_defaults(func=_run(webhook_rm))
    dl = wh.add_parser("deliveries", help="a webhook's delivery log, newest first")
    dl.add_argument("id", type=int)
    dl.add_argument("--limit", type=int, default=50)
    _common(dl)
    dl.set_defaults(func=_run(webhook_deliveries))
