"""A car on several model lines at once (issue 20): one ``Agent`` per line in one process and one event loop.

A car runs several networks (road signs, lanes, driver monitoring).  Each line keeps its own update engine,
an ``Agent`` with its own journal, slots, downloads, health window and live session, so an install,
a rollback or a crash on one line never touches another.  What a car has once is shared: the HTTP client and
its device token, the enrolment (identity and device key), the root-verified delegation, and the report
``seq`` counter (the registry numbers one device's reports in one space; ``reports.SeqCounter``).

Layout under ``state_dir``::

    identity.json device-key.pem trust.json   the car's, shared by every line
    root-line                                 which line the top-level journal belongs to
    journal.json slots/ downloads/            that line's state: a car from before issue 20 keeps its layout
    lines/<line>/journal.json slots/ ...      every other line's state

The top-level state is the first line's the first time a ``MultiAgent`` starts in the directory; ``root-line``
remembers it, so reordering ``--line`` flags later does not hand one line's model to another.  A one-line car
upgrading therefore boots its model where it was, provided its line comes first the first time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from client.agent import Agent
from client.api import RegistryClient
from client.atomic import write_atomic
from client.config import AgentConfig
from client.errors import AgentError
from client.hotswap import Prediction, SessionFactory
from client.pollloop import PollLoop
from client.reports import SeqCounter
from client.tls import registry_transport
from client.trust import TrustKeeper

log = logging.getLogger("client.multiagent")

#: A line name as a directory name: what the registry's line names are, and nothing that walks the disk.
LINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ROOT_LINE_FILE = "root-line"
#: Lines one car follows; each is a live session and a journal.
MAX_LINES = 16

__all__ = ["MultiAgent", "line_dir", "line_dirs"]


def line_dir(state_dir: Path, line: str | None) -> Path:
    """Where ``line``'s journal is, read only (``ota classify --line``): the top level for the line
    ``root-line`` names, for ``None``, and for a one-line car's directory (no ``root-line``).

    Raises:
        ValueError: a name that is not a plain directory name.
    """
    if line is None:
        return state_dir
    if not LINE_NAME.match(line):
        raise ValueError(f"line {line!r}: letters, digits, '.', '_' and '-' only")
    try:
        root = (state_dir / ROOT_LINE_FILE).read_text().strip()
    except FileNotFoundError:
        return state_dir
    return state_dir if line == root else state_dir / "lines" / line


def line_dirs(state_dir: Path, lines: list[str], *, fsync: bool = True) -> dict[str, Path]:
    """line -> the directory of its journal and slots (module docstring), recording the top-level line.

    Raises:
        ValueError: no line, too many, a repeated one, or a name that is not a plain directory name.
    """
    if not lines or len(lines) > MAX_LINES:
        raise ValueError(f"a car follows 1 to {MAX_LINES} lines, got {len(lines)}")
    if len(set(lines)) != len(lines):
        raise ValueError(f"a line is named twice: {', '.join(lines)}")
    for name in lines:
        if not LINE_NAME.match(name):
            raise ValueError(f"line {name!r}: letters, digits, '.', '_' and '-' only, at most 100, "
                             "starting with a letter or digit")
    marker = state_dir / ROOT_LINE_FILE
    try:
        root = marker.read_text().strip()
    except FileNotFoundError:
        root = lines[0]
        state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, root.encode(), fsync=fsync)
    return {name: state_dir if name == root else state_dir / "lines" / name for name in lines}


class MultiAgent(PollLoop):
    """One car on several lines.  Build it, ``await start()``, then ``await run_forever()`` (or ``run()``)."""

    def __init__(
        self,
        config: AgentConfig,
        lines: list[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        session_factory: SessionFactory | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """Raises ValueError for a bad list of lines (``line_dirs``)."""
        self.config = config
        dirs = line_dirs(config.state_dir, lines, fsync=config.fsync)
        self.api = RegistryClient(config.server_url,
                                  transport=transport or registry_transport(config.ca_cert_path),
                                  timeout_s=config.http_timeout_s)
        self.trust = TrustKeeper(config.root_public_key, config.state_dir / "trust.json", fsync=config.fsync)
        self.seq = SeqCounter()
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        #: line -> its engine, in the order given (the first one enrols the car for all)
        self.engines: dict[str, Agent] = {
            name: Agent(replace(config, line=name, slots_dir=dirs[name]), session_factory=session_factory,
                        sleep=sleep, clock=clock, rng=self._rng, api=self.api, trust=self.trust, seq=self.seq)
            for name in lines
        }

    @property
    def lines(self) -> list[str]:
        return list(self.engines)

    def engine(self, line: str) -> Agent:
        """Raises AgentError: the car does not follow that line."""
        try:
            return self.engines[line]
        except KeyError:
            raise AgentError(f"this car follows {', '.join(self.engines)}, not {line!r}") from None

    def predict(self, image: np.ndarray, *, line: str) -> Prediction:
        """Classify with ``line``'s live model (``Agent.predict``); safe from any thread.

        Raises:
            AgentError: an unknown line (and what ``Agent.predict`` raises).
        """
        return self.engine(line).predict(image)

    def running_versions(self) -> dict[str, int]:
        return {name: e.running_version for name, e in self.engines.items()}

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Boot every line from its own slots; the seq counter starts past every journal's."""
        for e in self.engines.values():
            await e.start()
        self.seq.next = max(e.journal.next_seq for e in self.engines.values())

    async def ensure_enrolled(self) -> None:
        """Enrol once (the first line's engine), then give every line the same identity and key."""
        first = next(iter(self.engines.values()))
        await first.ensure_enrolled()
        for e in self.engines.values():
            e.identity, e.device_key = first.identity, first.device_key

    async def poll_once(self) -> None:
        """Poll every line in turn (each sends its reports, acts on its offer).

        Raises:
            Offline, ServerError, Unauthorized: a line's poll failed; the lines after it are polled next time.
        """
        for e in self.engines.values():
            await e.poll_once()

    async def aclose(self) -> None:
        await self.api.aclose()

    def stop(self) -> None:
        self._stop.set()
        for e in self.engines.values():
            e.stop()

    def _server_interval(self) -> float:
        return min(e.poll_interval_s for e in self.engines.values())

    def _forget_identity(self) -> None:
        for e in self.engines.values():
            e.identity = None

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay``, judging every line's open health window and sending due quality summaries."""
        end = self._clock() + delay
        while not self._stop.is_set():
            left = end - self._clock()
            if left <= 0:
                return
            step = left
            for e in self.engines.values():
                if e.health_window_open:
                    await e.check_health()
                    step = min(step, e.health_check_s)
                if e._quality_due is not None:
                    await e.report_quality()
                    if e._quality_due is not None:
                        step = min(step, max(0.01, e._quality_due - self._clock()))
            sleeper = asyncio.ensure_future(self._sleep(step))
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            stopper.cancel()
