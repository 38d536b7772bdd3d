import copy
from datetime import UTC, datetime, timedelta

import pytest
from agent_factories import new_key, offer_body, sign

from client.errors import OfferRejected
from client.manifest import canonical_json, check_offer, verify_signature

NOW = datetime.now(UTC)


def checked(envelope: dict, pub: bytes, **kw: object) -> object:
    args = {"device_id": "car-1", "now": NOW, "highest_manifest_version": 0, "current_version": 1}
    args.update(kw)
    return check_offer(verify_signature(envelope, pub), **args)  # type: ignore[arg-type]


def test_canonical_json_is_the_protocol_form() -> None:
    assert canonical_json({"b": 1, "a": "é", "c": [1, {"z": 0, "y": None}]}) == \
        '{"a":"é","b":1,"c":[1,{"y":null,"z":0}]}'.encode()


def test_offer_signed_by_the_pinned_key_is_accepted_and_typed() -> None:
    key, pub = new_key()
    offer = checked(sign(offer_body(), key), pub)
    assert offer.target_version == 2 and offer.package.size == 10 and offer.delta is None  # type: ignore[attr-defined]
    assert offer.smoke.shape == (1, 3, 64, 64)  # type: ignore[attr-defined]


def test_offer_signed_by_another_key_is_refused() -> None:
    _, pub = new_key()
    other, _ = new_key()
    with pytest.raises(OfferRejected, match="no valid signature by the trusted key"):
        checked(sign(offer_body(), other), pub)


def test_tampered_offer_is_refused() -> None:
    key, pub = new_key()
    env = sign(offer_body(), key)
    env["signed"]["package"]["size"] = 11
    with pytest.raises(OfferRejected, match="no valid signature"):
        checked(env, pub)


def test_garbage_signature_and_malformed_envelopes_are_refused() -> None:
    key, pub = new_key()
    env = sign(offer_body(), key)
    bad = copy.deepcopy(env)
    bad["signatures"][0]["sig"] = "!!!not base64"
    with pytest.raises(OfferRejected):
        checked(bad, pub)
    for broken in (None, [], {"signed": {}}, {"signed": env["signed"], "signatures": []}):
        with pytest.raises(OfferRejected):
            checked(broken, pub)  # type: ignore[arg-type]


def test_offer_for_another_device_is_refused() -> None:
    key, pub = new_key()
    with pytest.raises(OfferRejected, match="not this car"):
        checked(sign(offer_body(device_id="car-2"), key), pub)


def test_expired_offer_is_refused() -> None:
    key, pub = new_key()
    past = (NOW - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(OfferRejected, match="expired"):
        checked(sign(offer_body(expires=past), key), pub)


def test_replayed_manifest_version_is_refused() -> None:
    key, pub = new_key()
    with pytest.raises(OfferRejected, match="replayed"):
        checked(sign(offer_body(manifest_version=99), key), pub, highest_manifest_version=100)


def test_downgrade_is_refused_but_a_signed_rollback_is_allowed() -> None:
    key, pub = new_key()
    with pytest.raises(OfferRejected, match="downgrade refused"):
        checked(sign(offer_body(target_version=1), key), pub, current_version=2)
    offer = checked(sign(offer_body(target_version=1, rollback=True), key), pub, current_version=2)
    assert offer.rollback  # type: ignore[attr-defined]


def test_malformed_field_names_the_field() -> None:
    key, pub = new_key()
    with pytest.raises(OfferRejected, match="offer.package.size"):
        checked(sign(offer_body(package={"sha256": "1" * 64, "size": "big", "url": "/x"}), key), pub)
    with pytest.raises(OfferRejected, match="offer.target_version"):
        checked(sign(offer_body(target_version=True), key), pub)
