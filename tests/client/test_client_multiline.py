"""Issue 20: a car on several lines (``MultiAgent``) against the real registry: one engine per line, shared
identity, one report seq space; a one-line car's state directory still boots after the upgrade."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_factories import zoo_model

from client import Agent, AgentConfig
from client.errors import AgentError
from client.multiagent import MultiAgent, line_dir, line_dirs
from models import zoo
from models.roadsigns import render
from tests.support.live_server import LiveServer

IMAGE = render(3, np.random.default_rng(0))


def config(server: LiveServer, state: Path, device_id: str = "car-m") -> AgentConfig:
    return AgentConfig(server_url=server.url, device_id=device_id, state_dir=state,
                       enroll_token=server.enrollment_token, root_public_key=server.root_public_key,
                       tags={"region": "eu"}, decode_in_subprocess=False)


def publish(server: LiveServer, model: bytes, line: str) -> dict[str, Any]:
    spec = {k: v for k, v in zoo.contract().to_dict().items() if k in ("mean", "std")}
    return server.publish(model, line=line, codecs="lossless", contract=json.dumps(spec))


def run(agent: MultiAgent | Agent, polls: int = 1) -> None:
    async def go() -> None:
        try:
            await agent.start()
            await agent.ensure_enrolled()
            for _ in range(polls):
                await agent.poll_once()
        finally:
            await agent.aclose()

    asyncio.run(go())


def test_a_car_on_two_lines_installs_both_and_predicts_with_each(live_server: LiveServer, tmp_path: Path) -> None:
    publish(live_server, zoo_model(1), "signs")
    publish(live_server, zoo_model(3), "lanes")
    car = MultiAgent(config(live_server, tmp_path), ["signs", "lanes"])
    run(car, polls=2)
    assert car.running_versions() == {"signs": 1, "lanes": 1}
    signs, lanes = car.predict(IMAGE, line="signs"), car.predict(IMAGE, line="lanes")
    assert signs.version == 1 and lanes.version == 1
    with pytest.raises(AgentError, match="not 'driver'"):
        car.predict(IMAGE, line="driver")
    # each line has its own journal; identity and trust are the car's, once
    assert (tmp_path / "journal.json").exists() and (tmp_path / "lines" / "lanes" / "journal.json").exists()
    assert not (tmp_path / "lines" / "lanes" / "identity.json").exists()
    # one seq space: no two reports of the car share a seq, and the registry accepted all of them
    seqs = [r["seq"] for e in car.engines.values() for r in e.journal.outbox]
    assert seqs == []  # all acknowledged
    shown = live_server.admin().get("/api/v1/devices/car-m").json()
    assert {(x["line"], x["running_version"], x["reported_version"]) for x in shown["lines"]} == {
        ("signs", 1, 1), ("lanes", 1, 1)}
    installed = [u for u in shown["updates"] if u["state"] == "installed"]
    assert len(installed) == 2


def test_reports_of_two_lines_never_share_a_seq(live_server: LiveServer, tmp_path: Path) -> None:
    """The registry treats a re-sent seq as applied: lines counting on their own would lose each other's reports."""
    publish(live_server, zoo_model(1), "signs")
    publish(live_server, zoo_model(3), "lanes")
    car = MultiAgent(config(live_server, tmp_path, "car-seq"), ["signs", "lanes"])
    run(car, polls=1)
    journals = [json.loads((d / "journal.json").read_text()) for d in line_dirs(tmp_path, ["signs", "lanes"]).values()]
    assert journals[0]["next_seq"] != journals[1]["next_seq"]
    detail = live_server.admin().get("/api/v1/devices/car-seq").json()
    assert sorted(u["state"] for u in detail["updates"]) == ["installed", "installed"]


def test_a_one_line_car_upgrading_to_several_lines_boots_its_model_where_it_was(
        live_server: LiveServer, tmp_path: Path) -> None:
    publish(live_server, zoo_model(1), "road-signs")
    old = Agent(config(live_server, tmp_path, "car-old"))
    run(old)
    assert old.running_version == 1
    publish(live_server, zoo_model(3), "lanes")
    car = MultiAgent(config(live_server, tmp_path, "car-old"), ["road-signs", "lanes"])

    async def boot_only() -> None:
        try:
            await car.start()
        finally:
            await car.aclose()

    asyncio.run(boot_only())
    assert car.running_versions() == {"road-signs": 1, "lanes": 0}  # booted from disk, before any poll
    assert car.predict(IMAGE, line="road-signs").version == 1
    car = MultiAgent(config(live_server, tmp_path, "car-old"), ["road-signs", "lanes"])
    run(car)
    assert car.running_versions() == {"road-signs": 1, "lanes": 1}
    # reordering the lines later does not hand the top-level model to another line
    again = MultiAgent(config(live_server, tmp_path, "car-old"), ["lanes", "road-signs"])
    assert line_dir(tmp_path, "road-signs") == tmp_path and again.engine("lanes").store.state_dir != tmp_path


def test_bad_line_lists_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    for lines, match in (([], "1 to 16"), (["a", "a"], "named twice"), (["../x"], "letters, digits")):
        with pytest.raises(ValueError, match=match):
            line_dirs(tmp_path / "s", lines)
    assert not (tmp_path / "s").exists()


def test_ota_classify_line_reads_that_lines_model(live_server: LiveServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from cli.main import main

    publish(live_server, zoo_model(1), "signs")
    publish(live_server, zoo_model(1), "lanes")
    publish(live_server, zoo_model(3), "lanes")  # lanes' stable version stays v1 (no rollout): both run v1
    state = tmp_path / "car"
    run(MultiAgent(config(live_server, state, "car-cls"), ["signs", "lanes"]))
    picture = tmp_path / "sign.png"
    Image.fromarray(IMAGE).save(picture)
    assert main(["classify", str(picture), "--agent-dir", str(state), "--line", "lanes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["classify", str(picture), "--agent-dir", str(state), "--line", "driver"]) == 1
    assert "no agent state for line driver" in capsys.readouterr().err
    assert main(["classify", str(picture), "--agent-dir", str(state), "--line", "../signs"]) == 2


def test_ota_agent_once_with_two_lines_installs_both_and_prints_each(live_server: LiveServer, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    publish(live_server, zoo_model(1), "signs")
    publish(live_server, zoo_model(3), "lanes")
    argv = ["agent", "--once", "--server", live_server.url, "--device-id", "car-cli", "--state-dir",
            str(tmp_path / "car"), "--root-key", str(live_server.data_dir / "root.pub"),
            f"--enroll-token={live_server.enrollment_token}", "--line", "signs", "--line", "lanes", "-q"]
    assert main(argv) == 0
    assert "signs v1  lanes v1" in capsys.readouterr().out
    assert (tmp_path / "car" / "root-line").read_text() == "signs"
    assert main([*argv[:-5], "--line", "signs", "--line", "signs"]) == 2
    assert "named twice" in capsys.readouterr().err
