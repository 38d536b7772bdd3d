"""More version series for the codec benchmark, so that no delta figure rests on one training run.

    .venv/bin/python bench/series.py --out DIR --series b     (needs the [train] extra: PyTorch CPU)
    .venv/bin/python bench/codec.py --series DIR

``make train`` trains the shipped series from scratch (v1, about 9 minutes here); the codec's
deltas are about the *updates* after it, so each extra series starts from the shipped ``v1`` and
``v2`` (their ONNX weights loaded into our PyTorch SqueezeNet 1.1) and retrains the updates with
other seeds, data, weather mixes and schedules:

- ``b``: v3 = full fine-tune at 3x the shipped learning rate (3e-4), 2 epochs, fog-heavy data;
  v4 = new class (``general_danger``) at 1e-4, 3 epochs;
- ``c``: v3 = full fine-tune at half the shipped learning rate (5e-5), 4 epochs, night-heavy data;
  v4 = new class at 4e-4, 2 epochs, its new filters drawn with another seed;
- ``chain``: a 10-version line for the server's keyframe storage: v1, v2 shipped, then eight
  successive small updates (full fine-tunes at 1e-4 of one epoch on 1,500 new images each, the
  class added at v6).

The road-sign generator draws 11 classes, so every new-class step adds ``general_danger`` (the
shipped series' new class too); the series differ in seeds, data, schedule and the new filters'
initialization, not in which class is new.  Each series directory gets ``v*.onnx``, the shipped
probe (``probe.npz``) and a ``manifest.json`` in the zoo's format (scenario, parent), so
``bench/codec.py --series DIR`` reads it like the zoo.  Deterministic kernels, 2 threads, seeds fixed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from models.training.onnx_weights import conv_modules, conv_weight_names  # noqa: E402
from models.training.squeezenet import SqueezeNet  # noqa: E402
from models.training.train import ALL_CLASSES, Recipe, _export, accuracy, train  # noqa: E402

ZOO = ROOT / "models" / "zoo"
FOG = (("clear", "fog", "night"), (0.2, 0.6, 0.2))
NIGHT = (("clear", "fog", "night"), (0.2, 0.2, 0.6))
MIXED = (("clear", "fog", "night"), (0.4, 0.3, 0.3))


@dataclass
class Step:
    recipe: Recipe
    seed: int  # torch seed of the run (batch order, dropout, new filters)


def _fine(name: str, parent: str, data_seed: int, lr: float, epochs: int, n: int, weathers, seed: int,
          classes: int = 10) -> Step:
    scenario = "one more class (general_danger), full fine-tune" if classes == ALL_CLASSES and parent != "v5" \
        else "full fine-tune, small learning rate"
    return Step(Recipe(name, scenario, parent, classes, data_seed, n, epochs, lr, weathers=weathers), seed)


def _chain() -> list[Step]:
    steps = []
    for k in range(3, 11):
        classes = ALL_CLASSES if k >= 6 else 10
        step = _fine(f"v{k}", f"v{k - 1}", 300 + k, 1e-4, 1, 1500, MIXED, 7000 + k, classes)
        if k != 6:
            step.recipe.scenario = "full fine-tune, small learning rate"
        steps.append(step)
    return steps


SERIES: dict[str, list[Step]] = {
    "b": [_fine("v3", "v2", 113, 3e-4, 2, 6000, FOG, 5003),
          _fine("v4", "v3", 114, 1e-4, 3, 6600, MIXED, 5004, ALL_CLASSES)],
    "c": [_fine("v3", "v2", 123, 5e-5, 4, 6000, NIGHT, 6003),
          _fine("v4", "v3", 124, 4e-4, 2, 6600, MIXED, 6004, ALL_CLASSES)],
    "chain": _chain(),
}


def load(path: Path) -> SqueezeNet:
    """A PyTorch SqueezeNet 1.1 holding a zoo ONNX file's weights (convolutions in execution order)."""
    proto = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    names = conv_weight_names(proto.graph)
    model = SqueezeNet("1_1", int(arrays[names[-1][0]].shape[0]))
    convs = conv_modules(model)
    if len(convs) != len(names):
        raise ValueError(f"{path} has {len(names)} convolutions; SqueezeNet 1.1 has {len(convs)}")
    with torch.no_grad():
        for conv, (w, b) in zip(convs, names, strict=True):
            conv.weight.copy_(torch.from_numpy(arrays[w].copy()))
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(arrays[b].copy()))
    return model


def make(series: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    shipped = json.loads((ZOO / "manifest.json").read_text())
    entries = [v for v in shipped["versions"] if v["version"] in ("v1", "v2")]
    for v in ("v1", "v2"):
        shutil.copyfile(ZOO / f"{v}.onnx", out / f"{v}.onnx")
    shutil.copyfile(ZOO / "probe.npz", out / "probe.npz")
    from models.roadsigns import make_dataset
    test_clear = make_dataset(1100, ALL_CLASSES, 100, ("clear",))
    test_weather = make_dataset(1100, ALL_CLASSES, 101, ("fog", "night"))
    models = {"v2": load(ZOO / "v2.onnx")}
    for step in SERIES[series]:
        r, t0 = step.recipe, time.time()
        torch.manual_seed(step.seed)
        model = SqueezeNet("1_1", models[r.parent].num_classes)
        model.load_state_dict(models[r.parent].state_dict())
        if r.num_classes != model.num_classes:
            model.grow_classes(r.num_classes, torch.Generator().manual_seed(step.seed + 100))
        train(model, r, seed=step.seed + 200, log=False)
        models[r.name] = model
        _export(model, out / f"{r.name}.onnx", r.name)
        acc = {"clear": round(accuracy(model, *test_clear), 4), "fog_night": round(accuracy(model, *test_weather), 4)}
        entries.append({"version": r.name, "file": f"{r.name}.onnx", "scenario": r.scenario, "parent": r.parent,
                        "heldout_accuracy": acc,
                        "train": {"images": r.n_train, "epochs": r.epochs, "lr": r.lr, "data_seed": r.data_seed,
                                  "seed": step.seed}})
        print(f"{series} {r.name}: {r.scenario} lr {r.lr} -> held-out {acc} in {time.time() - t0:.0f}s", flush=True)
    manifest = {**{k: v for k, v in shipped.items() if k != "versions"}, "series": series, "versions": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--series", choices=sorted(SERIES), required=True)
    args = ap.parse_args(argv)
    make(args.series, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
