"""Poll loop timing when the registry is down: exponential backoff with full jitter, bounded."""

import asyncio
import random
import socket
from pathlib import Path

import numpy as np
from agent_factories import zoo_model
from PIL import Image
from test_client_install import make_agent

from cli.main import main as ota
from client import Agent, AgentConfig
from client.identity import Identity, save_identity


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here: connection refused, like a registry that is down
    return port


def test_unreachable_registry_backs_off_exponentially_with_full_jitter(tmp_path: Path) -> None:
    cfg = AgentConfig(server_url=f"http://127.0.0.1:{closed_port()}", device_id="car-1", state_dir=tmp_path,
                      backoff_initial_s=1.0, backoff_max_s=16.0, poll_interval_s=60)
    delays: list[float] = []
    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    agent = Agent(cfg, sleep=sleep, clock=lambda: now[0], rng=random.Random(3))
    save_identity(tmp_path / "identity.json", Identity("car-1", "t", b"k" * 32, "00"))
    orig = agent._backoff

    def spy(failures: int) -> float:
        d = orig(failures)
        delays.append(d)
        if len(delays) == 40:
            agent.stop()
        return d

    agent._backoff = spy  # type: ignore[method-assign]

    async def go() -> None:
        await agent.start()
        await agent.run_forever()
        await agent.aclose()

    asyncio.run(asyncio.wait_for(go(), 20))
    caps = [min(16.0, 2.0 ** i) for i in range(40)]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert max(delays[6:]) > 8  # it does reach the cap region
    assert len({round(d, 3) for d in delays[6:]}) > 20  # spread out: no fleet-wide lockstep


def test_classify_prints_label_and_percentage_with_the_installed_model(tmp_path: Path, capsys: object) -> None:
    agent, offers = make_agent(tmp_path / "agent")
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    from models.roadsigns import render

    img = tmp_path / "sign.png"
    Image.fromarray(render(0, np.random.default_rng(5))).resize((128, 128)).save(img)
    assert ota(["classify", str(img), "--agent-dir", str(tmp_path / "agent")]) == 0
    out = capsys.readouterr().out.strip()  # type: ignore[attr-defined]
    answer, version = out.split("  ")
    label, pct = answer.split(", ")
    assert label == agent.predict(np.asarray(Image.open(img))).label  # the car sizes it by the contract
    assert pct.endswith("%") and 0 < float(pct[:-1]) <= 100 and version == "(model v1)"


def test_classify_without_an_agent_or_with_a_bad_image_says_what_to_do(tmp_path: Path, capsys: object) -> None:
    assert ota(["classify", str(tmp_path / "x.png"), "--agent-dir", str(tmp_path / "none")]) == 1
    assert "no agent state" in capsys.readouterr().err  # type: ignore[attr-defined]
    agent, offers = make_agent(tmp_path / "agent")
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert ota(["classify", str(tmp_path / "x.png"), "--agent-dir", str(tmp_path / "agent")]) == 1
    assert "cannot read" in capsys.readouterr().err  # type: ignore[attr-defined]
