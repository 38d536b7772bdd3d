"""The agent daemon: the whole agent, in a process of its own, driving a ``ModelHost``'s live session.

``client.modelhost.ModelHost`` starts it (``python -m client.agentd``) with two
socket pairs: ``rpc`` (this side asks the application's process to load, smoke
test, swap or free a session, or run, read and stop a comparison:
``RemoteSwapper``) and ``ctl`` (the application asks: a standalone install, a
health check, status, stop).  Everything else is the ordinary ``Agent``, on its
own GIL and at a lower CPU priority: the car application's process holds the
camera, the sessions and a shadow comparison's thread, and nothing more.  This
side keeps the comparison's books as the in-process agent does: it pulls the
cumulative summary every ``report_every_s`` into the journal (a daemon that
does not poll pulls between the application's requests), and judges a live
plan's rollback on it.

The daemon exits when the application's process goes (end of input on either
socket), so a SIGKILLed application leaves no orphan.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from client.agent import Agent
from client.errors import AgentError, SmokeTestFailed
from client.hotswap import ModelSource
from client.manifest import Smoke
from client.modelhost import config_from_json
from protocol.contract import InputContract
from protocol.quality import QualityPlan, QualitySummary

log = logging.getLogger("client.agentd")


@dataclass(frozen=True)
class RemoteModel:
    """A session loaded in the application's process, known here by its handle."""

    handle: int
    version: int
    model_sha256: str


class HostGone(AgentError):
    """The application's process closed its end: there is no session left to update."""


#: Seconds between two looks for a due quality summary while a daemon that does not poll waits for requests.
QUALITY_PULL_S = 0.25


class RemoteComparison:
    """A comparison running in the application's process (``client.shadow.Comparator`` there); what it is,
    and its summary pulled over the socket on ``snapshot``."""

    def __init__(self, swapper: RemoteSwapper, kind: str, beside_version: int, live_version: int) -> None:
        self._swapper = swapper
        self.kind = kind
        self.beside_version = beside_version
        self.live_version = live_version

    def snapshot(self) -> QualitySummary:
        """The cumulative summary so far, validated here as any summary from outside this process.

        Raises:
            HostGone: the application's process is gone.
            AgentError: the application runs no comparison (it stopped it).
            MalformedMessage: the application sent something that is not a summary.
        """
        d = self._swapper._call("comparison_snapshot")
        if d is None:
            raise AgentError(f"the application runs no comparison of v{self.beside_version}")
        return QualitySummary.from_dict(d)


class RemoteSwapper:
    """``Swapper`` over the ``rpc`` socket: each call is one request to the ``ModelHost``'s thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # the build thread and the event loop may both ask
        self._current: RemoteModel | None = None
        self._fallback: RemoteModel | None = None
        self._comparison: RemoteComparison | None = None

    def _call(self, op: str, **kw: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((op, kw))
                reply = self._conn.recv()
            except (EOFError, OSError) as e:
                raise HostGone("the car application's process is gone") from e
        if reply[0] == "ok":
            return reply[1]
        if reply[1] == "SmokeTestFailed":
            raise SmokeTestFailed(reply[2])
        raise AgentError(f"model host: {reply[1]}: {reply[2]}")

    @property
    def fallback(self) -> RemoteModel | None:
        return self._fallback

    def load_sync(self, model: ModelSource, *, version: int, model_sha256: str,
                  contract: InputContract) -> RemoteModel:
        return self._load(model, version=version, model_sha256=model_sha256, contract=contract, smoke=None)

    def load_and_smoke_sync(self, model: ModelSource, *, version: int, model_sha256: str,
                            contract: InputContract, smoke: Smoke) -> RemoteModel:
        return self._load(model, version=version, model_sha256=model_sha256, contract=contract, smoke=smoke)

    async def load_and_smoke(self, model: ModelSource, *, version: int, model_sha256: str,
                             contract: InputContract, smoke: Smoke) -> RemoteModel:
        return await asyncio.to_thread(self.load_and_smoke_sync, model, version=version,
                                       model_sha256=model_sha256, contract=contract, smoke=smoke)

    def _load(self, model: ModelSource, *, smoke: Smoke | None, contract: InputContract, **kw: Any) -> RemoteModel:
        if isinstance(model, bytes):
            raise AgentError("a model host loads from a file the agent has written, not from bytes")
        # the contract travels as its JSON form: the host validates it again (InputContract.from_dict)
        handle = self._call("load", path=str(model), smoke=smoke, contract=contract.to_dict(), **kw)
        return RemoteModel(handle, kw["version"], kw["model_sha256"])

    def swap(self, new: RemoteModel, *, health_window: bool = True) -> RemoteModel | None:
        self._call("swap", handle=new.handle, health_window=health_window)
        old, self._current = self._current, new
        self._fallback = old if health_window else None
        return old

    def safe_to_swap(self) -> bool:
        """The application's ``safe_to_swap`` rule, asked in its process (issue 21); True without one.

        Raises:
            HostGone, AgentError: the application is gone or its rule raised (the agent takes it as 'not now').
        """
        return bool(self._call("safe_to_swap"))

    def health(self) -> tuple[int, int]:
        calls, errors = self._call("health")
        return int(calls), int(errors)

    def close_health_window(self) -> None:
        self._call("close_health_window")
        self._fallback = None

    @property
    def comparator(self) -> RemoteComparison | None:
        return self._comparison

    def start_comparison(self, beside: RemoteModel, plan: QualityPlan, *, kind: str, line: str,
                         rollout_id: int | None, resume: QualitySummary | None = None) -> RemoteComparison:
        """Run ``beside`` next to the live model in the application (stopping any comparison there).

        A ``shadow`` candidate must be a model loaded and not swapped in; from then on the application
        will not swap it in (only a new load of its slot, on promotion, goes live).  A ``live`` baseline is
        the fallback of the open health window.

        Raises:
            HostGone: the application's process is gone.
            AgentError: the application refused (no live model, or a handle it may not compare).
        """
        self._comparison = None
        live_version = self._call("start_comparison", handle=beside.handle, kind=kind, plan=plan.to_dict(),
                                  line=line, rollout_id=rollout_id,
                                  resume=None if resume is None else resume.to_dict())
        self._comparison = RemoteComparison(self, kind, beside.version, int(live_version))
        return self._comparison

    def stop_comparison(self) -> QualitySummary | None:
        """Stop the application's comparison (it frees a shadow candidate there); its final summary, if one ran."""
        self._comparison = None
        final = self._call("stop_comparison")
        return None if final is None else QualitySummary.from_dict(final)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status(agent: Agent) -> dict[str, Any]:
    return {"running_version": agent.running_version, "agent_state": agent.agent_state,
            "swap_waiting": agent.swap_waiting,
            "last_install": dict(agent.last_install), "pid": os.getpid(), "peak_rss_mb": round(_rss_mb(), 1)}


async def serve(agent: Agent, ctl: Connection, *, poll: bool) -> None:
    """Boot, say ready, then answer the application's requests (and poll, if asked) until stopped."""
    await agent.start()
    ctl.send(status(agent))
    loop = asyncio.get_running_loop()
    poller = asyncio.ensure_future(agent.run_forever()) if poll else None
    try:
        while True:
            try:
                if not poll and not await loop.run_in_executor(None, ctl.poll, QUALITY_PULL_S):
                    # no poller to pull a comparison's summary when due, or to swap a waiting update in once
                    # the application allows it (issue 21): do both between requests
                    await agent.report_quality(flush=False)
                    agent.swap_if_allowed()
                    continue
                op, kw = await loop.run_in_executor(None, ctl.recv)
            except (EOFError, OSError, HostGone):
                break  # the application went away
            if op == "stop":
                ctl.send(("ok", None))
                break
            try:
                if op == "handle_offer":
                    if poll:
                        raise AgentError("this daemon polls its server, which owns its updates")
                    await agent.handle_offer(kw["envelope"])
                    result: Any = status(agent)
                elif op == "check_health":
                    result = await agent.check_health()
                elif op == "status":
                    result = status(agent)
                else:
                    raise AgentError(f"unknown request {op!r}")
                reply: tuple[Any, ...] = ("ok", result)
            except HostGone:
                break
            except Exception as e:  # the application gets it as an AgentError
                reply = ("err", type(e).__name__, str(e))
            try:
                ctl.send(reply)
            except OSError:
                break  # the application went away while we worked
    finally:
        agent.stop()
        if poller is not None:
            await asyncio.gather(poller, return_exceptions=True)
        await agent.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="client.agentd", description=__doc__)
    p.add_argument("--config", required=True, help="AgentConfig as JSON, or - to read it from stdin (keeps the "
                                                   "enrolment token out of the process list)")
    p.add_argument("--rpc-fd", type=int, required=True)
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--no-poll", action="store_true", help="do not poll a server (standalone installs only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="agentd %(levelname)s %(name)s: %(message)s")
    config = config_from_json(sys.stdin.read() if args.config == "-" else args.config)
    # This process is the update: it yields the CPU to the camera, and it decodes in its own thread
    # (a decode worker would be a third process for nothing: this one's GIL is not the camera's).
    try:
        os.nice(config.decode_worker_nice)
    except OSError:
        pass
    config.decode_in_subprocess = False
    config.gil_switch_interval_s = None
    swapper = RemoteSwapper(Connection(args.rpc_fd))
    agent = Agent(config, swapper=swapper, safe_to_swap=swapper.safe_to_swap)
    ctl = Connection(args.ctl_fd)
    asyncio.run(serve(agent, ctl, poll=not args.no_poll))
    return 0


if __name__ == "__main__":
    sys.exit(main())
