"""A server-given poll interval of zero, negative or absurd size must not set the car's pace.

The agent used to sleep exactly what the poll answer said: a registry answering ``poll_interval_s <= 0``
(a bug, a bad row, a hostile proxy) made every car poll hundreds of times a second.  The car clamps the
server's value to ``[poll_interval_min_s, poll_interval_max_s]`` and says so in its log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from client import Agent, AgentConfig
from client.config import clamp_server_poll_interval
from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def _polls(server: LiveServer) -> float:
    registry = server.ctx.metrics.registry
    return sum(registry.get_sample_value("ota_polls_total", {"offer": o}) or 0.0 for o in ("yes", "no"))


def _set_interval(server: LiveServer, device_id: str, seconds: int) -> bool:
    """Write the device's poll interval straight into the registry's row (the API refuses values < 1)."""
    with server.ctx.db.engine.begin() as conn:
        done = conn.execute(text("UPDATE devices SET poll_interval_s = :s WHERE device_id = :d"),
                            {"s": seconds, "d": device_id})
        return done.rowcount == 1


def test_agent_polls_at_most_at_the_floor_rate_when_the_server_answers_a_negative_interval(
        live_server_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The registry's answer is `row or default`: a 0 in the row becomes the default, a negative goes out as is.
    # poll_interval_s=1: the first answer brings the car back within a second to read the bad row.
    server: LiveServer = live_server_factory(poll_cache_s=0, poll_interval_s=1)
    server.publish(ZOO / "v1.onnx")  # the line exists; no rollout, so every poll answers "no offer"
    config = AgentConfig(server_url=server.url, device_id="pacer", state_dir=tmp_path / "car",
                         enroll_token=server.enrollment_token, root_public_key=server.root_public_key)
    config.state_dir.mkdir()
    agent = Agent(config)
    window_s = 4.0

    async def drive() -> float:
        await agent.start()
        loop = asyncio.create_task(agent.run_forever())
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(_set_interval, server, "pacer", -1):
            assert time.monotonic() < deadline, "the agent never enrolled"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the car reads the bad value on its next poll
        before = _polls(server)
        await asyncio.sleep(window_s)
        polls = _polls(server) - before
        agent.stop()
        await loop
        await agent.aclose()
        return polls

    with caplog.at_level(logging.WARNING, logger="client"):
        polls = asyncio.run(asyncio.wait_for(drive(), 60))
    floor = config.poll_interval_min_s
    most = window_s / (floor * (1 - config.poll_jitter_fraction)) + 1
    assert 1 <= polls <= most, f"{polls} polls in {window_s}s; the floor allows at most {most:.0f}"
    assert any("poll_interval_s" in r.getMessage() for r in caplog.records), "the clamp was silent"


@pytest.mark.parametrize(("given", "used"), [
    (0.0, 1.0), (-5.0, 1.0), (0.001, 1.0), (60.0, 60.0), (1e12, 24 * 3600.0), (float("inf"), 24 * 3600.0),
    (float("nan"), 60.0),
])
def test_server_poll_interval_is_clamped_between_floor_and_ceiling(given: float, used: float, tmp_path: Path) -> None:
    config = AgentConfig(server_url="http://x.invalid", device_id="c", state_dir=tmp_path)
    assert clamp_server_poll_interval(config, given) == used
