"""Who is in a simulated fleet (pure): device ids, tags, link profiles and camera climates, from a seed.

``plan_fleet`` decides everything random about the cars up front, so the same
``--seed`` gives the same fleet (ids, regions, hardware, networks, ONNX Runtime
releases, who parks for a long time) on every run; the asyncio side only executes the plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from simulator.camera import pick_climate
from simulator.link import MIXED_SHARES, PROFILES

REGIONS = {"eu": 0.45, "us": 0.35, "apac": 0.2}
HARDWARE = {"gen1": 0.3, "gen2": 0.5, "gen3": 0.2}
#: The ONNX Runtime releases a simulated fleet runs (issue 20): a quarter of the cars were built with 1.14, which
#: loads models up to opset 18; the rest run a current release (protocol.platform.ORT_SUPPORT's newest row).
RUNTIMES = {"1.14": 0.25, "1.23": 0.75}


class FleetSpecError(ValueError):
    """The fleet cannot be built as asked (bad car count, unknown network name)."""


@dataclass(frozen=True)
class CarSpec:
    """One simulated car: identity, tags, link profile, and the seed of its own randomness.

    ``climate`` (``simulator.camera.CLIMATES``) is what its camera mostly sees: clear weather, fog or night.
    """

    device_id: str
    network: str
    region: str
    hw: str
    seed: int
    tags: dict[str, str] = field(default_factory=dict)
    climate: str = "clear"
    runtime: str = "1.23"  # the ONNX Runtime release it reports (``RUNTIMES``; its modelled platform)


def pick_runtime(seed: int) -> str:
    """A car's ONNX Runtime release, from its own seed (an rng of its own: the fleet's other draws stay as they were)."""
    return _pick(random.Random(seed ^ 0x0A7), RUNTIMES)


def _pick(rng: random.Random, shares: dict[str, float]) -> str:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def network_shares(networks: str) -> dict[str, float]:
    """The profile mix for ``--networks``: ``mixed`` or one profile name (``2g``, ``3g``, ``lte``, ``wifi``).

    Raises:
        FleetSpecError: an unknown name.
    """
    if networks == "mixed":
        return dict(MIXED_SHARES)
    if networks in PROFILES:
        return {networks: 1.0}
    raise FleetSpecError(f"unknown network {networks!r}; choose mixed or one of {', '.join(PROFILES)}")


def plan_fleet(cars: int, networks: str = "mixed", seed: int = 0, prefix: str = "car") -> list[CarSpec]:
    """``cars`` car specs; the network mix follows ``network_shares`` exactly (largest remainder), the rest is random.

    Raises:
        FleetSpecError: ``cars`` < 1 or an unknown network name.
    """
    if cars < 1:
        raise FleetSpecError(f"a fleet needs at least one car, got {cars}")
    shares = network_shares(networks)
    rng = random.Random(seed)
    # Exact counts per profile (so a 20-car test fleet still has its 2G cars), then shuffled.
    raw = {name: share * cars for name, share in shares.items()}
    counts = {name: int(v) for name, v in raw.items()}
    for name in sorted(raw, key=lambda n: raw[n] - counts[n], reverse=True)[: cars - sum(counts.values())]:
        counts[name] += 1
    nets = [name for name, n in counts.items() for _ in range(n)]
    rng.shuffle(nets)
    width = max(4, len(str(cars)))
    specs = []
    for i, net in enumerate(nets):
        region, hw = _pick(rng, REGIONS), _pick(rng, HARDWARE)
        seed = rng.getrandbits(32)
        runtime = pick_runtime(seed)
        specs.append(CarSpec(device_id=f"{prefix}-{i + 1:0{width}d}", network=net, region=region, hw=hw,
                             seed=seed, tags={"region": region, "hw": hw, "network": net, "runtime": runtime},
                             climate=pick_climate(seed), runtime=runtime))
    return specs


def auto_poll_interval(cars: int, time_scale: float, max_polls_per_real_s: float = 60.0, floor_s: float = 60.0) -> float:
    """A simulated poll interval that keeps the fleet under ``max_polls_per_real_s`` real polls per second.

    Time-scaling the cars multiplies their poll rate; a registry on a shared 2-core machine answers a few
    hundred polls a second, and the simulator needs the same cores, so large or fast fleets poll less often.
    """
    return max(floor_s, cars / max_polls_per_real_s * time_scale)


def auto_inference_interval(cars: int, time_scale: float, max_real_per_s: float = 50.0, floor_s: float = 20.0) -> float:
    """Simulated seconds between one car's camera inferences, so the fleet runs at most ``max_real_per_s``.

    Every inference is a real ONNX Runtime call on this machine's cores, which the cars' updates and the
    registry also need.
    """
    return max(floor_s, cars / max_real_per_s * time_scale)
