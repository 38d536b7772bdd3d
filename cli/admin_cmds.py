"""Operator commands, HTTP clients of the registry: ``ota publish``, ``ota rollout ...``, ``ota devices ...``,
``ota tokens ...``.

They never import ``server``: everything goes over the documented API
(docs/PROTOCOL.md) with the admin token.  Each takes ``--json`` to print the
server's JSON instead of a table.  Server and token come from flags or the
environment (``OTA_SERVER``, ``OTA_ADMIN_TOKEN``), or the token file a
development server writes into its data directory (``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cli.contract_args import SpecError, add_contract_arguments, contract_spec, probe_file
from cli.env import ADMIN_TOKEN, CA_CERT, DATA_DIR, SERVER, SecretError, env, resolve_secret
from cli.safe_text import safe

API = "/api/v1"


class CliError(Exception):
    """Something the operator can fix; printed without a traceback."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=env(SERVER, "http://127.0.0.1:8000"), help="registry URL (env OTA_SERVER)")
    p.add_argument("--token", help="admin token; visible in the process list: prefer --token-file or "
                                   "OTA_ADMIN_TOKEN (write --token=VALUE if it starts with '-')")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="read the admin token from FILE")
    p.add_argument("--data-dir", default=env(DATA_DIR, ".ota-data"),
                   help="read the token from <data dir>/admin-token when no other is given")
    p.add_argument("--ca-cert", type=Path, default=env(CA_CERT), metavar="FILE",
                   help="PEM file of the CA that signed the registry's https certificate (env OTA_CA_CERT)")
    p.add_argument("--json", action="store_true", help="print the server's JSON")


def _token(args: argparse.Namespace) -> str:
    try:
        token = resolve_secret(args.token, args.token_file, ADMIN_TOKEN, "admin token")
    except SecretError as e:
        raise CliError(str(e)) from e
    if token:
        return token
    path = Path(args.data_dir) / "admin-token"
    if path.exists():
        return path.read_text().strip()
    raise CliError(f"no admin token: pass --token-file, set OTA_ADMIN_TOKEN, or point --data-dir at the server's data "
                   f"directory ({path} does not exist)")


def _verify(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """How to check the registry's certificate: against ``--ca-cert`` when given, else the system's CAs."""
    if not args.ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=str(args.ca_cert))
    except (OSError, ssl.SSLError) as e:
        raise CliError(f"--ca-cert {args.ca_cert} cannot be used ({e}): pass the CA's PEM certificate") from e


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    return _request(args, method, path, **kwargs).json()


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """The registry's answer (an ``httpx.Response``, headers and all).  Raises CliError for 4xx/5xx or no answer."""
    import httpx

    try:
        with httpx.Client(base_url=args.server, headers={"Authorization": f"Bearer {_token(args)}"},
                          timeout=600, verify=_verify(args)) as client:
            r = client.request(method, API + path, **kwargs)
    except httpx.HTTPError as e:
        hint = ("; if your own CA signed the registry's certificate, pass --ca-cert FILE (or set OTA_CA_CERT)"
                if "CERTIFICATE_VERIFY_FAILED" in str(e) and not args.ca_cert else "")
        raise CliError(f"cannot reach the registry at {args.server}: {e}{hint}") from e
    if r.status_code >= 400:
        try:
            body = r.json()
            detail = f"{body.get('error', r.status_code)}: {body.get('detail', r.text)}"
        except ValueError:
            detail = r.text[:300]
        raise CliError(f"{method} {path} -> {r.status_code} {detail}")
    return r


def _emit(args: argparse.Namespace, data: Any, table: str | list[str]) -> int:
    """Print ``data`` as JSON (``--json``; JSON escapes control characters itself) or the table.

    The table's text comes from the registry (tags, reasons, ids cars chose): every row goes through
    ``safe`` so no escape sequence reaches the terminal.  Pass rows as a list so that a newline inside a
    value is escaped too, instead of starting a forged row.
    """
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    rows = table.split("\n") if isinstance(table, str) else table
    print("\n".join(safe(row) for row in rows))
    return 0


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _run(handler):  # type: ignore[no-untyped-def]
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (CliError, SpecError) as e:
            print(f"ota: {safe(e)}", file=sys.stderr)  # error details echo remote text
            return 1
    return wrapped


# ---- publish ------------------------------------------------------------------------------------

def contract_text(c: dict[str, Any]) -> str:
    """One line: what the car does to an image, and what it reads back."""
    def nums(values: list[float]) -> str:
        return ",".join(f"{v:g}" for v in values)

    labels = len(c.get("labels") or [])
    return (f"input {c['input_name']} {c['layout']} {c['height']}x{c['width']} ({c['resize']}), "
            f"{c['channel_order']}, scale 0..{c['scale']:g}, mean {nums(c['mean'])}, std {nums(c['std'])}; "
            f"output {c['output_name']} ({c['output_kind']}), {labels or 'no'} label{'s' if labels != 1 else ''}")


def fidelity_text(f: dict[str, Any]) -> str:
    status = f.get("status", "unmeasured")
    if status == "exact":
        return "exact"
    if status == "unmeasured" or f.get("top1_agreement") is None:
        return "UNMEASURED (no calibration images: publish with --probe)"
    gate = "" if f.get("gate") is None else f", gate {f['gate']:g}"
    return f"top-1 agreement {f['top1_agreement']:.4f} on {f.get('probe_count') or '?'} images{gate}"


def requirements_text(r: dict[str, Any] | None) -> str:
    """What a version needs of a car (issue 20), one line: ``IR 8, ai.onnx opset 17, ONNX Runtime >= 1.18``."""
    if not r:
        return "none recorded (published before compatibility checks: any car)"
    parts = [f"IR {r['ir_version']}"] if r.get("ir_version") else []
    parts += [f"{d} opset {n}" for d, n in sorted((r.get("opsets") or {}).items())]
    if r.get("min_ort_version"):
        parts.append(f"ONNX Runtime >= {r['min_ort_version']}")
    for key, label in (("providers", "provider"), ("arch", "arch")):
        if r.get(key):
            parts.append(f"{label} {' or '.join(r[key])}")
    if r.get("hardware"):
        parts.append(f"hardware {', '.join(r['hardware'])}")
    if r.get("min_memory_mb") is not None:
        parts.append(f">= {r['min_memory_mb']} MB memory")
    return ", ".join(parts) or "nothing"


def version_rows(v: dict[str, Any]) -> list[str]:
    rows = [f"{v['line']} version {v['version']}  source {_kb(v['source_bytes'])}  sha256 {v['source_sha256'][:12]}",
            f"  contract: {contract_text(v['contract'])}",
            f"  needs: {requirements_text(v.get('requirements'))}"]
    if v.get("contract_changed"):
        rows.append(f"  contract changed from version {v['version'] - 1}: {', '.join(v['contract_changed'])}")
    for name, p in sorted(v["packages"].items()):
        rows.append(f"  {name:9s} package {_kb(p['bytes']):>14s}  delta from previous "
                    f"{_kb(p['delta_from_previous']):>12s}  {fidelity_text(p['fidelity'])}")
    for var in v.get("variants") or []:  # issue 20: other exports, for the cars that cannot run this one
        rows.append(f"  variant {var['variant']}  source {_kb(var['source_bytes'])}  sha256 "
                    f"{var['source_sha256'][:12]}  needs: {requirements_text(var.get('requirements'))}")
        for name, p in sorted(var["packages"].items()):
            rows.append(f"    {name:9s} package {_kb(p['bytes']):>12s}  delta from previous "
                        f"{_kb(p['delta_from_previous']):>12s}  {fidelity_text(p['fidelity'])}")
    return rows


def publish(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if not path.is_file():
        raise CliError(f"{path} is not a file")
    spec = contract_spec(args)
    form = {k: str(v) for k, v in {"notes": args.notes, "publisher": args.publisher or os.environ.get("USER"),
                                   "codecs": args.codecs, "min_agreement": args.min_agreement,
                                   "variant_of": args.variant_of}.items()
            if v is not None}
    if spec is not None:
        form["contract"] = json.dumps(spec)
    if args.requires:
        form["requirements"] = args.requires
    files = {"file": (path.name, path.read_bytes())}
    if args.probe:
        files["probe"] = ("probe.npz", probe_file(Path(args.probe)))
    v = _call(args, "POST", f"/lines/{args.line}/versions", files=files, data=form)
    return _emit(args, v, version_rows(v))


def versions(args: argparse.Namespace) -> int:
    vs = _call(args, "GET", f"/lines/{quote(args.line, safe='')}/versions")
    rows = [row for v in vs for row in version_rows(v)] or [f"line {args.line} has no versions"]
    return _emit(args, vs, rows)


# ---- rollouts -----------------------------------------------------------------------------------

def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r} must look like key=value")
        out[key] = value
    return out


def _stage(text: str) -> dict[str, Any]:
    """PERCENT[:SOAK_S[:SUCCESS_PCT[:MIN_INSTALLED]]] e.g. 1:3600:95:5 ; SUCCESS_PCT omitted = manual advance;
    MIN_INSTALLED omitted = the server's default (1 for the first live stage, 0 later)."""
    parts = text.split(":")
    try:
        if len(parts) > 4:
            raise ValueError(text)
        stage: dict[str, Any] = {"percent": float(parts[0])}
        if len(parts) > 1 and parts[1]:
            stage["min_soak_s"] = float(parts[1])
        if len(parts) > 2 and parts[2]:
            stage["success_threshold_pct"] = float(parts[2])
        if len(parts) > 3 and parts[3]:
            stage["min_installed"] = int(parts[3])
    except ValueError as e:
        raise CliError(f"stage {text!r} must be PERCENT[:SOAK_S[:SUCCESS_PCT[:MIN_INSTALLED]]], e.g. 10:600:95 "
                       "or 1:600:95:5") from e
    return stage


def _shadow(text: str) -> dict[str, Any]:
    """PERCENT:SECONDS[:SAMPLE_EVERY] e.g. 10:3600 or 10:3600:5 (issue 18)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError(text)
        shadow: dict[str, Any] = {"percent": float(parts[0]), "min_s": float(parts[1])}
        if len(parts) == 3:
            shadow["sample_every"] = int(parts[2])
    except ValueError as e:
        raise CliError(f"--shadow {text!r} must be PERCENT:SECONDS[:SAMPLE_EVERY], e.g. 10:3600 or 10:3600:5") from e
    return shadow


def _window(text: str) -> dict[str, str]:
    """'DAYS HH:MM-HH:MM ZONE' e.g. 'mon-fri 01:00-05:00 Europe/Berlin' (issue 21); the registry checks the parts."""
    parts = text.split()
    if len(parts) != 3 or parts[1].count("-") != 1:
        raise CliError(f"--window {text!r} must be 'DAYS HH:MM-HH:MM ZONE', e.g. 'mon-fri 01:00-05:00 Europe/Berlin' "
                       "(an end at or before the start closes the next day)")
    start, end = parts[1].split("-")
    return {"days": parts[0], "start": start, "end": end, "tz": parts[2]}


def _schedule_rows(r: dict[str, Any]) -> list[str]:
    """The start and windows, and when the rollout next opens (``ota rollout show``)."""
    if not r.get("starts_at") and not r.get("windows"):
        return []
    rows = []
    if r.get("starts_at"):
        rows.append(f"  starts at {r['starts_at']}")
    for w in r.get("windows") or []:
        rows.append(f"  window {w['days']} {w['start']}-{w['end']} {w['tz']}")
    if r["state"] in ("running", "paused"):
        nxt = r.get("next_open")
        rows.append("  open now" if r.get("open") else
                    f"  closed: next opens {nxt}" if nxt else "  closed: opens in none of the next two weeks")
    return rows


def _value(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _quality_rows(q: dict[str, Any] | None) -> list[str]:
    """The shadow settings, the gates with their current values, and the verdict (``ota rollout show``)."""
    if not q or (not q.get("gates") and not q.get("shadow")):
        return []
    rows = []
    if q.get("shadow"):
        sh = q["shadow"]
        rows.append(f"  shadow: {sh['percent']:g}% for at least {sh['min_s']:g}s, 1 frame in {sh['sample_every']}, "
                    f"cpu share {sh['max_cpu_share']:g}")
    sums = q.get("summaries") or {}
    for kind in ("shadow", "live"):
        f = sums.get(kind)
        if f:
            rows.append(f"  {kind}: {f['frames']:,} frames from {f['cars']} cars  agreement {_value(f['agreement'])}  "
                        f"p99 {_value(f['latency_p99_ms'])} ms (x{_value(f['latency_p99_ratio'])})  "
                        f"class shift {_value(f['class_shift'])}  errors {_value(f['error_rate'])}")
    judged = sums.get("shadow") if (q.get("shadow") and sums.get("shadow") and not sums.get("live")) else sums.get("live")
    from protocol.quality import parse_gate  # the CLI's own dependency-free half of the contract

    for text in q.get("gates") or []:
        gate = parse_gate(text)
        failing = "  FAILING" if q["verdict"].get("failing") == str(gate) else ""
        rows.append(f"  gate {text}: now {_value((judged or {}).get(gate.metric))}{failing}")
    v = q["verdict"]
    state = {True: "passed", False: "FAILED", None: "pending"}[v.get("passed")]
    rows.append(f"  verdict: {state} ({v.get('describe')})")
    return rows


def _rollout_table(r: dict[str, Any]) -> list[str]:
    sel = ",".join(f"{k}={v}" for k, v in r["selector"].items()) or "all devices"
    head = (f"rollout {r['id']}  {r['line']} -> v{r['target_version']} ({r['codec']})"
            f"{'  ROLLBACK' if r['rollback'] else ''}  {r['state']}  stage {r['current_stage'] + 1}/{len(r['stages'])}"
            f"  [{sel}]")
    rows = [head] + ([f"  reason: {r['reason']}"] if r.get("reason") else [])
    for s in r["stages"]:
        marker = ">" if s["position"] == r["current_stage"] else " "
        counts = " ".join(f"{k}={v}" for k, v in sorted(s["counts"].items())) or "-"
        auto = f"auto at {s['success_threshold_pct']}%" if s["success_threshold_pct"] is not None else "manual"
        mode = "  SHADOW" if s.get("mode") == "shadow" else ""
        need = f"  needs {s['min_installed']} installed" if s.get("min_installed") else ""
        rows.append(f" {marker} stage {s['position'] + 1}: {s['percent']:g}%{mode}  soak {s['min_soak_s']:g}s  {auto}"
                    f"{need}  assigned {s['assigned']}  {counts}")
    return rows + _schedule_rows(r) + _quality_rows(r.get("quality"))


def rollout_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"line": args.line, "version": args.version, "selector": _pairs(args.select, "selector"),
                            "stages": [_stage(s) for s in args.stage] if args.stage else [{"percent": 100}]}
    if args.codec:
        body["codec"] = args.codec
    if args.allow_unmeasured:
        body["allow_unmeasured"] = True
    if args.error_pct is not None:
        body["error_threshold_pct"] = args.error_pct
    if args.error_count is not None:
        body["error_threshold_count"] = args.error_count
    if args.shadow:
        body["shadow"] = _shadow(args.shadow)
    if args.gate:
        body["gates"] = list(args.gate)
    if args.in_progress_timeout is not None:  # 0: never (a car mid-update is never counted as stuck)
        body["in_progress_timeout_s"] = args.in_progress_timeout or None
    if args.starts_at:
        body["starts_at"] = args.starts_at
    if args.window:
        body["windows"] = [_window(w) for w in args.window]
    r = _call(args, "POST", "/rollouts", json=body)
    return _emit(args, r, _rollout_table(r))


def rollout_list(args: argparse.Namespace) -> int:
    rs = _call(args, "GET", "/rollouts", params={"line": args.line} if args.line else None)
    table = [f"{r['id']:>5}  {r['line']:20s} v{r['target_version']:<4} {r['state']:10s} "
             f"stage {r['current_stage'] + 1}/{len(r['stages'])}{'  rollback' if r['rollback'] else ''}"
             for r in rs] or ["no rollouts"]
    return _emit(args, rs, table)


def rollout_show(args: argparse.Namespace) -> int:
    r = _call(args, "GET", f"/rollouts/{args.id}")
    acc = _call(args, "GET", f"/accounting/rollouts/{args.id}")
    t = acc["totals"]
    savings = "" if t["savings_vs_fp32"] is None else \
        f"  savings vs fp32 {t['savings_vs_fp32']:.1%}, vs full package {t['savings_vs_package']:.1%}"
    table = _rollout_table(r) + [f"  bytes sent {_kb(t['bytes_sent'])} in {t['requests']} requests "
                                 f"({t['resumes']} resumed), {t['devices_updated']} cars updated{savings}"]
    return _emit(args, {"rollout": r, "accounting": acc}, table)


def rollout_action(args: argparse.Namespace) -> int:
    r = _call(args, "POST", f"/rollouts/{args.id}/{args.action}")
    return _emit(args, r, _rollout_table(r))


def rollout_rollback(args: argparse.Namespace) -> int:
    r = _call(args, "POST", f"/rollouts/{args.id}/rollback", json={"version": args.version})
    return _emit(args, r, _rollout_table(r))


# ---- releases ------------------------------------------------------------------------------------

def _release_rows(r: dict[str, Any]) -> list[str]:
    members = ", ".join(f"{m['line']} v{m['version']}" for m in r["members"])
    return [f"{r['name']:24s} {members}  by {r['created_by'] or '-'} at {r['created_at']}"]


def release_create(args: argparse.Namespace) -> int:
    pins: dict[str, int] = {}
    for line, text in _pairs(args.pin, "--pin").items():
        try:
            pins[line] = int(text)
        except ValueError:
            raise CliError(f"--pin {line}={text}: the version must be a number, e.g. --pin {line}=7") from None
    if not pins:
        raise CliError("a release pins at least one line: --pin LINE=VERSION (repeatable)")
    body: dict[str, Any] = {"name": args.name, "pins": pins}
    if args.notes:
        body["notes"] = args.notes
    r = _call(args, "POST", "/releases", json=body)
    return _emit(args, r, _release_rows(r))


def release_list(args: argparse.Namespace) -> int:
    rs = _call(args, "GET", "/releases")
    return _emit(args, rs, [row for r in rs for row in _release_rows(r)] or ["no releases"])


def release_show(args: argparse.Namespace) -> int:
    r = _call(args, "GET", f"/releases/{quote(args.name, safe='')}")
    return _emit(args, r, _release_rows(r) + [f"  {m['line']} v{m['version']}  model {m['source_sha256']}"
                                              for m in r["members"]])


# ---- devices ------------------------------------------------------------------------------------

DEVICES_PAGE = 1000  # the registry's largest page: ``--all`` fetches this many per request


def devices_list(args: argparse.Namespace) -> int:
    """One page of the inventory (``--limit``), or with ``--all`` every page, following ``X-Next-Cursor``."""
    params: list[tuple[str, str]] = [("tag", f"{k}={v}") for k, v in _pairs(args.tag, "tag").items()]
    if args.drift:
        params.append(("drift", "true"))
    for name in ("line", "version", "state", "seen_since", "q"):
        if getattr(args, name) is not None:
            params.append((name, str(getattr(args, name))))
    params.append(("limit", str(DEVICES_PAGE if args.all else args.limit)))
    ds: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        r = _request(args, "GET", "/devices", params=params + ([("cursor", cursor)] if cursor else []))
        ds.extend(r.json())
        cursor = r.headers.get("X-Next-Cursor")
        if not args.all or cursor is None:
            break
    table = [
        f"{d['device_id']:24s} {_lines_text(d):28s}"
        f"  {'DRIFT ' if d['drift'] else ''}{','.join(f'{k}={v}' for k, v in d['tags'].items())}"
        f"  seen {d['last_seen_at'] or 'never'}" for d in ds] or ["no devices"]
    if cursor is not None and not args.json:
        table.append(f"(more: --all, or the next page starts after {ds[-1]['device_id']})")
    return _emit(args, ds, table)


def _lines_text(d: dict[str, Any]) -> str:
    """Every line a device runs, ``signs v3, lanes v1`` (issue 20); ``-`` before its first poll."""
    runs = d.get("lines") or []
    return ", ".join(f"{r['line']} v{r['running_version'] if r['running_version'] is not None else '-'}"
                     for r in runs) or "-"


def devices_show(args: argparse.Namespace) -> int:
    d = _call(args, "GET", f"/devices/{quote(args.device_id, safe='')}")
    tags = ",".join(f"{k}={v}" for k, v in d["tags"].items()) or "-"
    rows = [f"{d['device_id']}  tags {tags}  last seen {d['last_seen_at']}"]
    for r in d.get("lines") or []:
        rows.append(f"  line {r['line']}  running v{r['running_version']}  reported v{r['reported_version']}"
                    + (f"  DRIFT: {r['drift_detail']}" if r["drift"] else ""))
    if d.get("decommissioned_at") or d.get("revoked_at"):
        rows.append(f"  {'DECOMMISSIONED' if d.get('decommissioned_at') else 'REVOKED'} at "
                    f"{d.get('decommissioned_at') or d.get('revoked_at')}")
    if d.get("reauthorized_until"):
        rows.append(f"  reauthorized: its next enrolment until {d['reauthorized_until']} may replace its key")
    for u in d["updates"]:
        rows.append(f"  rollout {u['rollout_id']}  v{u['target_version']} ({u['codec']})  {u['state']}"
                    f"{'  ' + u['reason'] if u['reason'] else ''}  reported {_kb(u['bytes_reported'])}")
    return _emit(args, d, rows)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str, flag: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` -> seconds."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    try:
        value = int(number)
    except ValueError as e:
        raise CliError(f"{flag} {text!r} must be a number with an optional unit s, m, h or d (e.g. 7d)") from e
    if value <= 0:
        raise CliError(f"{flag} {text!r} must be positive")
    return value * _UNITS[unit]


def devices_action(args: argparse.Namespace) -> int:
    """Revoke (token and key stop working at once), decommission (also out of rollouts) or reauthorize
    (the next enrolment of the id, once, before the deadline, may replace its key)."""
    body = {"valid_s": _duration_s(args.valid, "--valid")} if args.action == "reauthorize" else None
    d = _call(args, "POST", f"/devices/{args.device_id}/{args.action}", json=body)
    if args.action == "reauthorize":
        table = (f"{d['device_id']} reauthorized: its next enrolment (with an enrolment token) until "
                 f"{d['reauthorized_until']} may replace its key")
    else:
        past = "revoked" if args.action == "revoke" else "decommissioned"
        table = f"{d['device_id']} {past} at {d['decommissioned_at'] or d['revoked_at']}"
    return _emit(args, d, table)


# ---- enrolment tokens -----------------------------------------------------------------------------

def _token_row(t: dict[str, Any]) -> str:
    uses = f"{t['uses']}/{t['max_uses']}" if t["max_uses"] is not None else f"{t['uses']}/unlimited"
    state = "REVOKED" if t["revoked_at"] else f"expires {t['expires_at'] or 'never'}"
    tags = ",".join(f"{k}={v}" for k, v in t["tags"].items()) or "-"
    return f"{t['id']:>4}  {t['name']:20s} uses {uses:12s} {state:34s} tags {tags}"


def tokens_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "tags": _pairs(args.tag, "tag")}
    if args.uses is not None:
        body["max_uses"] = args.uses
    if args.expires is not None:
        body["expires_in_s"] = _duration_s(args.expires, "--expires")
    t = _call(args, "POST", "/enrollment-tokens", json=body)
    return _emit(args, t, f"{_token_row(t)}\ntoken (shown once, only its hash is stored): {t['token']}")


def tokens_list(args: argparse.Namespace) -> int:
    ts = _call(args, "GET", "/enrollment-tokens")
    return _emit(args, ts, "\n".join(_token_row(t) for t in ts) or "no enrolment tokens")


def tokens_revoke(args: argparse.Namespace) -> int:
    t = _call(args, "POST", f"/enrollment-tokens/{args.id}/revoke")
    return _emit(args, t, _token_row(t))


def _register_identity(subparsers: argparse._SubParsersAction, dv: argparse._SubParsersAction) -> None:
    """``ota devices reauthorize|revoke|decommission`` and ``ota tokens create|list|revoke`` (issue 15)."""
    for action, text in (("revoke", "refuse the device's token and key at once (reauthorize brings it back)"),
                         ("decommission", "revoke the device and drop it from the inventory and rollouts"),
                         ("reauthorize", "let the next enrolment of this id replace its key, once")):
        a = dv.add_parser(action, help=text)
        a.add_argument("device_id")
        if action == "reauthorize":
            a.add_argument("--valid", default="1h", help="how long the permission lasts: 90s, 15m, 1h, 7d")
        _common(a)
        a.set_defaults(func=_run(devices_action), action=action)

    tk = subparsers.add_parser("tokens", help="scoped enrolment tokens").add_subparsers(
        dest="tokens_command", metavar="ACTION", required=True)
    c = tk.add_parser("create", help="mint an enrolment token (printed once)")
    c.add_argument("--name", default="enrolment", help="a label for the audit log and `ota tokens list`")
    c.add_argument("--uses", type=int, help="how many enrolments it admits (default: unlimited)")
    c.add_argument("--expires", help="lifetime: 90s, 15m, 12h, 7d (default: never)")
    c.add_argument("--tag", action="append", metavar="TAG=VALUE", help="tag forced onto devices it enrols")
    _common(c)
    c.set_defaults(func=_run(tokens_create))
    ls = tk.add_parser("list", help="list enrolment tokens and their uses")
    _common(ls)
    ls.set_defaults(func=_run(tokens_list))
    rv = tk.add_parser("revoke", help="refuse a token from now on")
    rv.add_argument("id", type=int)
    _common(rv)
    rv.set_defaults(func=_run(tokens_revoke))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("publish", help="publish an ONNX model as a new version of a line")
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--line", default="road-signs")
    p.add_argument("--notes")
    p.add_argument("--publisher")
    p.add_argument("--codecs", help="comma list, default: the server's (e.g. lossless,deep)")
    p.add_argument("--min-agreement", type=float,
                   help="the line's gate for lossy codecs (default 0.99 once the line has --probe images)")
    p.add_argument("--probe", metavar="DIR|FILE.npz",
                   help="calibration images for the line: a folder of JPEG/PNG files (any sizes) or an .npz of "
                        "uint8 images; uploaded once, later versions reuse them; a new --probe replaces them")
    p.add_argument("--requires", metavar="JSON",
                   help="what a car must have beyond what the model says, e.g. '{\"min_ort_version\": \"1.18\", "
                        "\"providers\": [\"CUDAExecutionProvider\"]}' (fields: min_ort_version, providers, arch, "
                        "hardware, min_memory_mb, ir_version, opsets); cars that do not meet it are never offered "
                        "the version")
    p.add_argument("--variant-of", type=int, metavar="N",
                   help="publish another export of version N instead of a new version (e.g. an opset-17 export "
                        "for cars on an older ONNX Runtime); same version number and contract, its own "
                        "requirements; each car is offered the export it can run")
    add_contract_arguments(p)
    _common(p)
    p.set_defaults(func=_run(publish))

    vs = subparsers.add_parser("versions", help="a line's versions: contract, packages and their fidelity")
    vs.add_argument("--line", default="road-signs")
    _common(vs)
    vs.set_defaults(func=_run(versions))

    ro = subparsers.add_parser("rollout", help="create and steer staged rollouts").add_subparsers(
        dest="rollout_command", metavar="ACTION", required=True)
    c = ro.add_parser("create", help="start a staged rollout of a version")
    c.add_argument("--line", default="road-signs")
    c.add_argument("--version", type=int, required=True)
    c.add_argument("--codec", help="default: the smallest package that passed the line's gate (else lossless)")
    c.add_argument("--allow-unmeasured", action="store_true",
                   help="ship a lossy package that was never measured on the line's images, or is below its gate")
    c.add_argument("--select", action="append", metavar="TAG=VALUE", help="device tag selector (repeatable)")
    c.add_argument("--stage", action="append", metavar="PCT[:SOAK_S[:SUCCESS_PCT[:MIN_INSTALLED]]]",
                   help="cumulative stage, e.g. --stage 1:600:95 --stage 10:600:95 --stage 100 (repeatable); "
                        "MIN_INSTALLED: installs it needs before auto-advancing (default 1 for the first, 0 later)")
    c.add_argument("--in-progress-timeout", type=float, metavar="SECONDS",
                   help="a car offered/downloading/verifying for longer counts as failed (stuck); default 3600, "
                        "0: never")
    c.add_argument("--error-pct", type=float, help="halt when this percent of a stage's devices failed")
    c.add_argument("--error-count", type=int, help="halt when this many of a stage's devices failed")
    c.add_argument("--shadow", metavar="PCT:SECONDS[:SAMPLE_EVERY]",
                   help="begin with a shadow stage: PCT%% of the cars load the version beside the live one and "
                        "compare for at least SECONDS, on 1 frame in SAMPLE_EVERY (default 10)")
    c.add_argument("--gate", action="append", metavar="EXPR",
                   help="quality gate, e.g. agreement>=0.97, latency_p99_ratio<=1.3, min_frames=5000 (repeatable)")
    c.add_argument("--starts-at", metavar="ISO8601",
                   help="make no offers before this time, e.g. 2026-12-24T01:00:00+01:00 (a zone is required)")
    c.add_argument("--window", action="append", metavar="'DAYS HH:MM-HH:MM ZONE'",
                   help="maintenance window, e.g. 'mon-fri 01:00-05:00 Europe/Berlin' (repeatable): stages advance "
                        "and new offers are made only inside one; DAYS: mon..sun, ranges, lists (sat,sun) or daily")
    _common(c)
    c.set_defaults(func=_run(rollout_create))
    ls = ro.add_parser("list", help="list rollouts")
    ls.add_argument("--line")
    _common(ls)
    ls.set_defaults(func=_run(rollout_list))
    sh = ro.add_parser("show", help="a rollout's stages, per-state counts and bytes")
    sh.add_argument("id", type=int)
    _common(sh)
    sh.set_defaults(func=_run(rollout_show))
    for action in ("pause", "resume", "advance", "abort"):
        a = ro.add_parser(action, help=f"{action} a rollout")
        a.add_argument("id", type=int)
        _common(a)
        a.set_defaults(func=_run(rollout_action), action=action)
    rb = ro.add_parser("rollback", help="abort a rollout and send its cars back to an earlier version")
    rb.add_argument("id", type=int)
    rb.add_argument("--version", type=int, help="default: the stable version before the rollout")
    _common(rb)
    rb.set_defaults(func=_run(rollout_rollback))

    rl = subparsers.add_parser("release", help="releases: versions of several lines a car runs together").add_subparsers(
        dest="release_command", metavar="ACTION", required=True)
    c = rl.add_parser("create", help="name a set of versions, one per line (every pinned version must exist)")
    c.add_argument("name")
    c.add_argument("--pin", action="append", metavar="LINE=VERSION", help="e.g. --pin signs=7 --pin lanes=3")
    c.add_argument("--notes")
    _common(c)
    c.set_defaults(func=_run(release_create))
    ls = rl.add_parser("list", help="list releases")
    _common(ls)
    ls.set_defaults(func=_run(release_list))
    sh = rl.add_parser("show", help="a release's members")
    sh.add_argument("name")
    _common(sh)
    sh.set_defaults(func=_run(release_show))

    dv = subparsers.add_parser("devices", help="device inventory").add_subparsers(
        dest="devices_command", metavar="ACTION", required=True)
    dl = dv.add_parser("list", help="list enrolled devices")
    dl.add_argument("--tag", action="append", metavar="TAG=VALUE")
    dl.add_argument("--drift", action="store_true", help="only devices whose report and poll disagree")
    dl.add_argument("--line", help="only cars running this line")
    dl.add_argument("--version", type=int, help="only cars running this version (of --line if given)")
    dl.add_argument("--state", help="only cars whose newest offer is in this state (installed, failed, ...)")
    dl.add_argument("--seen-since", dest="seen_since", metavar="ISO8601", help="last seen at or after (with zone)")
    dl.add_argument("--search", dest="q", metavar="TEXT", help="part of the device id")
    dl.add_argument("--limit", type=int, default=100, help="devices per page (1..1000; default 100)")
    dl.add_argument("--all", action="store_true", help="every matching device (follows the cursor)")
    _common(dl)
    dl.set_defaults(func=_run(devices_list))
    ds = dv.add_parser("show", help="one device and its recent updates")
    ds.add_argument("device_id")
    _common(ds)
    ds.set_defaults(func=_run(devices_show))
    _register_identity(subparsers, dv)
