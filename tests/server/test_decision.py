"""The one poll decision (server/devices/decision.py), exhaustively: named scenarios, then every combination of
its inputs against a reference written from docs/PROTOCOL.md "Poll semantics" (pure: no server, no database)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from server.devices.decision import (
    DeviceView,
    LineRun,
    NewOffer,
    NoOffer,
    OfferView,
    PollPolicy,
    PollView,
    Resend,
    Running,
    decide,
)
from server.rollouts.lineview import LineView, PackageView, RolloutView, VersionView

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = PollPolicy(poll_interval_s=60, codecs=("int8", "lossless"), offer_ttl_s=3600.0, key_id="key-now")
ENVELOPE = b'{"signed":{"type":"offer"}}'


def pkg(version: int, codec: str) -> PackageView:
    return PackageView(codec, f"pkg-{version}-{codec}", f"model-{version}-{codec}")


def version(number: int, codecs: tuple[str, ...] = ("lossless", "int8")) -> VersionView:
    return VersionView(number * 10, number, {c: pkg(number, c) for c in codecs})


def rollout(target: VersionView, *, selector: dict[str, str] | None = None, reached: bool = True,
            codec: str | None = "lossless", rollback: bool = False) -> RolloutView:
    # percents (100,): every device is in stage 0; (0, 100) at stage 0: nobody is reached yet
    return RolloutView(7, selector or {}, (100.0,) if reached else (0.0, 100.0), 0, target, codec, rollback)


def line(stable: VersionView | None = None, *rollouts: RolloutView) -> LineView:
    return LineView(1, "signs", stable, tuple(rollouts))


def offer(**changes: object) -> OfferView:
    base = OfferView("offered", "lossless", None, None, NOW + timedelta(hours=1), ENVELOPE, "key-now")
    return replace(base, **changes)  # type: ignore[arg-type]


def device(*, offers: dict[tuple[int, int], OfferView] | None = None, running: int | None = 1,
           running_sha: str | None = None, reported: int | None = None, interval: int | None = None,
           tags: dict[str, str] | None = None) -> DeviceView:
    drift = reported is not None and running != reported
    detail = f"reported installed version {reported} but polls with version {running}" if drift else None
    return DeviceView(3, "car-1", tags or {"region": "eu"}, interval,
                      {"signs": LineRun(running, running_sha, reported, drift, detail)}, offers or {})


def poll(current: int = 1, model: str | None = None, package: str | None = None,
         deltas: dict[str, str | None] | None = None) -> PollView:
    return PollView("signs", current, model, package, deltas or {})


V1, V2 = version(1), version(2)
KEY = (7, 20)  # (rollout id, version id) of the rollout to V2


def test_no_target_is_no_offer_and_writes_nothing() -> None:
    assert decide(device(), line(None), poll(), NOW, POLICY) == NoOffer(60, None)


def test_the_device_poll_interval_overrides_the_servers() -> None:
    assert decide(device(interval=5), line(None), poll(), NOW, POLICY).poll_interval_s == 5


def test_a_car_on_the_stable_version_gets_no_offer() -> None:
    assert decide(device(running_sha="model-1-int8"), line(V1), poll(1, "model-1-int8"), NOW, POLICY) == NoOffer(60,
                                                                                                         None)


def test_a_reached_rollout_is_offered_with_its_codec() -> None:
    d = decide(device(), line(V1, rollout(V2)), poll(1), NOW, POLICY)
    assert isinstance(d, NewOffer) and d.package == pkg(2, "lossless") and d.rollout_id == 7 and d.delta_known


def test_without_a_rollout_codec_the_servers_preference_wins() -> None:
    d = decide(device(), line(V1, rollout(V2, codec=None)), poll(1), NOW, POLICY)
    assert isinstance(d, NewOffer) and d.package.codec == "int8"


def test_a_rollout_whose_selector_does_not_match_leaves_the_stable_version() -> None:
    d = decide(device(running_sha="model-1-int8"), line(V1, rollout(V2, selector={"region": "us"})),
               poll(1, "model-1-int8"), NOW, POLICY)
    assert d == NoOffer(60, None)


def test_a_rollout_not_yet_reaching_the_device_leaves_the_stable_version() -> None:
    assert decide(device(), line(V1, rollout(V2, reached=False)), poll(1), NOW, POLICY) == NoOffer(60, None)


def test_a_newer_car_is_not_downgraded_except_by_a_rollback() -> None:
    assert isinstance(decide(device(running=3), line(V1), poll(3), NOW, POLICY), NoOffer)
    d = decide(device(running=3), line(None, rollout(V1, rollback=True)), poll(3), NOW, POLICY)
    assert isinstance(d, NewOffer) and d.target.rollback


def test_same_version_with_another_model_is_offered_again() -> None:
    assert isinstance(decide(device(running_sha="other"), line(V1), poll(1, "other"), NOW, POLICY), NewOffer)


def test_a_fresh_stored_offer_is_resent_unchanged() -> None:
    d = decide(device(offers={KEY: offer()}), line(V1, rollout(V2)), poll(1), NOW, POLICY)
    assert d == Resend(60, ENVELOPE, None)


@pytest.mark.parametrize("stored", [
    offer(expires_at=NOW + timedelta(minutes=29)),  # less than half its time to live left
    offer(keyid="key-before-rotation"),
    offer(codec="int8"),
    offer(delta_sha256="d-old", base_package_sha256="pkg-1-lossless"),  # the car now sends no base
], ids=["stale", "other key", "other codec", "other delta"])
def test_a_stored_offer_that_no_longer_fits_is_signed_again(stored: OfferView) -> None:
    d = decide(device(offers={KEY: stored}), line(V1, rollout(V2)), poll(1), NOW, POLICY)
    assert isinstance(d, NewOffer) and d.delta_known and d.delta_sha256 is None


def test_a_car_that_rolled_the_offer_back_waits_for_an_operator() -> None:
    d = decide(device(offers={KEY: offer(state="rolled_back")}), line(V1, rollout(V2)), poll(1), NOW, POLICY)
    assert d == NoOffer(60, None)


def test_an_unknown_delta_asks_the_caller_to_find_out() -> None:
    d = decide(device(offers={KEY: offer()}), line(V1, rollout(V2)), poll(1, package="pkg-1-lossless"), NOW, POLICY)
    assert isinstance(d, NewOffer) and not d.delta_known


def test_a_known_delta_is_resent_when_the_stored_offer_carries_it() -> None:
    stored = offer(delta_sha256="d-1-2", base_package_sha256="pkg-1-lossless")
    asked = poll(1, package="pkg-1-lossless")
    assert decide(device(offers={KEY: stored}), line(V1, rollout(V2)), asked, NOW, POLICY) == Resend(60, ENVELOPE,
                                                                                                     None)
    told = replace(asked, deltas={"pkg-2-lossless": None})  # the database says: no delta is worth it
    assert isinstance(decide(device(offers={KEY: stored}), line(V1, rollout(V2)), told, NOW, POLICY), NewOffer)


def test_a_changed_running_version_or_drift_is_written_whatever_the_answer() -> None:
    d = decide(device(running=None), line(V1), poll(1), NOW, POLICY)
    assert d == NoOffer(60, Running("signs", 1, None, False, None))
    d = decide(device(reported=2, running=2), line(V1), poll(1), NOW, POLICY)
    assert d.running == Running("signs", 1, None, True, "reported installed version 2 but polls with version 1")


def test_each_line_of_a_car_is_judged_alone_and_a_first_poll_of_a_line_creates_its_row() -> None:
    """Issue 20: a car on two lines polls both in turn; what it runs on one never rewrites the other."""
    car = replace(device(reported=1, running=1), lines={
        "signs": LineRun(1, None, 1, False, None), "lanes": LineRun(3, None, 3, False, None)})
    lanes = LineView(2, "lanes", None, ())
    assert decide(car, line(V1), poll(1), NOW, POLICY).running is None
    assert decide(car, lanes, replace(poll(3), line="lanes"), NOW, POLICY).running is None
    drifted = decide(car, lanes, replace(poll(2), line="lanes"), NOW, POLICY).running
    assert drifted == Running("lanes", 2, None, True, "reported installed version 3 but polls with version 2")
    first = decide(car, LineView(3, "driver", None, ()), replace(poll(0), line="driver"), NOW, POLICY).running
    assert first == Running("driver", 0, None, False, None, new=True)


# -- every combination ------------------------------------------------------------------------------------------

TARGETS = ["none", "stable", "rollout", "rollback", "unmatched", "unreached"]
CODECS = ["both", "int8 only", "none"]
CARS = ["v1 same model", "v1 other model", "v1 no model", "v2 same model", "v3"]
OFFERS = ["none", "rolled back", "fresh", "stale", "other key", "other codec", "carries delta"]
BASES = ["none", "target", "known delta", "known none", "unknown"]


def _case(target: str, codecs: str, car: str, stored: str, base: str):  # type: ignore[no-untyped-def]
    kept = {"both": ("lossless", "int8"), "int8 only": ("int8",), "none": ()}[codecs]
    v1, v2 = version(1, kept), version(2, kept)
    ro = {"rollout": rollout(v2), "rollback": rollout(v1, rollback=True),
          "unmatched": rollout(v2, selector={"region": "us"}), "unreached": rollout(v2, reached=False)}.get(target)
    ln = line(None if target in ("none", "rollback") else v1, *([ro] if ro else []))
    number = {"v1 same model": 1, "v1 other model": 1, "v1 no model": 1, "v2 same model": 2, "v3": 3}[car]
    model = {"v1 same model": "model-1-{c}", "v1 other model": "elsewhere", "v1 no model": None,
             "v2 same model": "model-2-{c}", "v3": "model-3-{c}"}[car]
    stored_offer = {"none": None, "rolled back": offer(state="rolled_back"), "fresh": offer(),
                    "stale": offer(expires_at=NOW + timedelta(minutes=10)), "other key": offer(keyid="old"),
                    "other codec": offer(codec="int8"),
                    "carries delta": offer(delta_sha256="d", base_package_sha256="pkg-0-lossless")}[stored]
    return ln, number, model, stored_offer, base


def _expected(ln: LineView, number: int, model: str | None, stored: OfferView | None, base: str,  # noqa: PLR0911
              offers_key: tuple[int, int]) -> tuple[type, object]:
    """The rule as the protocol document states it, written out case by case."""
    target = next((r for r in ln.rollouts if not r.selector and r.percents == (100.0,)), None)
    version_ = target.version if target else ln.stable
    if version_ is None:
        return NoOffer, None
    chosen = (target.codec if target and target.codec in version_.packages else
              next((c for c in POLICY.codecs if c in version_.packages), None))
    if chosen is None:
        return NoOffer, None
    package = version_.packages[chosen]
    if number == version_.number and model in (None, package.model_sha256):
        return NoOffer, None
    if version_.number < number and not (target and target.rollback):
        return NoOffer, None
    if stored is not None and stored.state == "rolled_back":
        return NoOffer, None
    car_package = {"none": None, "target": package.sha256}.get(base, "pkg-0-lossless")
    if base == "unknown" and not (stored is not None and stored.delta_sha256 and
                                  stored.base_package_sha256 == car_package):
        return NewOffer, "unknown"
    delta = {"known delta": "d", "unknown": stored.delta_sha256 if stored else None}.get(base)
    fits = (stored is not None and stored.codec == chosen and stored.delta_sha256 == delta
            and stored.keyid == POLICY.key_id and stored.expires_at - NOW > timedelta(seconds=1800))
    return (Resend, None) if fits else (NewOffer, delta)


@pytest.mark.parametrize("target", TARGETS)
def test_every_combination_follows_the_rule(target: str) -> None:
    seen: set[type] = set()
    for codecs, car, stored, base in itertools.product(CODECS, CARS, OFFERS, BASES):
        ln, number, model, stored_offer, base_kind = _case(target, codecs, car, stored, base)
        version_ = ln.rollouts[0].version if ln.rollouts and target in ("rollout", "rollback") else ln.stable
        wanted = ln.rollouts[0].codec if ln.rollouts and target in ("rollout", "rollback") else None
        chosen = next((c for c in (wanted, *POLICY.codecs) if version_ and c in version_.packages), "lossless")
        model = model.format(c=chosen) if model else None
        key = (7, version_.id) if target in ("rollout", "rollback") and version_ else (0, version_.id if version_
                                                                                       else 0)
        dev = device(offers={key: stored_offer} if stored_offer else {}, running=number, running_sha=model)
        car_package = {"none": None, "target": f"pkg-{version_.number if version_ else 0}-{chosen}"}.get(
            base_kind, "pkg-0-lossless")
        target_package = f"pkg-{version_.number if version_ else 0}-{chosen}"
        deltas: dict[str, str | None] = ({target_package: "d"} if base_kind == "known delta" else
                                         {target_package: None} if base_kind == "known none" else {})
        got = decide(dev, ln, poll(number, model, car_package, deltas), NOW, POLICY)
        kind, detail = _expected(ln, number, model, stored_offer, base_kind, key)
        where = f"{target}/{codecs}/{car}/{stored}/{base}"
        assert type(got) is kind, where
        assert got.running is None, where  # the device's columns already say what it polls with
        if isinstance(got, NewOffer):
            assert (got.delta_known, got.delta_sha256) == ((False, None) if detail == "unknown" else (True, detail)), where
        if isinstance(got, Resend):
            assert got.envelope_json == ENVELOPE, where
        seen.add(kind)
    if target in ("rollout", "rollback", "stable"):
        assert seen == {NoOffer, Resend, NewOffer}  # the table reaches every outcome


def test_a_car_outside_every_rollout_gets_the_smallest_package_that_passed_the_gate() -> None:
    from server.registry.fidelity import shipping_codec

    exact = {"status": "exact"}
    measured = {"status": "measured", "top1_agreement": 0.995, "probe_count": 64}
    low = {"status": "measured", "top1_agreement": 0.95, "probe_count": 64}
    unmeasured = {"status": "unmeasured", "top1_agreement": None}
    assert shipping_codec([("lossless", 900, exact), ("deep", 100, measured), ("int8", 300, measured)], 0.99) == "deep"
    assert shipping_codec([("lossless", 900, exact), ("deep", 100, low)], 0.99) == "lossless"
    assert shipping_codec([("lossless", 900, exact), ("deep", 100, unmeasured)], 0.99) == "lossless"
    assert shipping_codec([("deep", 100, unmeasured)], 0.99) is None
    assert shipping_codec([("deep", 100, measured)], None) is None  # no gate: nothing measured passes it
