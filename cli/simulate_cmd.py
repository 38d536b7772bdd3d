"""``ota simulate``: rehearse on N simulated cars against a running registry."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HELP = """\
Run N simulated cars in this one process (asyncio).  Each car runs the real agent code over real HTTP to the
registry: it enrols with its own device id and tags (region, hw, network), polls, downloads (resuming after
drops), verifies, decodes, smoke-tests, hot-swaps and reports, behind a simulated link (2G ~100 kbit/s with
frequent drops, 3G ~1 Mbit/s, LTE ~10 Mbit/s, depot Wi-Fi ~50 Mbit/s; offline spells in tunnels and garages),
and its camera keeps calling agent.predict so failed inferences are counted, not assumed.

Shared inside the simulator, because thousands of cars share one machine: one ONNX Runtime session per model
SHA-256 (every car still runs its own smoke test on it), and identical slot files are hard links to one copy.
Cars keep their state in --state-dir, so a second run starts from the versions they have on disk.

Stops when every car has polled and has nothing left to do, after --duration simulated seconds, or on Ctrl-C;
then prints a summary per network profile and a total line (bytes sent vs full fp32 files and full packages).
"""


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
    p.add_argument("--enroll-token", help="fleet enrollment token (default: <--data-dir>/enrollment-token)")
    p.add_argument("--data-dir", type=Path, help="a development server's data dir, to read its enrollment token")
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


def _enroll_token(args: argparse.Namespace) -> str | None:
    if args.enroll_token:
        return str(args.enroll_token)
    if args.data_dir:
        path = args.data_dir / "enrollment-token"
        if not path.is_file():
            raise SystemExit(f"ota simulate: no enrollment token at {path}; pass --enroll-token")
        return path.read_text().strip()
    return None


def cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    from client.simulator.fleet import FleetSpecError, auto_poll_interval, plan_fleet

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
        print("ota simulate: new cars must enrol: pass --enroll-token (or --data-dir of a development server)",
              file=sys.stderr)
        return 2
    logging.getLogger("client").setLevel(logging.ERROR)  # the live view says what the cars' warnings would
    try:
        asyncio.run(_simulate(args, specs, token))
    except KeyboardInterrupt:
        return 130  # the summary of what happened so far was printed on the way out
    return 0


async def _simulate(args: argparse.Namespace, specs: list, token: str | None) -> dict:
    from rich.console import Console

    from client.simulator.display import LiveView, print_summary
    from client.simulator.runner import Fleet

    console = None if args.json else Console(highlight=False)
    fleet = Fleet(args.server, specs, args.state_dir, enroll_token=token, time_scale=args.time_scale,
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
        summary = fleet.summary()
        await fleet.stop()
        if console:
            print_summary(console, summary)
        else:
            print(json.dumps(summary, indent=2))
    return summary
