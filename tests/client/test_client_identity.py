"""The car's own key against the real registry: it is created 0600, registered at enrolment, signs reports,
recovers a lost device token by key proof without the enrolment token, and keeps impostors out of its id."""

import asyncio
import json
import stat
from pathlib import Path

import pytest
from agent_factories import zoo_model
from sqlalchemy import select
from test_client_registry import agent_for, release, run

from client import Agent, AgentConfig
from client.errors import ServerError
from server.orm import Device, DeviceReport
from tests.support.live_server import LiveServer


def _device_row(server: LiveServer, device_id: str) -> tuple[int, str | None]:
    with server.ctx.db.engine.connect() as conn:
        pk, key = conn.execute(select(Device.id, Device.public_key).where(Device.device_id == device_id)).one()
    return pk, key


def test_agent_creates_its_key_0600_registers_it_and_signs_its_reports(live_server: LiveServer,
                                                                          tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    agent = agent_for(live_server, tmp_path)
    run(agent, polls=2)
    key_file = tmp_path / "device-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert agent.device_key is not None and agent.running_version == 1
    pk, registered = _device_row(live_server, "car-1")
    assert registered == agent.device_key.public_b64
    with live_server.ctx.db.engine.connect() as conn:
        signed = conn.execute(select(DeviceReport.state, DeviceReport.signed).where(DeviceReport.device_pk == pk)
                              ).all()
    assert signed and all(ok for _state, ok in signed), signed
    assert "installed" in {state for state, _ok in signed}


def test_agent_whose_token_was_lost_recovers_by_key_proof_without_the_enrolment_token(
        live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    run(agent_for(live_server, tmp_path), polls=0)  # enrolled (with the fleet token), nothing installed yet
    identity = json.loads((tmp_path / "identity.json").read_text())
    identity["device_token"] = "lost-or-rotated"
    (tmp_path / "identity.json").write_text(json.dumps(identity))
    agent = Agent(AgentConfig(server_url=live_server.url, device_id="car-1", state_dir=tmp_path,
                              enroll_token=None, root_public_key=live_server.root_public_key, backoff_initial_s=0.05,
                              backoff_max_s=0.1, poll_interval_s=0.1))

    async def go() -> None:
        await agent.start()
        task = asyncio.ensure_future(agent.run_forever())
        try:
            for _ in range(600):
                if agent.running_version == 1 or task.done():
                    break
                await asyncio.sleep(0.05)
        finally:
            agent.stop()
            await task
            await agent.aclose()

    asyncio.run(go())
    assert agent.running_version == 1  # 401, re-enrolled by proof, polled, installed
    assert json.loads((tmp_path / "identity.json").read_text())["device_token"] != "lost-or-rotated"
    rows = live_server.admin().get("/api/v1/audit", params={"limit": 1000}).json()
    assert [r["detail"]["outcome"] for r in rows if r["action"] == "device.enroll"][0] == "proof"


def test_an_impostor_agent_with_the_fleet_token_cannot_take_an_enrolled_id(live_server: LiveServer,
                                                                           tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    real = tmp_path / "real"
    run(agent_for(live_server, real), polls=0)
    impostor = agent_for(live_server, tmp_path / "impostor")  # same id, same fleet token, its own key
    with pytest.raises(ServerError, match="refused with 401.*another car holds this id.*reauthorize"):
        run(impostor, polls=0)
    assert not (tmp_path / "impostor" / "identity.json").exists()
    agent = agent_for(live_server, real)
    run(agent, polls=1)  # the real car's token still works: it installs v1
    assert agent.running_version == 1
