"""``ota audit``: who did what to what, when, and how it ended (``GET /api/v1/audit``, issue 21).

Filters are the API's: ``--action`` (exact, or a family such as ``rollout.*``), ``--actor``, ``--target``
(``rollout:7``, ``device:car-1``, ``line:road-signs``), ``--outcome``, ``--since``/``--until`` (ISO 8601,
or a look-back such as ``2h``, ``30m``, ``7d``).  ``--all`` follows the cursor to the end.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from cli.admin_cmds import API, CliError, _common, _emit, _run, _token, _verify

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PAGE = 500


def when(text: str, flag: str, now: datetime | None = None) -> str:
    """``--since``/``--until`` as the API's ISO 8601 with a zone: a look-back (``2h``) or a timestamp (UTC if it
    names no zone)."""
    m = _AGO.match(text.strip())
    if m:
        return ((now or datetime.now(UTC)) - timedelta(seconds=int(m[1]) * _UNIT_S[m[2]])).isoformat()
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise CliError(f"{flag} {text!r} must be ISO 8601 (2026-12-07T06:00:00Z) or a look-back such as 2h, "
                       "30m, 7d") from e
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def _pages(args: argparse.Namespace, params: dict[str, Any]) -> list[dict[str, Any]]:
    import httpx

    rows: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=args.server, headers={"Authorization": f"Bearer {_token(args)}"},
                          timeout=60, verify=_verify(args)) as client:
            while True:
                r = client.get(f"{API}/audit", params=params)
                if r.status_code >= 400:
                    try:
                        body = r.json()
                        detail = f"{body.get('error', r.status_code)}: {body.get('detail', r.text)}"
                    except ValueError:
                        detail = r.text[:300]
                    raise CliError(f"GET /audit -> {r.status_code} {detail}")
                rows.extend(r.json())
                cursor = r.headers.get("X-Next-Cursor")
                if not args.all or cursor is None:
                    return rows
                params = {**params, "before": cursor}
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the registry at {args.server}: {e}") from e


def _row(a: dict[str, Any]) -> str:
    detail = {k: v for k, v in a["detail"].items() if k not in ("outcome",) and v not in (None, [], {})}
    return (f"{a['at'][:19]}  {a['actor'][:24]:24}  {a['action']:22}  {(a.get('target') or '-')[:28]:28}  "
            f"{a.get('outcome', 'ok'):8}  {json.dumps(detail, sort_keys=True)[:200]}")


def audit(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": PAGE if args.all else args.limit}
    for key in ("action", "actor", "target", "outcome"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.since:
        params["since"] = when(args.since, "--since")
    if args.until:
        params["until"] = when(args.until, "--until")
    rows = _pages(args, params)
    head = f"{'at (UTC)':19}  {'actor':24}  {'action':22}  {'target':28}  {'outcome':8}  detail"
    return _emit(args, rows, [head] + [_row(a) for a in rows] if rows else ["no audit entries match"])


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="the audit trail: who did what to what, and how it ended")
    p.add_argument("--action", help="e.g. version.publish, rollout.* (a family), dashboard.login")
    p.add_argument("--actor", help="e.g. admin, auto, client:10.0.0.7")
    p.add_argument("--target", help="e.g. rollout:7, device:car-1, line:road-signs")
    p.add_argument("--outcome", choices=("ok", "refused", "failed"))
    p.add_argument("--since", help="ISO 8601 or a look-back: 2h, 30m, 7d")
    p.add_argument("--until", help="ISO 8601 or a look-back")
    p.add_argument("--limit", type=int, default=100, help="newest N entries (default 100)")
    p.add_argument("--all", action="store_true", help="every matching entry (follows the cursor)")
    _common(p)
    p.set_defaults(func=_run(audit))
