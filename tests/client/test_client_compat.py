"""Issue 20 item 3 from the car's side: the real agent measures its platform, reports it, and is offered only
what it can run (a real registry over HTTP, real ONNX Runtime)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import onnxruntime

from client import Agent, AgentConfig
from models import zoo
from protocol.platform import Platform
from tests.support.live_server import LiveServer


def _agent(server: LiveServer, state: Path, device_id: str, line: str, **kw: object) -> Agent:
    return Agent(AgentConfig(server_url=server.url, device_id=device_id, state_dir=state, line=line,
                             enroll_token=server.enrollment_token, root_public_key=server.root_public_key,
                             tags={"fleet": line}, **kw))  # type: ignore[arg-type]


def _polls(agent: Agent, n: int = 2) -> None:
    async def go() -> None:
        try:
            await agent.start()
            await agent.ensure_enrolled()
            for _ in range(n):
                await agent.poll_once()
        finally:
            await agent.aclose()

    asyncio.run(go())


def test_the_agent_reports_its_measured_platform_and_gets_only_versions_it_can_run(
        live_server: LiveServer, tmp_path: Path) -> None:
    line = "compat-agent"
    spec = json.dumps(zoo.contract().to_dict())
    live_server.publish(zoo.ZOO_DIR / "v1.onnx", line=line, contract=spec)
    gen2 = _agent(live_server, tmp_path / "gen2", "compat-gen2", line, hardware=("npu-v2",))
    _polls(gen2)
    assert gen2.running_version == 1
    reported = live_server.admin().get("/api/v1/devices/compat-gen2").json()["platform"]
    assert reported["ort_version"] == onnxruntime.__version__ and reported["hardware"] == ["npu-v2"]
    assert reported["opsets"]["ai.onnx"] >= 17 and reported["ir_version"] >= 8  # it loads the zoo's models
    old = _agent(live_server, tmp_path / "old", "compat-old", line,
                 platform=Platform.for_runtime("1.17.0", ("CPUExecutionProvider",)))
    _polls(old)
    assert old.running_version == 1

    live_server.publish(zoo.ZOO_DIR / "v2.onnx", line=line, contract=spec,
                        requirements=json.dumps({"min_ort_version": "1.18", "hardware": ["npu-v2"]}))
    r = live_server.admin().post("/api/v1/rollouts", json={"line": line, "version": 2,
                                                           "selector": {"fleet": line}})
    assert r.status_code == 201, r.text
    gen2 = _agent(live_server, tmp_path / "gen2", "compat-gen2", line, hardware=("npu-v2",))
    _polls(gen2)
    assert gen2.running_version == 2
    old = _agent(live_server, tmp_path / "old", "compat-old", line,
                 platform=Platform.for_runtime("1.17.0", ("CPUExecutionProvider",)))
    _polls(old)
    assert old.running_version == 1  # never offered: it keeps serving v1
    counts = live_server.admin().get(f"/api/v1/rollouts/{r.json()['id']}").json()["stages"][0]["counts"]
    assert counts == {"installed": 1, "incompatible": 1}
