"""The demo's story, told against a running registry over HTTP.

1. Publish v1; a fleet of simulated cars enrols and installs it (full package).
2. A few cars park for a long time (garage, holiday): they fall behind.
3. Publish v2, v3, two bad versions, v4, v5; each goes out as a staged rollout
   (canary, wider, everyone; auto-advance on an installed share after a soak;
   auto-halt on a share of failed or rolled-back cars).  The first bad version
   (``badmodel.nondeterministic_variant``) fails every car's smoke test: the
   canary cars refuse it and keep serving what they ran.  The second
   (``badmodel.live_failure_variant``) passes the smoke test and installs, then
   answers NaN on the cars' live camera frames: each canary car's health window
   fails, the car rolls back to its previous model by itself and reports
   ``rolled_back``.  Both rollouts halt at their canary stage (which soaks for
   one health window, so the verdicts arrive before it widens); no car outside
   it is offered either version.
4. Shadow mode (issue 18): a build of v4 that passes every check above but swaps two speed limits on foggy
   frames (``badmodel.fog_confuser_variant``) goes out with a ``shadow`` stage and quality gates: the shadow
   cars download and verify it, run it beside the live model on a sample of their own camera frames (fog,
   night and region sign sets per car, ``simulator.camera``) and report their agreement; the registry halts
   the rollout in shadow with the failing gate named, and no car ever drives on it.  Then the real v4 goes
   out the same way and its gates promote it from shadow to its live stages.
5. Before v5 the parked cars come back, several versions behind.
6. Mixed runtimes (issue 20): a quarter of the cars run ONNX Runtime 1.14 (opset 18 at most).  v5 re-exported
   at opset 21 (``new-opset``) is published with an opset-17 variant (``--variant-of``); the rollout completes
   with every car on it, the old cars on the variant, and the summary says how many cars got which export and
   how many would have been incompatible without the variant.
7. Transfer learning, as in the seed's MATLAB demo: a second line whose first version is the real
   ImageNet SqueezeNet 1.0 (published with its own Caffe preprocessing, labels and calibration
   images) and whose second is that network with its classifier retrained for the road signs
   (``make train``): it inherits the line's contract (only the labels change, and the registry
   records that), and a car on the line would fetch it as a delta of a few tens of KB.

``run_story`` returns one JSON-able dict: the simulator summary plus, per
published version, the rollout outcome and the registry's own accounting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from models.roadsigns import CLASSES
from models.zoo import ZOO_DIR, contract, model_path
from protocol.platform import Requirements
from simulator.badmodel import (
    DESCRIPTION,
    FOG_DESCRIPTION,
    FOG_MAX_STD,
    FOG_MIN_FLOOR,
    FOG_SWAP,
    LIVE_DESCRIPTION,
    fog_confuser_variant,
    live_failure_variant,
    nondeterministic_variant,
)
from simulator.car import health_window_s, modelled_platform
from simulator.display import LiveView, human_bytes, print_summary
from simulator.fleet import auto_inference_interval, auto_poll_interval, plan_fleet
from simulator.opset import at_opset
from simulator.registry_admin import AdminError, RegistryAdmin
from simulator.runner import Fleet

FINAL_ROLLOUT_STATES = frozenset({"completed", "halted", "aborted"})
#: The mixed-runtime phase (issue 20): v5 at an opset the fleet's ONNX Runtime 1.14 cars cannot load, with a
#: variant at the zoo's own opset for them.
NEW_OPSET, NEW_OPSET_BASE, NEW_OPSET_VERSION, OLD_OPSET = "new-opset", "v5", 21, 17


class StoryError(RuntimeError):
    """The rehearsal could not go on (the registry refused a publish or a rollout); says which step."""


@dataclass
class DemoOptions:
    cars: int = 200
    time_scale: float = 120.0
    seed: int = 0
    networks: str = "mixed"
    quiet: bool = False
    poll_interval_s: float | None = None  # simulated; default: auto_poll_interval (fleet size and time scale)
    inference_interval_s: float | None = None  # simulated, per car; default: auto_inference_interval
    inferences_per_real_s: float = 150.0  # the whole fleet's camera rate when inference_interval_s is None
    parked_share: float = 0.05
    min_soak_s: float = 2.0  # real seconds (the registry's soak clock is its own)
    success_threshold_pct: float = 80.0
    error_threshold_pct: float = 20.0
    phase_timeout_real_s: float = 180.0
    line: str | None = None  # default: "road-signs", or a fresh "road-signs-runN" if that line is taken
    detail: bool = False  # include every car's result in the report (tests)
    versions: list[str] = field(default_factory=lambda: ["v2", "v3", "bad", "bad-live", "fog", "v4", "v5",
                                                         NEW_OPSET])
    # Shadow mode: the versions that begin with a shadow stage, judged by ``gates`` (``protocol.quality``).
    shadowed: frozenset[str] = frozenset({"fog", "v4"})
    # Every car shadows: it costs a download and some CPU, never a wrong answer, and the verdict then rests
    # on the whole fleet's weather rather than on which few cars a small stage happened to hold.
    shadow_percent: float = 100.0
    shadow_sample_every: int = 1  # compare every frame: the demo's cameras take a few frames a second
    shadow_max_cpu_share: float = 0.5
    # The shipped zoo's versions disagree with each other on about 3% of mixed-weather frames (v4 against v3
    # on the simulated cameras: 0.966), which a 0.97 bar would also stop; the fog build agrees on 0.917.
    gates: tuple[str, ...] = ("agreement>=0.94", "min_frames=1000")

    def inference_interval(self) -> float:
        """Simulated seconds between one car's camera frames."""
        return self.inference_interval_s or auto_inference_interval(self.cars, self.time_scale,
                                                                    max_real_per_s=self.inferences_per_real_s)


def stages_for(cars: int, opts: DemoOptions) -> list[dict[str, Any]]:
    """Canary (about six cars, at least 5%), at least a quarter, everyone; each auto-advances.

    The canary soaks for one and a half health windows (in real seconds) after its last install, so a
    version that installs but fails on live frames has been rolled back by its canary cars, and the reports
    have crossed their slow links, before the rollout may widen.
    """
    six = round(600 / cars)  # the percent that holds about six cars
    canary = max(5.0, min(30.0, six))
    canary_soak = max(opts.min_soak_s, 1.5 * health_window_s(opts.inference_interval()) / opts.time_scale)
    return [{"percent": pct, "min_soak_s": soak, "success_threshold_pct": opts.success_threshold_pct}
            for pct, soak in ((canary, canary_soak), (max(25.0, canary + six), opts.min_soak_s),
                              (100.0, opts.min_soak_s))]


def shadow_for(opts: DemoOptions) -> dict[str, Any]:
    """The rollout API's ``shadow`` object for a shadowed version (its soak clock is the registry's, real s)."""
    return {"percent": opts.shadow_percent, "min_s": opts.min_soak_s, "sample_every": opts.shadow_sample_every,
            "max_cpu_share": opts.shadow_max_cpu_share}


def _pick_line(admin: RegistryAdmin, wanted: str | None) -> str:
    if wanted:
        return wanted
    n = 1
    while admin.versions("road-signs" if n == 1 else f"road-signs-run{n}"):
        n += 1
    return "road-signs" if n == 1 else f"road-signs-run{n}"


async def run_story(server_url: str, admin_token: str, enroll_token: str, state_root: Path,
                    opts: DemoOptions, root_public_key: bytes) -> dict[str, Any]:
    """Tell the story; returns the simulator summary and the per-version outcomes.

    Raises:
        StoryError: the registry refused a step.
    """
    console = None if opts.quiet else Console(highlight=False)
    say: Callable[[str], None] = console.print if console else (lambda _m: None)
    admin = RegistryAdmin(server_url, admin_token)
    try:
        return await _tell(admin, server_url, enroll_token, root_public_key, state_root, opts, console, say)
    except AdminError as e:
        raise StoryError(str(e)) from e
    finally:
        admin.close()


async def _tell(admin: RegistryAdmin, server_url: str, enroll_token: str, root_public_key: bytes, state_root: Path,
                opts: DemoOptions, console: Console | None, say: Callable[[str], None]) -> dict[str, Any]:
    line = await asyncio.to_thread(_pick_line, admin, opts.line)
    prefix = "car" if line == "road-signs" else f"{line.rsplit('-', 1)[-1]}-car"
    poll_s = opts.poll_interval_s or auto_poll_interval(opts.cars, opts.time_scale)
    fleet = Fleet(server_url, plan_fleet(opts.cars, opts.networks, opts.seed, prefix), state_root / line,
                  enroll_token=enroll_token, root_public_key=root_public_key, time_scale=opts.time_scale,
                  poll_interval_s=poll_s,
                  line=line, inference_interval_s=opts.inference_interval())
    outcomes: list[dict[str, Any]] = []
    started = time.monotonic()
    say(f"line [bold]{line}[/bold]: {opts.cars} simulated cars ({opts.networks} networks), time x{opts.time_scale:g}, "
        f"each polls every {poll_s / 60:.1f} simulated min")

    # the road-sign line is published as any user's model: its contract, and its calibration images once
    v1 = await asyncio.to_thread(admin.publish, model_path("v1"), line, "v1: trained from scratch",
                                 contract=contract("v1").to_dict(), probe=ZOO_DIR / "probe.npz")
    say(_published("v1", v1))
    outcomes.append({"name": "v1", "version": v1["version"], "rollout": None, "note": "first version: stable"})
    with LiveView(console) as view:
        view.headline = f"v1 -> {opts.cars} cars (enrol, full download)"
        await fleet.start()
        ok = await fleet.wait_settled(opts.phase_timeout_real_s, view.update)
    say(f"v1 installed on {fleet.snapshot()['versions'].get(v1['version'], 0)} of {opts.cars} cars"
        + ("" if ok else " (timed out waiting for the rest)"))

    rng = random.Random(opts.seed ^ 0xCA7)
    parked = rng.sample(fleet.cars, k=int(opts.parked_share * opts.cars))
    for car in parked:
        car.link.go_offline(1e9)
    if parked:
        say(f"{len(parked)} cars park in garages (offline) and will miss the next rollouts")

    try:
        for name in opts.versions:
            if name == opts.versions[-1] and parked:
                for car in parked:
                    car.link.go_offline(0)
                say(f"{len(parked)} parked cars come back, several versions behind")
            last = name == opts.versions[-1]
            outcomes.append(await _rollout_phase(admin, fleet, line, name, opts, console, say, last))
    finally:
        summary = fleet.summary()
        await fleet.stop()
    transfer = await asyncio.to_thread(_transfer_line, admin, f"imagenet-{line}", state_root, say)
    gates = gate_summary(outcomes)
    variants = next((o["variants"] for o in outcomes if "variants" in o), None)
    if console:
        print_summary(console, summary)
        _print_outcomes(console, outcomes)
        if gates:
            console.print("Quality gates (shadow mode):")
            for g in gates:
                console.print(_gate_line(g))
        if variants:
            console.print("Variants (mixed runtimes): " + variant_line(variants))
    detail = {"cars_detail": [asdict(r) for r in fleet.results()]} if opts.detail else {}
    return {**summary, **detail, "parked": sorted(c.spec.device_id for c in parked), "line": line, "server": server_url, "dashboard": f"{server_url}/dashboard",
            "story_wall_s": round(time.monotonic() - started, 1), "rollouts": outcomes, "quality_gates": gates,
            "variants": variants,
            "transfer": transfer}


def _transfer_line(admin: RegistryAdmin, line: str, state_root: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Publish the ImageNet SqueezeNet as v1 of ``line`` and its road-sign transfer as v2; what each costs.

    Lossless packages (exact, so no gate to wait for: the deep codec's search on this 5 MB model takes
    about a minute, see bench/pretrained.py); calibration images are road signs rendered at the model's
    size, what the line will see.
    """
    import io

    import numpy as np

    from models.imagenet_line import CAFFE_PREPROCESS, imagenet_labels, imagenet_path, roadsigns_path
    from models.roadsigns import make_dataset

    images, _ = make_dataset(48, 11, seed=17, size=227)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images)
    probe = state_root / "imagenet-signs-probe.npz"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(buf.getvalue())
    spec = {**CAFFE_PREPROCESS, "labels": list(imagenet_labels())}
    v1 = admin.publish(imagenet_path(), line, "the real ImageNet SqueezeNet 1.0 (models/pretrained)",
                       contract=spec, probe=probe, codecs="lossless")
    v2 = admin.publish(roadsigns_path(), line, "conv10 retrained for the road signs (make train)", codecs="lossless")
    full, delta = v2["packages"]["lossless"]["bytes"], v2["packages"]["lossless"].get("delta_from_previous")
    say(f"line [bold]{line}[/bold]: v1 the ImageNet SqueezeNet ({human_bytes(v1['source_bytes'])}, "
        f"{len(v1['contract']['labels'])} classes), v2 its transfer to {len(v2['contract']['labels'])} road-sign "
        f"classes: contract change {', '.join(v2.get('contract_changed') or []) or 'none'}; a car on v1 fetches "
        f"{human_bytes(delta or full)} instead of {human_bytes(full)}")
    return {"line": line, "versions": [v1["version"], v2["version"]], "contract_changed": v2.get("contract_changed"),
            "package_bytes": full, "delta_bytes": delta}


def _published(name: str, v: dict[str, Any]) -> str:
    pk = ", ".join(f"{c} {human_bytes(p['bytes'])}" for c, p in v.get("packages", {}).items())
    return f"published {name} as version {v['version']}: fp32 {human_bytes(v['source_bytes'])}; packages {pk}"


async def _rollout_phase(admin: RegistryAdmin, fleet: Fleet, line: str, name: str, opts: DemoOptions,
                         console: Console | None, say: Callable[[str], None], last: bool) -> dict[str, Any]:
    """Publish ``name``, roll it out in stages, and wait until the registry decided and the cars acted.

    After the last version, wait for cars in dead zones too, so that every car ends on it or on a failure.
    """
    codecs = None
    if name == "bad":
        base = "v3"
        data = nondeterministic_variant(model_path(base).read_bytes())
        note = DESCRIPTION.format(base=base, scale=0.5)
        codecs = "lossless"  # a lossy package's gate would see the noise and refuse the publish itself
    elif name == "bad-live":
        base = "v3"
        data = live_failure_variant(model_path(base).read_bytes())
        note = LIVE_DESCRIPTION.format(base=base)
    elif name == "fog":
        base = "v4"
        data = fog_confuser_variant(model_path(base).read_bytes(), (CLASSES.index(FOG_SWAP[0]),
                                                                    CLASSES.index(FOG_SWAP[1])))
        note = FOG_DESCRIPTION.format(base=base, a=FOG_SWAP[0], b=FOG_SWAP[1], floor=FOG_MIN_FLOOR,
                                      contrast=FOG_MAX_STD)
    elif name == NEW_OPSET:
        base = NEW_OPSET_BASE
        data = at_opset(model_path(base).read_bytes(), NEW_OPSET_VERSION, f"opset {NEW_OPSET_VERSION}")
        note = f"{base} re-exported at opset {NEW_OPSET_VERSION} (ONNX Runtime 1.16 or newer loads it)"
    else:
        base = name
        data = model_path(name).read_bytes()
        note = f"{name} from the shipped zoo"
    v = await asyncio.to_thread(admin.publish, data, line, note, contract=contract(base).to_dict(), codecs=codecs)
    if name == NEW_OPSET:  # the same weights at the zoo's opset, for the cars whose runtime stops at 18
        old = at_opset(model_path(base).read_bytes(), OLD_OPSET, f"opset {OLD_OPSET} variant")
        v = await asyncio.to_thread(admin.publish, old, line, f"{base} at opset {OLD_OPSET} for older runtimes",
                                    contract=contract(base).to_dict(), codecs=codecs, variant_of=v["version"])
        say(f"  variant 1 of version {v['version']}: opset {OLD_OPSET}, for cars whose ONNX Runtime cannot load "
            f"opset {NEW_OPSET_VERSION}")
    bad = name.startswith("bad") or name == "fog"
    say(_published(name, v) + (f"\n  [yellow]bad version[/yellow]: {note}" if bad else ""))
    stages = stages_for(len(fleet.cars), opts)
    quality: dict[str, Any] = {}
    if name in opts.shadowed:
        quality = {"shadow": shadow_for(opts), "gates": list(opts.gates)}
        # the shadow cars go live first (the registry's stages are cumulative from the shadow stage): a version
        # every car has shadowed goes live on the stages at least that wide
        stages = [s for s in stages if s["percent"] >= opts.shadow_percent] or stages[-1:]
        say(f"  shadow stage on {opts.shadow_percent:g}% of the cars (every {opts.shadow_sample_every} frame"
            f"{'s' if opts.shadow_sample_every > 1 else ''}), gates {', '.join(opts.gates)}")
    r = await asyncio.to_thread(admin.start_rollout, line, v["version"], stages,
                                error_threshold_pct=opts.error_threshold_pct, **quality)
    rid = r["id"]
    stages = r.get("stages") or stages  # with a shadow stage, stage 0 is the shadow one
    t0 = time.monotonic()
    final_at: float | None = None
    seen_stage, stage_since, operator_advanced = -1, time.monotonic(), []
    with LiveView(console) as view:
        deadline = time.monotonic() + opts.phase_timeout_real_s
        while True:
            ro = await asyncio.to_thread(admin.rollout, rid)
            view.headline = (f"{name} (version {v['version']}) rollout {rid}: {ro['state']}, stage "
                             f"{ro['current_stage'] + 1}/{len(stages)} ({_stage_label(ro['stages'][ro['current_stage']])})")
            view.update(fleet.snapshot())
            stage = ro["current_stage"]
            if stage != seen_stage:
                seen_stage, stage_since = stage, time.monotonic()
            elif (ro["state"] == "running" and _holds(ro["stages"], stage) == 0
                  and ro["stages"][stage].get("mode") != "shadow"  # only its gates may end a shadow stage
                  and time.monotonic() - stage_since > opts.min_soak_s + 2):
                # The registry waits for an installed share of an empty stage forever; an operator would advance.
                await asyncio.to_thread(admin.act, rid, "advance")
                operator_advanced.append(stage)
                say(f"  stage {stage + 1} of rollout {rid} holds no car: advanced by hand")
                continue
            if ro["state"] in FINAL_ROLLOUT_STATES:
                # the registry has decided; wait until every online car has polled since and acted on it
                final_at = fleet.clock.now() if final_at is None else final_at
                if fleet.settled(final_at, include_offline=last):
                    break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    acc = await asyncio.to_thread(admin.accounting, rid)
    t = acc["totals"]
    gate = quality_outcome(ro)
    outcome = {
        "name": name, "version": v["version"], "rollout": rid, "state": ro["state"],
        "stage_reached": ro["current_stage"], "stages": len(stages), "reason": ro.get("reason"),
        "timed_out": ro["state"] not in FINAL_ROLLOUT_STATES,
        "stage_counts": [s["counts"] | {"assigned": s["assigned"]} for s in ro["stages"]],
        "bytes_sent": t["bytes_sent"], "delta_bytes": t["delta_bytes"], "full_bytes": t["full_bytes"],
        "devices_updated": t["devices_updated"], "resumes": t["resumes"],
        "rolled_back": sum(s["counts"].get("rolled_back", 0) for s in ro["stages"]),
        "failed": sum(s["counts"].get("failed", 0) for s in ro["stages"]),
        "fp32_bytes_equivalent": t["fp32_bytes_equivalent"], "package_bytes_equivalent": t["package_bytes_equivalent"],
        "operator_advanced_stages": operator_advanced, "note": note, "phase_wall_s": round(time.monotonic() - t0, 1),
        "shadow": bool(quality), "installed": sum(s["counts"].get("installed", 0) for s in ro["stages"]),
        **gate,
    }
    if name == NEW_OPSET:
        outcome["variants"] = variant_outcome(v, fleet)
        say("  " + variant_line(outcome["variants"]))
    say(_outcome_line(outcome))
    return outcome


def variant_outcome(v: dict[str, Any], fleet: Fleet) -> dict[str, Any]:
    """Which export of version ``v`` each car runs (by its model's SHA-256), and how many cars could not have
    run the version without its variants (their modelled platform misses the version's own requirements)."""
    exports = {p["model_sha256"]: "primary" for p in v["packages"].values()}
    for var in v.get("variants") or []:
        exports.update({p["model_sha256"]: f"variant {var['variant']}" for p in var["packages"].values()})
    needs = Requirements.from_dict(v["requirements"]) if v.get("requirements") else Requirements()
    got: dict[str, int] = {}
    by_runtime: dict[str, dict[str, int]] = {}
    for r in fleet.results():
        which = exports.get(r.end_model_sha256 or "", "other") if r.end_version == v["version"] else "other"
        got[which] = got.get(which, 0) + 1
        by_runtime.setdefault(r.runtime, {}).setdefault(which, 0)
        by_runtime[r.runtime][which] += 1
    unfit = sum(1 for car in fleet.cars if needs.unmet(modelled_platform(car.spec)))
    return {"version": v["version"], "cars_by_export": dict(sorted(got.items())), "by_runtime": by_runtime,
            "incompatible_without_variants": unfit}


def variant_line(o: dict[str, Any]) -> str:
    got = ", ".join(f"{n} on the {k}" for k, n in o["cars_by_export"].items())
    return (f"version {o['version']}: {got}; without the variant {o['incompatible_without_variants']} cars "
            "could not have run it")


def _stage_label(stage: dict[str, Any]) -> str:
    return ("shadow, " if stage.get("mode") == "shadow" else "") + f"{stage['percent']:g}%"


def quality_outcome(ro: dict[str, Any]) -> dict[str, Any]:
    """What the quality gates did to a rollout (``GET /rollouts/{id}``): the figures the demo reports.

    ``gate_verdict`` is the registry's ``quality.verdict.describe``; ``stopped_by`` the failing gate when the
    rollout halted on one; ``promoted_by_gates`` whether it left its shadow stage for a live one.
    """
    q = ro.get("quality") or {}
    if not q:
        return {"gates": [], "gate_verdict": None, "stopped_by": None, "promoted_by_gates": None,
                "shadow_figures": None}
    verdict = q.get("verdict") or {}
    stages = ro.get("stages") or []
    shadowed = bool(stages) and stages[0].get("mode") == "shadow"
    figures = (q.get("summaries") or {}).get("shadow")
    return {
        "gates": list(q.get("gates") or []), "gate_verdict": verdict.get("describe"),
        "stopped_by": verdict.get("failing") if ro.get("state") == "halted" else None,
        "promoted_by_gates": shadowed and ro.get("current_stage", 0) > 0,
        "shadow_figures": None if figures is None else {
            k: figures.get(k) for k in ("frames", "agreement", "latency_p99_ratio", "class_shift", "cars")},
    }


def gate_summary(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which gate stopped which version, and which versions their gates promoted (the demo's last word)."""
    out = []
    for o in outcomes:
        if not o.get("gates"):
            continue
        what = ("halted in shadow" if o["state"] == "halted" and o["stage_reached"] == 0
                else "halted" if o["state"] == "halted"
                else "promoted from shadow" if o.get("promoted_by_gates") else o["state"])
        out.append({"name": o["name"], "version": o["version"], "rollout": o["rollout"], "outcome": what,
                    "stopped_by": o.get("stopped_by"), "verdict": o.get("gate_verdict"),
                    "reason": o.get("reason"), "figures": o.get("shadow_figures")})
    return out


def _gate_line(g: dict[str, Any]) -> str:
    f = g.get("figures") or {}
    seen = (f" (agreement {f['agreement']:.3f} on {int(f['frames'])} frames)"
            if f.get("agreement") is not None and f.get("frames") else "")
    if g["stopped_by"]:
        return f"  {g['name']} (version {g['version']}): [red]{g['outcome']}[/red] by gate {g['stopped_by']}{seen}"
    return f"  {g['name']} (version {g['version']}): [green]{g['outcome']}[/green]: {g['verdict'] or '-'}{seen}"


def _holds(stages: list[dict[str, Any]], stage: int) -> int:
    """Cars the registry counts for ``stage``: its own, and the shadow stage's when it is the first live stage
    (the shadow cars go live with it)."""
    held = int(stages[stage]["assigned"])
    if stage == 1 and stages[0].get("mode") == "shadow":
        held += int(stages[0]["assigned"])
    return held


def _outcome_line(o: dict[str, Any]) -> str:
    stage = f"stage {o['stage_reached'] + 1}/{o['stages']}"
    colour = {"completed": "green", "halted": "red"}.get(o["state"], "yellow")
    return (f"  rollout {o['rollout']} ({o['name']}): [{colour}]{o['state']}[/{colour}] at {stage}; "
            f"{o['devices_updated']} cars updated, {human_bytes(o['bytes_sent'])} sent "
            f"({human_bytes(o['delta_bytes'])} as deltas, {o['resumes']} resumed requests)"
            + (f"; {o['failed']} refused it" if o.get("failed") else "")
            + (f"; {o['rolled_back']} installed it and rolled back" if o.get("rolled_back") else "")
            + (f"; {o['reason']}" if o.get("reason") else "")
            + (f"; gates: {o['gate_verdict']}" if o.get("gate_verdict") else ""))


def _print_outcomes(console: Console, outcomes: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title="Rollouts")
    for col in ("version", "what", "rollout", "outcome", "stage reached", "cars updated", "bytes sent",
                "vs fp32", "vs package", "quality gates"):
        t.add_column(col)
    for o in outcomes:
        if o["rollout"] is None:
            t.add_row(str(o["version"]), o["name"], "-", "stable (first version)", "-", "-", "-", "-", "-", "-")
            continue
        t.add_row(str(o["version"]), o["name"], str(o["rollout"]), o["state"] + (" (timed out)" if o["timed_out"] else ""),
                  f"{o['stage_reached'] + 1}/{o['stages']}", str(o["devices_updated"]), human_bytes(o["bytes_sent"]),
                  _pct(o["bytes_sent"], o["fp32_bytes_equivalent"]), _pct(o["bytes_sent"], o["package_bytes_equivalent"]),
                  (f"stopped by {o['stopped_by']}" if o.get("stopped_by") else o.get("gate_verdict") or "-"))
    console.print(t)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
