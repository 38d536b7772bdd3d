"""``ota simulate``: rehearse on N simulated cars against a running registry."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cli.env import ADMIN_TOKEN, ENROLL_TOKEN, SecretError, resolve_secret
from cli.safe_text import safe

HELP = """\
Run N simulated cars in this one process (asyncio).  Each car runs the real agent code over real HTTP to the
registry: it enrols with its own device id and tags (region, hw, network), polls, downloads (resuming after
drops), verifies, decodes, smoke-tests, hot-swaps and reports, behind a simulated link (2G ~100 kbit/s with
frequent drops, 3G ~1 Mbit/s, LTE ~10 Mbit/s, depot Wi-Fi ~50 Mbit/s; offline spells in tunnels and garages),
and its camera keeps calling agent.predict so failed inferences are counted, not assumed.

Shared inside the simulator, because thousands of cars share one machine: one ONNX Runtime session per model
SHA-256 (every car still runs its own smoke test on it), and identical slot files are hard links to one copy.
Cars leave the factory with v1 of the line on disk, as a real fleet is flashed at the factory: its package is
fetched from the registry once (with the admin token), checked, decoded once and written into every car's state
dir as its active slot, so the cars boot it, enrol and get deltas from it.  --initial-install instead lets every
car enrol empty and download and install v1 in full.  Cars keep their state in --state-dir, so a second run
starts from the versions they have on disk (a car that already has a model is not flashed again).

Stops when every car has polled and has nothing left to do, after --duration simulated seconds, or on Ctrl-C;
then prints a summary per network profile and a total line (bytes sent vs full fp32 files and full packages).
"""

INITIAL_INSTALL_HELP = ("cars start empty and download and install v1 in full first (default: v1 is factory-installed "
                        "on every car's disk: fetched from the registry and decoded once, not downloaded by each car)")


def add_initial_install_option(p: argparse.ArgumentParser) -> None:
    """``--initial-install``, worded the same for ``ota simulate`` and bench/fleet.py (both flash v1 by default)."""
    p.add_argument("--initial-install", action="store_true", help=INITIAL_INSTALL_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="run N simulated cars (real agents, simulated links) against a server",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="registry URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--cars", type=int, required=True)
    p.add_argument("--networks", default="mixed", help="mixed (10%% 2G, 25%% 3G, 50%% LTE, 15%% Wi-Fi), 2g, 3g, lte "
                                                        "or wifi")
    p.add_argument("--time-scale", type=float, default=60.0, help="simulated seconds per real second (default 60)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same fleet (ids, tags, links, drops)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end instead of tables")
    p.add_argument("--enroll-token", help="fleet enrollment token (default: OTA_ENROLL_TOKEN, else "
                                          "<--data-dir>/enrollment-token); prefer --enroll-token-file")
    p.add_argument("--enroll-token-file", type=Path, metavar="FILE", help="read the enrollment token from FILE")
    p.add_argument("--admin-token", help="admin token, to fetch the v1 package flashed at the factory (default: "
                                         "OTA_ADMIN_TOKEN, else <--data-dir>/admin-token); prefer --admin-token-file")
    p.add_argument("--admin-token-file", type=Path, metavar="FILE", help="read the admin token from FILE")
    p.add_argument("--data-dir", type=Path, help="a development server's data dir, to read its enrollment and admin "
                                                 "tokens and its root.pub")
    p.add_argument("--root-key", type=Path, help="the fleet's root public key file that cars are provisioned with "
                                                 "(default: <--data-dir>/root.pub)")
    add_initial_install_option(p)
    p.add_argument("--state-dir", type=Path, default=Path(".ota-sim"), help="car state (default .ota-sim)")
    p.add_argument("--line", default="road-signs")
    p.add_argument("--prefix", default="car", help="device id prefix (default car: car-0001, ...)")
    p.add_argument("--poll-interval", type=float, help="simulated seconds between polls (default: 60, or longer so "
                                                          "the fleet sends at most ~60 real polls per second)")
    p.add_argument("--duration", type=float, default=3600.0, help="stop after this many simulated seconds "
                                                                  "(default 3600)")
    p.add_argument("--max-in-flight", type=int, default=24,
                   help="cap on the fleet's requests in flight at the registry (default 24; 0 = no cap): a "
                        "registry on a small machine has few worker threads and pooled connections")
    p.add_argument("--full-duration", action="store_true",
                   help="keep going for the whole --duration even once the fleet is settled (watch a rollout)")
    p.set_defaults(func=cmd_simulate)


def _root_key(args: argparse.Namespace) -> bytes | None:
    from client.trust import read_root_key

    path = args.root_key or (args.data_dir / "root.pub" if args.data_dir else None)
    if path is None:
        return None
    try:
        return read_root_key(path)
    except ValueError as e:
        raise SystemExit(f"ota simulate: {e}") from e


def _enroll_token(args: argparse.Namespace) -> str | None:
    try:
        token = resolve_secret(args.enroll_token, args.enroll_token_file, ENROLL_TOKEN, "enrollment token")
    except SecretError as e:
        raise SystemExit(f"ota simulate: {e}") from e
    if token:
        return token
    if args.data_dir:
        path = args.data_dir / "enrollment-token"
        if not path.is_file():
            raise SystemExit(f"ota simulate: no enrollment token at {path}; pass --enroll-token-file")
        return path.read_text().strip()
    return None


class SimulateError(Exception):
    """Something the operator can fix (a missing token, a line with no v1); printed without a traceback, exit 2."""


def _admin_token(args: argparse.Namespace) -> str | None:
    try:
        token = resolve_secret(args.admin_token, args.admin_token_file, ADMIN_TOKEN, "admin token")
    except SecretError as e:
        raise SimulateError(str(e)) from e
    if token:
        return token
    path = args.data_dir / "admin-token" if args.data_dir else None
    return path.read_text().strip() if path is not None and path.is_file() else None


def _flash_v1(args: argparse.Namespace, specs: list) -> dict[str, Any]:
    """Flash v1 of ``--line`` onto every car in --state-dir that has no model yet (see simulator/factory.py).

    Raises:
        SimulateError: no admin token, or the registry cannot give a v1 package; the message says what to pass.
    """
    from simulator.factory import flash_fleet
    from simulator.registry_admin import AdminError, RegistryAdmin

    token = _admin_token(args)
    if token is None:
        raise SimulateError("cars leave the factory with v1, fetched with the admin token: pass "
                            "--admin-token-file or set OTA_ADMIN_TOKEN (or --data-dir of a development server), or "
                            "--initial-install to have every car download it")
    admin = RegistryAdmin(args.server, token, retry_s=10.0)
    try:
        return flash_fleet(admin, admin.version(args.line, 1), specs, args.state_dir)
    except AdminError as e:
        raise SimulateError(f"cannot flash v1 of {args.line!r} at the factory ({e}); "
                            "pass --initial-install to have every car download it") from e
    finally:
        admin.close()


def cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    from simulator.fleet import FleetSpecError, auto_poll_interval, plan_fleet

    if args.time_scale <= 0 or args.duration <= 0 or (args.poll_interval is not None and args.poll_interval <= 0):
        print("ota simulate: --time-scale, --duration and --poll-interval must be > 0", file=sys.stderr)
        return 2
    try:
        specs = plan_fleet(args.cars, args.networks, args.seed, args.prefix)
    except FleetSpecError as e:
        print(f"ota simulate: {e}", file=sys.stderr)
        return 2
    args.poll_interval = args.poll_interval or auto_poll_interval(args.cars, args.time_scale)
    token = _enroll_token(args)
    if token is None and not any((args.state_dir / s.device_id / "identity.json").exists() for s in specs):
        print("ota simulate: new cars must enrol: pass --enroll-token-file or set OTA_ENROLL_TOKEN (or --data-dir of a "
              "development server)",
              file=sys.stderr)
        return 2
    factory = None
    if not args.initial_install:
        from simulator.factory import describe_flash

        args.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            factory = _flash_v1(args, specs)
        except SimulateError as e:
            print(f"ota simulate: {safe(e)}", file=sys.stderr)  # may echo the registry's error detail
            return 2
        print(describe_flash(factory), file=sys.stderr if args.json else sys.stdout)
    logging.getLogger("client").setLevel(logging.ERROR)  # the live view says what the cars' warnings would
    try:
        asyncio.run(_simulate(args, specs, token, factory))
    except KeyboardInterrupt:
        return 130  # the summary of what happened so far was printed on the way out
    return 0


async def _simulate(args: argparse.Namespace, specs: list, token: str | None, factory: dict | None) -> dict:
    from rich.console import Console

    from simulator.display import LiveView, print_summary
    from simulator.runner import Fleet

    console = None if args.json else Console(highlight=False)
    fleet = Fleet(args.server, specs, args.state_dir, enroll_token=token, root_public_key=_root_key(args),
                  time_scale=args.time_scale,
                  poll_interval_s=args.poll_interval, line=args.line, max_in_flight=args.max_in_flight or None)
    real_timeout = args.duration / args.time_scale
    try:  # Ctrl-C cancels this task: the finally still stops the cars and prints what they did
        with LiveView(console) as view:
            view.headline = f"{len(specs)} cars on {args.server} (line {args.line}, x{args.time_scale:g})"
            await fleet.start()
            if args.full_duration:
                await fleet.wait_for(lambda: False, real_timeout, view.update)
            else:
                await fleet.wait_settled(real_timeout, view.update, since_sim_s=0.0, include_offline=True)
    finally:
        summary = {**fleet.summary(), "factory_image": factory}  # None: --initial-install
        await fleet.stop()
        if console:
            print_summary(console, summary)
        else:
            print(json.dumps(summary, indent=2))
    return summary
