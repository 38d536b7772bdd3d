"""The car application's side of a split agent: the live session here, the rest of the agent in a daemon.

Why split: the camera thread shares the GIL with everything else in its
process.  With the whole agent in-process, each install's Python (offer
checks, journal writes, reports, the event loop's wake-ups) makes the camera
wait for the GIL on returning from ONNX Runtime (``bench/hotswap.py``: about
four inferences per update slower than 1.5x the steady p99).  Here the
application's process holds only what must be beside the camera: the
``HotSwapper``, and one thread that builds, smoke-tests, swaps and frees
sessions when the daemon asks.  Polling, downloads, patch, decode, hashes,
slots, the journal and reports run in ``client.agentd``, a child process with
its own GIL and a lower CPU priority, as Mender's client runs beside the
application it updates.

The daemon drives the session through two socket pairs (pickled messages,
``multiprocessing.connection``): on ``rpc`` the daemon asks and this side's
thread answers (``load``, ``swap``, ``health``, ``close_health_window``, ``safe_to_swap``, and for
shadow mode ``start_comparison``, ``comparison_snapshot``, ``stop_comparison``);
on ``ctl`` this side asks and the daemon answers (``handle_offer`` for a
standalone install, ``check_health``, ``status``, ``stop``).  If the daemon dies
the application keeps classifying on the live session; ``restart_daemon``
starts a new one, which boots from the slots as after a power cut.

Comparisons (issue 18, ``client.shadow``) run here, beside the camera: the
frames are in this process, so the ``Comparator`` and its thread are too.  A
shadow candidate the daemon loaded leaves the loaded-not-swapped handles when
its comparison starts, so ``swap`` can never make it live: only the promotion
path (the daemon loads the staged slot again and swaps that) can.  A live
comparison runs the health window's fallback beside the new model.  The daemon
pulls snapshots of the summary (as JSON dicts, validated again on its side) and
does all the bookkeeping: the journal, the reports, the rollback decision.  When
the daemon goes away its comparison is stopped here: no one would read it, and
a restarted daemon starts it again (resuming the summary from its journal) on
the next offer.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import socket
import subprocess
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from client.children import child_env, module_command
from client.config import AgentConfig
from client.errors import AgentError
from client.hotswap import (
    HotSwapper,
    LoadedModel,
    Prediction,
    SessionFactory,
    default_session_factory,
    gil_switch_interval,
)
from protocol.contract import InputContract
from protocol.platform import Platform
from protocol.quality import QualityPlan, QualitySummary

log = logging.getLogger("client.modelhost")



class DaemonGone(AgentError):
    """The agent daemon is not running (it exited or was killed); the live model keeps answering."""


def config_to_json(config: AgentConfig) -> str:
    """``AgentConfig`` as JSON for the daemon's command line (paths as strings)."""
    d = dataclasses.asdict(config)
    d["state_dir"] = str(config.state_dir)
    if config.root_public_key is not None:
        d["root_public_key"] = base64.b64encode(config.root_public_key).decode()
    d["ca_cert_path"] = str(config.ca_cert_path) if config.ca_cert_path else None
    d["platform"] = config.platform.to_dict() if config.platform is not None else None
    return json.dumps(d)


def config_from_json(text: str) -> AgentConfig:
    d = json.loads(text)
    d["state_dir"] = Path(d["state_dir"])
    if d.get("root_public_key") is not None:
        d["root_public_key"] = base64.b64decode(d["root_public_key"])
    d["ca_cert_path"] = Path(d["ca_cert_path"]) if d.get("ca_cert_path") else None
    d["platform"] = Platform.from_dict(d["platform"]) if d.get("platform") is not None else None
    return AgentConfig(**d)


class ModelHost:
    """The live model in the car application's process, updated by an agent daemon it starts.

    ``start()`` starts the daemon and waits until it has booted the newest
    verified slot (into this process's session); ``predict`` answers from any
    thread, throughout updates and even with the daemon dead.
    """

    def __init__(self, config: AgentConfig, *, poll: bool = True,
                 session_factory: SessionFactory | None = None,
                 safe_to_swap: Callable[[], bool] | None = None, comparisons: str = "process") -> None:
        """``safe_to_swap`` (issue 21): the application's rule for when a new model may go live (parked,
        ignition off, ...), called in this process on the daemon's request; None: always.  While it says no,
        a verified update waits loaded at ``verified`` and the current model keeps answering.

        ``comparisons`` (issue 18): where a shadow or health-window comparison runs its beside model:
        ``process`` (a child process, ``client.shadowproc``: the camera never waits for its GIL; costs that
        process's memory and the models' bytes kept here) or ``thread`` (in this process)."""
        # The platform is measured here, where ONNX Runtime is loaded anyway: the daemon never loads it.
        from client.platform_probe import current_platform

        self.config = config if config.platform is not None else dataclasses.replace(
            config, platform=current_platform(config.hardware))
        self.poll = poll
        self.swapper = HotSwapper(session_factory or default_session_factory(config.inference_threads),
                                  comparisons=comparisons)
        self.safe_to_swap = safe_to_swap
        # The daemon names models by handle: the live one, its fallback, and one loaded but not yet swapped in.
        self._pending: dict[int, LoadedModel] = {}
        self._current_handle: int | None = None
        self._fallback_handle: int | None = None
        self._handles = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: Connection | None = None
        self._ctl_lock = threading.Lock()
        self._server: threading.Thread | None = None
        self._ops: dict[str, Callable[..., Any]] = {
            "load": self._op_load, "swap": self._op_swap, "health": self.swapper.health,
            "close_health_window": self._op_close_health_window,
            "start_comparison": self._op_start_comparison, "comparison_snapshot": self._op_comparison_snapshot,
            "stop_comparison": self._op_stop_comparison, "safe_to_swap": self._op_safe_to_swap,
        }
        #: What the daemon said when it booted or last answered ``status``.
        self.daemon_status: dict[str, Any] = {}

    # -- the application's API ---------------------------------------------

    def predict(self, image: np.ndarray) -> Prediction:
        """Classify a uint8 image of any size (HxW grey, HxWx3 RGB) with the live model and its line's
        contract; never waits for the daemon.

        Raises:
            BadImage: not a uint8 image.
            NoModel: the car has never installed a model.
        """
        return self.swapper.predict(image)

    @property
    def running_version(self) -> int:
        current = self.swapper.current
        return current.version if current else 0

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the daemon and wait until it has booted the newest verified slot.

        Raises:
            DaemonGone: the daemon exited or did not report ready within ``timeout_s``.
        """
        if self.pid is not None:
            return
        # A daemon that died on its own: wait for its rpc thread, which stops that daemon's comparison,
        # so it cannot stop the one the next daemon starts.
        self._kill()
        rpc_here, rpc_there = socket.socketpair()
        ctl_here, ctl_there = socket.socketpair()
        # The config (it holds the enrolment token) goes through a pipe: argv is readable by every user (`ps`).
        args = module_command("client.agentd", "--config", "-",
                              "--rpc-fd", str(rpc_there.fileno()), "--ctl-fd", str(ctl_there.fileno()))
        if not self.poll:
            args.append("--no-poll")
        self._proc = subprocess.Popen(args, pass_fds=(rpc_there.fileno(), ctl_there.fileno()), stdin=subprocess.PIPE,
                                      env=child_env())
        assert self._proc.stdin is not None
        with self._proc.stdin:  # a few hundred bytes: fits the pipe, never blocks
            self._proc.stdin.write(config_to_json(self.config).encode())
        rpc_there.close()
        ctl_there.close()
        rpc = Connection(rpc_here.detach())
        self._ctl = Connection(ctl_here.detach())
        self._server = threading.Thread(target=self._serve, args=(rpc,), name="modelhost-rpc", daemon=True)
        self._server.start()
        if not self._ctl.poll(timeout_s):
            self._kill()
            raise DaemonGone(f"agent daemon did not boot within {timeout_s:.0f} s")
        try:
            self.daemon_status = self._ctl.recv()
        except (EOFError, OSError) as e:
            self._kill()
            raise DaemonGone(f"agent daemon exited while booting (exit code {self._proc.poll()})") from e

    def restart_daemon(self, timeout_s: float = 60.0) -> None:
        """Start a new daemon after the last one died; it resumes any update from the slots and journal."""
        self._kill()
        self.start(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the daemon (it finishes its current step); the live session stays usable."""
        if self._proc is None:
            return
        try:
            self._call("stop", timeout_s=timeout_s)
        except DaemonGone:
            pass
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("agent daemon did not stop within %.0f s; killing it", timeout_s)
        self._kill()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._server is not None:
            self._server.join(5)
            self._server = None

    # -- asking the daemon --------------------------------------------------

    def handle_offer(self, envelope: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
        """A standalone install: the daemon verifies and installs this signed offer (artifacts are looked
        for in its download cache first, then fetched); returns its ``status`` afterwards.

        Raises:
            DaemonGone: no daemon, or it died on the way.
            AgentError: the daemon polls a server (``poll=True``), which owns its updates.
        """
        return self._call("handle_offer", envelope=envelope, timeout_s=timeout_s)

    def check_health(self, timeout_s: float = 60.0) -> bool | None:
        """The daemon judges the open health window now: True kept, False rolled back, None still open."""
        return self._call("check_health", timeout_s=timeout_s)

    def status(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The daemon's view: running version, state, last install's timings and sizes, its RSS."""
        self.daemon_status = self._call("status", timeout_s=timeout_s)
        return self.daemon_status

    def _call(self, op: str, *, timeout_s: float, **kw: Any) -> Any:
        with self._ctl_lock:
            if self._ctl is None or self.pid is None:
                raise DaemonGone("the agent daemon is not running")
            try:
                self._ctl.send((op, kw))
                answered = self._ctl.poll(timeout_s)
                reply = self._ctl.recv() if answered else None
            except (EOFError, OSError) as e:
                raise DaemonGone(f"agent daemon died during {op!r}") from e
        if reply is None:  # its late answer would be taken for the next request's: end it
            self._kill()
            raise DaemonGone(f"agent daemon did not answer {op!r} within {timeout_s:.0f} s; stopped it "
                             "(restart_daemon() starts another, which resumes from the slots)")
        if reply[0] == "ok":
            return reply[1]
        raise AgentError(f"agent daemon: {reply[1]}: {reply[2]}")

    # -- answering the daemon -----------------------------------------------

    def _serve(self, rpc: Connection) -> None:
        """The daemon's requests on the live session, one at a time, until it goes away."""
        while True:
            try:
                op, kw = rpc.recv()
            except (EOFError, OSError):
                break
            try:
                reply: tuple[Any, ...] = ("ok", self._ops[op](**kw))
            except Exception as e:  # sent back to the daemon, which raises it there
                reply = ("err", type(e).__name__, str(e))
            try:
                rpc.send(reply)
            except OSError:
                break
        rpc.close()
        if self.swapper.stop_comparison() is not None:  # in this thread: the candidate is freed here
            log.info("agent daemon disconnected; stopped its comparison (the next daemon starts it again)")
        log.info("agent daemon disconnected; the live model keeps answering")

    def _op_load(self, *, path: str, version: int, model_sha256: str, contract: dict[str, Any],
                 smoke: Any = None) -> int:
        """Load (and smoke-test, when the daemon sends a smoke) a model; the contract comes as its JSON form."""
        self._pending.clear()  # a model loaded before and never swapped in (its install failed later) goes
        current = self.swapper.current
        parsed = InputContract.from_dict(contract)
        if smoke is None and current is not None and current.model_sha256 == model_sha256 \
                and current.contract == parsed:
            # A restarted daemon booting the model this process already runs: nothing to load or free.
            handle = next(self._handles)
            self._pending[handle] = current
            return handle
        del current
        with gil_switch_interval(self.config.gil_switch_interval_s):
            if smoke is None:
                loaded = self.swapper.load_sync(Path(path), version=version, model_sha256=model_sha256,
                                                contract=parsed)
            else:
                loaded = self.swapper.load_and_smoke_sync(Path(path), version=version, model_sha256=model_sha256,
                                                          contract=parsed, smoke=smoke)
        handle = next(self._handles)
        self._pending[handle] = loaded
        return handle

    def _op_swap(self, *, handle: int, health_window: bool) -> None:
        """Swap in a loaded model, or the fallback back in (a rollback)."""
        if handle in self._pending:
            new = self._pending.pop(handle)
        elif handle == self._fallback_handle and self.swapper.fallback is not None:
            new = self.swapper.fallback
        else:
            raise AgentError(f"no loaded model {handle} in the application (it was dropped)")
        self._pending.clear()
        old_handle = self._current_handle
        self.swapper.swap(new, health_window=health_window)  # frees what it no longer needs, in this thread
        del new
        self._current_handle, self._fallback_handle = handle, (old_handle if health_window else None)

    def _op_safe_to_swap(self) -> bool:
        """The application's rule, asked by the daemon before it swaps a verified update in (an exception in it
        goes back to the daemon, which takes it as 'not now')."""
        return True if self.safe_to_swap is None else bool(self.safe_to_swap())

    def _op_close_health_window(self) -> None:
        self.swapper.close_health_window()  # frees the old session in this thread
        self._fallback_handle = None

    def _op_start_comparison(self, *, handle: int, kind: str, plan: dict[str, Any], line: str,
                             rollout_id: int | None, resume: dict[str, Any] | None = None) -> int:
        """Run a model beside the live one: a loaded, never-swapped candidate (``shadow``, which leaves the
        swappable handles for good) or the health window's fallback (``live``); returns the live version.

        Raises:
            AgentError: the handle is not a model this kind may compare (the live one, a dropped one).
            MalformedMessage: the plan or the resumed summary does not parse.
        """
        parsed_plan = QualityPlan.from_dict(plan)
        parsed_resume = None if resume is None else QualitySummary.from_dict(resume)
        if kind == "shadow" and handle in self._pending:
            beside = self._pending.pop(handle)  # never swappable again: a candidate goes live only by promotion
        elif kind == "live" and handle == self._fallback_handle and self.swapper.fallback is not None:
            beside = self.swapper.fallback
        else:
            raise AgentError(f"model {handle} cannot be compared as {kind!r} in the application "
                             "(a shadow candidate must be loaded and not swapped, a live baseline the fallback)")
        comparator = self.swapper.start_comparison(beside, parsed_plan, kind=kind, line=line,
                                                   rollout_id=rollout_id, resume=parsed_resume)
        del beside
        return comparator.live_version

    def _op_comparison_snapshot(self) -> dict[str, Any] | None:
        """The running comparison's cumulative summary (None when none runs)."""
        comparator = self.swapper.comparator
        return None if comparator is None else comparator.snapshot().to_dict()

    def _op_stop_comparison(self) -> dict[str, Any] | None:
        """Stop the comparison, freeing a shadow candidate in this thread; its final summary (None if none ran)."""
        final = self.swapper.stop_comparison()
        return None if final is None else final.to_dict()
