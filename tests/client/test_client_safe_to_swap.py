"""The car application decides when a new model may go live (issue 21 item 2): ``Agent(safe_to_swap=...)``.

A real agent against a real registry: told not to swap, it downloads and verifies the update, reports
``verified`` and keeps serving its version; its wait loop swaps the moment the rule allows it."""

import asyncio
import time
from pathlib import Path

from agent_factories import zoo_model
from test_client_registry import IMAGE, device, release

from client import Agent, AgentConfig
from tests.support.live_server import LiveServer


def _agent(server: LiveServer, state: Path, rule: object) -> Agent:
    cfg = AgentConfig(server_url=server.url, device_id="car-1", state_dir=state, enroll_token=server.enrollment_token,
                      root_public_key=server.root_public_key, tags={"region": "eu"}, poll_interval_s=60)
    return Agent(cfg, safe_to_swap=rule)  # type: ignore[arg-type]


def test_a_car_told_not_to_swap_stays_verified_serving_its_version_and_swaps_when_allowed(
        live_server: LiveServer, tmp_path: Path) -> None:
    allowed = False
    asked = 0

    def parked() -> bool:
        nonlocal asked
        asked += 1
        return allowed

    release(live_server, zoo_model(1))
    agent = _agent(live_server, tmp_path, parked)

    async def go() -> None:
        try:
            await steps()
        finally:
            agent.stop()
            await agent.aclose()

    async def steps() -> None:
        nonlocal allowed
        await agent.start()
        await agent.ensure_enrolled()
        await agent.poll_once()  # no model yet: the first installs at once
        assert agent.running_version == 1 and asked == 0
        release(live_server, zoo_model(2))
        await agent.poll_once()
        await agent.poll_once()  # offered again: still waiting, nothing downloaded twice
        assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
        assert agent.swap_waiting == 2 and asked >= 2
        updates = [u for u in device(live_server, "car-1")["updates"] if u["target_version"] == 2]
        assert [u["state"] for u in updates] == ["verified"]
        # the wait loop (polls are 60 s apart) asks again and swaps once the car is parked
        runner = asyncio.create_task(agent.run_forever())
        await asyncio.sleep(0.5)
        assert agent.running_version == 1
        allowed = True
        deadline = time.monotonic() + 5
        while agent.running_version != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert agent.running_version == 2 and agent.predict(IMAGE).version == 2 and agent.swap_waiting is None
        await agent.flush_reports()
        agent.stop()
        await runner

    asyncio.run(go())
    updates = [u for u in device(live_server, "car-1")["updates"] if u["target_version"] == 2]
    assert [u["state"] for u in updates] == ["installed"]


def test_a_safe_to_swap_that_raises_means_not_now(live_server: LiveServer, tmp_path: Path) -> None:
    def broken() -> bool:
        raise RuntimeError("CAN bus read failed")

    release(live_server, zoo_model(1))
    agent = _agent(live_server, tmp_path, broken)

    async def go() -> None:
        try:
            await agent.start()
            await agent.ensure_enrolled()
            await agent.poll_once()
            release(live_server, zoo_model(2))
            await agent.poll_once()
            assert agent.running_version == 1 and agent.swap_waiting == 2
        finally:
            await agent.aclose()

    asyncio.run(go())
