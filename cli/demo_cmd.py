"""``ota demo``: the whole story on the embedded default, in one command.

It starts ``ota serve`` as a child process (SQLite + local blobs in the data
dir), then runs the rehearsal in ``simulator.story`` against it over
HTTP: v1 to a fleet of simulated cars, v2..v5 through staged rollouts, and two
bad versions: one the cars' smoke test refuses, one that installs and then fails
the cars' health window on live frames so they roll it back; both rollouts halt
by themselves at their canary stage.  Then shadow mode (issue 18): a build of v4
that swaps two speed limits in fog is halted in its shadow stage by the agreement
gate, and the real v4 is promoted from shadow by its gates; the summary says which
gate stopped what.  Last, mixed runtimes (issue 20): v5 re-exported at opset 21 goes out with
an opset-17 variant, and the cars on ONNX Runtime 1.14 install the variant.
The server keeps running (dashboards at ``/dashboard``) until Ctrl-C, unless
``--exit-when-done``.  ``running_server`` is reused by the tests and
``bench/fleet.py``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.process import ServedRegistry


class DemoError(RuntimeError):
    """The demo could not run (server did not start, port taken); the message says why."""


@contextmanager
def running_server(data_dir: Path, port: int | None = None, *, codecs: str = "deep", tick_s: float = 1.0,
                   poll_interval_s: int = 60, extra_env: dict[str, str] | None = None,
                   startup_timeout_s: float = 90.0) -> Iterator[ServedRegistry]:
    """``ota serve`` in a child process on ``port`` (a free one if None) with the demo's settings, stopped on exit.

    The caller's ``OTA_*`` settings reach the server (an operator may tune the demo); ``DATABASE_URL``
    does not: the demo is the embedded default, SQLite in the data dir, unless ``extra_env`` names
    ``OTA_DATABASE_URL``.  The server's log is ``<data dir>/server.log``.

    Raises:
        DemoError: the port is taken, or the server exited or did not become ready in time.
    """
    from server.process import ServerDidNotStart, child_env, serve

    env = child_env({"OTA_DEFAULT_CODECS": codecs, "OTA_ROLLOUT_TICK_S": str(tick_s),
                     "OTA_LAST_SEEN_FLUSH_S": str(tick_s), "OTA_POLL_INTERVAL_S": str(poll_interval_s),
                     **(extra_env or {})}, inherit_ota=True)
    data_dir = Path(data_dir).resolve()
    stack = ExitStack()
    try:
        srv = stack.enter_context(serve(data_dir, port=port, env=env, log_path=data_dir / "server.log",
                                        startup_timeout_s=startup_timeout_s))
    except ServerDidNotStart as e:
        raise DemoError(f"{e} (log: {data_dir / 'server.log'}; pick another port with --port if it is taken)") from e
    with stack:
        yield srv


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="start the server and rehearse v1..v5 (and three bad versions) on a simulated fleet",
        description="Start the registry on the embedded default (SQLite + local blobs in --data-dir), publish v1 "
                    "and let simulated cars install it, then publish v2..v5 with staged rollouts (canary, wider, "
                    "everyone; auto-advance), including two bad versions: one that the cars' smoke test refuses, and "
                    "one that passes it, installs, and answers NaN on live camera frames, so the cars' health "
                    "window rolls it back.  Both rollouts halt by themselves at their canary stage.  Then shadow "
                    "mode: a v4 build that confuses two speed limits in fog runs beside the live model on the "
                    "shadow cars' own camera frames and is halted by its agreement gate without ever driving, "
                    "while the real v4 is promoted by its gates.  Last, v5 re-exported at opset 21 goes out with an "
                    "opset-17 variant for the quarter of the cars on ONNX Runtime 1.14.  Prints what happened (and which gate stopped "
                    "what) and leaves the server running until Ctrl-C.")
    p.add_argument("--data-dir", type=Path, default=Path(".ota-data"), help="server data and car state")
    p.add_argument("--cars", type=int, default=200, help="simulated cars (default 200)")
    p.add_argument("--port", type=int, default=8000, help="server port (default 8000)")
    p.add_argument("--time-scale", type=float, default=120.0, help="simulated seconds per real second (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object (simulator summary + rollouts)")
    p.add_argument("--exit-when-done", action="store_true", help="stop the server when the story is told")
    p.set_defaults(func=cmd_demo)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from client.trust import read_root_key
    from simulator.story import DemoOptions, StoryError, run_story

    if args.cars < 10:
        print("ota demo: --cars must be at least 10 (a canary stage needs a few cars)", file=sys.stderr)
        return 2
    logging.getLogger("client").setLevel(logging.ERROR)  # the story says what the cars' warnings would
    signal.signal(signal.SIGTERM, _terminate)  # `kill` stops the cars and the server as Ctrl-C does
    opts = DemoOptions(cars=args.cars, time_scale=args.time_scale, seed=args.seed, quiet=args.json)
    try:
        with running_server(args.data_dir, args.port) as srv:
            if not args.json:
                print(f"registry on {srv.url} (data dir {srv.data_dir}, log {srv.log_path})")
            try:
                report = asyncio.run(run_story(srv.url, srv.admin_token, srv.enrollment_token,
                                               srv.data_dir / "demo-cars", opts,
                                               read_root_key(srv.data_dir / "root.pub")))
            except StoryError as e:
                print(f"ota demo: {e}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("\nota demo: interrupted; stopping the cars and the server", file=sys.stderr)
                return 130
            if args.json:
                print(json.dumps(report, indent=2))
            if args.exit_when_done:
                return 0
            print(f"\nThe server is still running: {srv.url}/dashboard (rollouts, bandwidth).  Ctrl-C stops it.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("\nstopping the server ...")
                return 0
    except DemoError as e:
        print(f"ota demo: {e}", file=sys.stderr)
        return 1
