"""Shadow mode against the real registry (uvicorn, real SQLite, real HTTP).

Until the registry sends quality plans itself, the test takes the registry's genuine offer, adds a plan and
signs it again with the registry's own online key (as the hostile-offer tests do): the car trusts it as it
would the registry's.  The downloads, reports and byte accounting are the real server's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from agent_factories import zoo_model
from test_client_registry import agent_for, release, transfers

from models.roadsigns import render
from protocol.quality import QualityPlan
from tests.support.live_server import LiveServer

FRAMES = [render(i % 10, np.random.default_rng(i)) for i in range(20)]


def resigned(server: LiveServer, envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    signed = {k: v for k, v in envelope["signed"].items() if k != "quality"} | changes
    return server.ctx.signer.envelope({k: v for k, v in signed.items() if v is not None})


def test_a_shadow_car_downloads_once_stays_verified_then_installs_from_the_staged_package(
        live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    agent = agent_for(live_server, tmp_path)

    async def go() -> None:
        try:
            await steps()
        finally:
            await agent.aclose()

    async def steps() -> None:
        await agent.start()
        await agent.ensure_enrolled()
        await agent.poll_once()  # installs v1
        v2 = release(live_server, zoo_model(2))
        active = agent.journal.active
        assert active is not None
        genuine = (await agent.api.poll("road-signs", 1, active.model_sha256, active.package_sha256, "idle")).offer
        assert genuine is not None
        mv = genuine["signed"]["manifest_version"]
        plan = QualityPlan("shadow", sample_every=1, report_every_s=1.0).to_dict()
        await agent.handle_offer(resigned(live_server, genuine, quality=plan, manifest_version=mv + 1))
        await agent.flush_reports()
        assert agent.running_version == 1 and agent.journal.shadow is not None
        update = live_server.admin().get("/api/v1/devices/car-1").json()
        assert agent.journal.outbox == [] and "verified" in str(update)  # the registry took every report
        for f in FRAMES:
            assert agent.predict(f).version == 1
        agent._quality_due = 0.0
        await agent.report_quality()  # queued and sent on POST /device/reports with "quality": [...]
        rollout = live_server.admin().get(f"/api/v1/rollouts/{v2['rollout_id']}").json()
        if "quality" in rollout:  # a registry that stores summaries acknowledges them: the car forgets them
            assert agent.journal.quality == []
        else:  # an older registry ignores them: the car keeps the latest, bounded, for a registry that will
            assert len(agent.journal.quality) == 1 and agent.journal.quality[0]["kind"] == "shadow"

        await agent.handle_offer(resigned(live_server, genuine, quality=None, manifest_version=mv + 2))
        await agent.flush_reports()
        assert agent.running_version == 2 and agent.predict(FRAMES[0]).version == 2
        assert agent.journal.shadow is None and agent.journal.outbox == []

    asyncio.run(go())
    v2_transfers = [t for t in transfers(live_server, "car-1") if t.get("target_version") == 2]
    assert len(v2_transfers) == 1  # the one shadow download; the promotion transferred nothing
    assert sum(t.get("bytes", t.get("bytes_sent", 0)) for t in v2_transfers) > 0

