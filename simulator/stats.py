"""Fleet figures from per-car results (pure): the summary table rows and the ``--json`` object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.link import PROFILES


@dataclass(frozen=True)
class CarResult:
    """What one car did during a run (filled in by the runner from the live car)."""

    device_id: str
    network: str
    start_version: int
    end_version: int
    installs: list[dict[str, Any]]  # InstallRecord fields + time_to_update_s
    failed: bool
    rolled_back: int
    artifact_bytes: int
    drops: int
    inferences: int
    failed_inferences: int
    offline_now: bool = False
    failures: dict[int, str] = field(default_factory=dict)  # target version -> reported reason
    runtime: str = ""  # the ONNX Runtime release it reports (issue 20)
    end_model_sha256: str | None = None  # the model it runs: which export of its version (issue 20, variants)


@dataclass
class ProfileRow:
    network: str
    cars: int = 0
    updated: int = 0
    failed: int = 0
    installs: int = 0
    delta_installs: int = 0
    bytes: int = 0
    drops: int = 0
    times_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"network": self.network, "cars": self.cars, "updated": self.updated, "failed": self.failed,
                "installs": self.installs, "delta_installs": self.delta_installs, "bytes": self.bytes,
                "bytes_per_car": round(self.bytes / self.cars) if self.cars else 0, "drops": self.drops,
                "p50_time_to_update_s": percentile(self.times_s, 50), "p95_time_to_update_s": percentile(self.times_s, 95)}


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return round(ordered[k], 2)


def per_profile(results: list[CarResult]) -> list[ProfileRow]:
    """One row per network profile present, in the order of ``PROFILES``."""
    rows: dict[str, ProfileRow] = {}
    for r in results:
        row = rows.setdefault(r.network, ProfileRow(r.network))
        row.cars += 1
        row.updated += bool(r.installs)
        row.failed += r.failed
        row.installs += len(r.installs)
        row.delta_installs += sum(1 for i in r.installs if i["artifact"] == "delta")
        row.bytes += r.artifact_bytes
        row.drops += r.drops
        row.times_s += [i["time_to_update_s"] for i in r.installs]
    return [rows[n] for n in [*PROFILES, *sorted(set(rows) - set(PROFILES))] if n in rows]


def summary(results: list[CarResult], wall_s: float, time_scale: float) -> dict[str, Any]:
    """The final JSON object of ``ota simulate --json``.

    ``bytes_sent`` is what the cars received from artifact downloads (including bytes of attempts a drop cut
    short); ``bytes_full_fp32`` and ``bytes_full_package`` are what the same installs would have moved as
    full fp32 ONNX files and as full compressed packages.
    """
    installs = [i for r in results for i in r.installs]
    return {
        "cars": len(results),
        "updated": sum(1 for r in results if r.installs),
        "failed": sum(1 for r in results if r.failed),
        "rolled_back": sum(1 for r in results if r.rolled_back),
        "installs": len(installs),
        "delta_installs": sum(1 for i in installs if i["artifact"] == "delta"),
        "bytes_sent": sum(r.artifact_bytes for r in results),
        "bytes_full_fp32": sum(i["model_bytes"] for i in installs),
        "bytes_full_package": sum(i["package_bytes"] for i in installs),
        "drops": sum(r.drops for r in results),
        "inferences": sum(r.inferences for r in results),
        "failed_inferences": sum(r.failed_inferences for r in results),
        "versions": _histogram(r.end_version for r in results),
        "per_network": [row.as_dict() for row in per_profile(results)],
        "time_scale": time_scale,
        "wall_s": round(wall_s, 2),
    }


def _histogram(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[f"v{v}"] = out.get(f"v{v}", 0) + 1
    return dict(sorted(out.items()))
