"""The car refuses a package whose graph would make ONNX Runtime read a file (issue #15, requirement 1).

The registry refuses such uploads, so the package here is built by hand, as
a compromised or impersonated server could, signed with the key the car
pins.  The car must stop at decode (a verification failure, before any file
is staged or any session built) and keep serving the model it had.
"""

import asyncio
import hashlib
from pathlib import Path

import onnx
from agent_factories import LABELS10, OfflineOffers, contract_for, offer_body, sha, sign, smoke_for, zoo_model
from test_client_install import IMAGE, make_agent

from models.codec import container
from tests.hardening import external_data


def _package_of(model: bytes) -> bytes:
    """A lossless package carrying ``model`` whole as its graph (it has no float32 weights to code)."""
    skeleton = onnx.load_from_string(model)
    assert not any(t.data_type == onnx.TensorProto.FLOAT for t in skeleton.graph.initializer)
    raw = skeleton.SerializeToString()
    header = {"format": container.FORMAT, "codec": "lossless", "model_sha256": hashlib.sha256(raw).hexdigest(),
              "model_bytes": len(raw), "skeleton_bytes": len(container.compress(raw)), "metadata": [], "tensors": []}
    return container.build_package(container.canonical(header), raw, [])


def test_a_signed_package_whose_graph_names_a_file_fails_verification_and_the_old_model_keeps_serving(
        tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    active = agent.store.load().active
    for slot in ("a", "b", "c"):  # a file the graph names, wherever a staged model could sit
        (agent.store.slot_dir(slot) / "secret.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----car's own")
    hostile = external_data.loop_body_constant("secret.pem")
    package = _package_of(hostile)

    asyncio.run(agent.handle_offer(_signed_offer(offers, package, hostile)))

    last = agent.journal.outbox[-1]
    assert last["state"] == "failed", last
    assert "VerificationError" in last["reason"] and "external data is not allowed" in last["reason"], last
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert agent.store.load().active == active
    staged = [p for slot in ("a", "b", "c") for p in agent.store.slot_dir(slot).glob(".model.onnx.staged")]
    assert staged == []


def _signed_offer(offers: OfflineOffers, package: bytes, model: bytes) -> dict[str, object]:
    offers.mv += 1
    signed = offer_body(device_id=offers.device_id, manifest_version=offers.mv, target_version=2,
                        model_sha256=sha(onnx.load_from_string(model).SerializeToString()),
                        contract=contract_for(LABELS10),
                        package=offers.place(package), delta=None, smoke=smoke_for(zoo_model(2)))
    return sign(signed, offers.key)
