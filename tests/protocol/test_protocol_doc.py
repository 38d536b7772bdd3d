"""docs/PROTOCOL.md is checked against protocol/: the prose may not drift from the one wire definition."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protocol.contract import InputContract
from protocol.envelope import sign, verify
from protocol.errors import BadSignature, MalformedMessage
from protocol.offer import Artifact, Delta, Offer, Smoke, parse_offer
from protocol.quality import QualityPlan

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


def _block_after(marker: str) -> str:
    start = DOC.index(marker)
    m = re.search(r"```json\n(.*?)```", DOC[start:], re.S)
    assert m, f"no json block after {marker!r} in docs/PROTOCOL.md"
    return m.group(1)


def _offer() -> Offer:
    contract = InputContract(input_name="data_0", layout="NCHW", height=227, width=227, resize="stretch",
                             channel_order="BGR", scale=255.0, mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0),
                             output_name="prob", output_kind="probabilities", labels=("cat", "dog"))
    return Offer(device_id="car-1", line="signs", rollout_id=3, manifest_version=10, target_version=2,
                 rollback=False, codec="deep", model_sha256="a" * 64, contract=contract,
                 package=Artifact("b" * 64, 10, "/api/v1/artifacts/" + "b" * 64),
                 delta=Delta("c" * 64, 5, "/api/v1/artifacts/" + "c" * 64, base_package_sha256="d" * 64),
                 smoke=Smoke(seed=1, count=1, shape=(1, 3, 227, 227), input_name="data_0", expected=[[0.5, 0.5]],
                             atol=0.001),
                 expires=datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
                 quality=QualityPlan("live", sample_every=10, rollback_below_agreement=0.97, min_frames=100))


def test_the_documented_offer_fields_are_exactly_the_protocol_offer_fields() -> None:
    documented = set(re.findall(r'^  "(\w+)":', _block_after("Offer `signed` fields:"), re.M))
    assert documented == set(_offer().to_signed())


def test_the_documented_contract_example_is_a_valid_contract_with_every_field() -> None:
    example = InputContract.from_json(_block_after("### Input contract"))
    assert set(example.to_dict()) == set(_offer().contract.to_dict())


def test_an_offer_survives_signing_and_parsing_unchanged() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.envelope import public_raw
    key = Ed25519PrivateKey.generate()
    envelope = sign(key, _offer().to_signed())
    assert parse_offer(verify(envelope, public_raw(key))) == _offer()
    with pytest.raises(BadSignature):
        verify(envelope, public_raw(Ed25519PrivateKey.generate()))


@pytest.mark.parametrize("field", ["contract", "smoke", "package", "expires", "device_id"])
def test_an_offer_missing_a_field_is_malformed_naming_it(field: str) -> None:
    signed = _offer().to_signed()
    del signed[field]
    with pytest.raises(MalformedMessage, match=field):
        parse_offer(signed)


def test_an_offer_with_a_malformed_contract_is_malformed_naming_the_contract_field() -> None:
    signed = _offer().to_signed()
    signed["contract"] = {**signed["contract"], "height": 10**9}
    with pytest.raises(MalformedMessage, match="offer.contract.*height"):
        parse_offer(signed)
