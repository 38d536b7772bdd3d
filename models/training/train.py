"""Train the shipped road-sign SqueezeNet version series, deterministically.

    python -m models.training.train --out models/zoo

The series mirrors the updates a fleet really receives:

- ``v1``  trained from scratch on clear-weather signs (10 classes);
- ``v2``  head-only retrain (conv10 only, features frozen) on new data, the
          transfer-learning recipe of the seed's MATLAB demo;
- ``v3``  full fine-tune of v2 with a small learning rate on fog/night images;
- ``v4``  one more class (``general_danger``): conv10 grows, full fine-tune;
- ``v5``  retrained from scratch (new seed, 11 classes).

Each version is exported to ONNX with its class names in the model's
metadata, and ``manifest.json`` records hashes, parents and held-out accuracy.
Seeds, thread count and deterministic kernels are fixed, so the same PyTorch
build on the same CPU reproduces the files bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from models.preprocess import to_input
from models.roadsigns import CLASSES, IMAGE_SIZE, make_dataset
from models.training.squeezenet import SqueezeNet, export_onnx

BASE_CLASSES = 10
ALL_CLASSES = 11
MIXED = (("clear", "fog", "night"), (0.4, 0.3, 0.3))


@dataclass
class Recipe:
    name: str
    scenario: str
    parent: str | None
    num_classes: int
    data_seed: int
    n_train: int
    epochs: int
    lr: float
    head_only: bool = False
    weathers: tuple[tuple[str, ...], tuple[float, ...]] = (("clear",), (1.0,))


RECIPES = [
    Recipe("v1", "trained from scratch", None, BASE_CLASSES, 1, 12000, 16, 6e-4),
    Recipe("v2", "head-only retrain on new data", "v1", BASE_CLASSES, 2, 6000, 3, 1e-3, head_only=True),
    Recipe("v3", "full fine-tune on fog/night, small learning rate", "v2", BASE_CLASSES, 3, 6000, 3, 1e-4, weathers=MIXED),
    Recipe("v4", "one more class (general_danger), full fine-tune", "v3", ALL_CLASSES, 4, 6600, 4, 2e-4, weathers=MIXED),
    Recipe("v5", "retrained from scratch", None, ALL_CLASSES, 5, 13200, 16, 6e-4, weathers=MIXED),
]


def _batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch] for i in range(0, n, batch)]


def train(model: SqueezeNet, recipe: Recipe, seed: int, log: bool = True) -> None:
    images, labels = make_dataset(recipe.n_train, recipe.num_classes, recipe.data_seed, *recipe.weathers)
    x = torch.from_numpy(to_input(images))
    y = torch.from_numpy(labels)
    params = model.final_conv.parameters() if recipe.head_only else model.parameters()
    if recipe.head_only:
        for p in model.features.parameters():
            p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=recipe.lr)
    steps = recipe.epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(recipe.epochs):
        model.train()
        if recipe.head_only:
            model.features.eval()
        total, correct, loss_sum = 0, 0, 0.0
        for idx in _batches(len(y), 64, gen):
            opt.zero_grad()
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx])
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y[idx]).sum())
            total += len(idx)
        if log:
            print(f"  {recipe.name} epoch {epoch + 1}/{recipe.epochs} loss {loss_sum / total:.3f} acc {correct / total:.3f}", flush=True)
    for p in model.parameters():
        p.requires_grad_(True)


def accuracy(model: SqueezeNet, images: np.ndarray, labels: np.ndarray) -> float:
    keep = labels < model.num_classes
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(to_input(images[keep])))
    return float((out.argmax(1).numpy() == labels[keep]).mean())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export(model: SqueezeNet, path: Path, version: str) -> None:
    export_onnx(model, str(path), IMAGE_SIZE)
    proto = onnx.load(str(path))
    for key, value in (("labels", json.dumps(list(CLASSES[: model.num_classes]))), ("version", version)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_version = ""  # keep the bytes independent of the exact torch build string
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "zoo")
    ap.add_argument("--only", nargs="*", help="train only these versions (parents must exist in memory: use with care)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)

    test_clear = make_dataset(1100, ALL_CLASSES, 100, ("clear",))
    test_weather = make_dataset(1100, ALL_CLASSES, 101, ("fog", "night"))
    probe_images, probe_labels = make_dataset(256, ALL_CLASSES, 200, *MIXED)
    np.savez_compressed(args.out / "probe.npz", images=probe_images, labels=probe_labels)

    trained: dict[str, SqueezeNet] = {}
    entries = []
    for i, recipe in enumerate(RECIPES):
        t0 = time.time()
        torch.manual_seed(1000 + i)
        if recipe.parent is None:
            model = SqueezeNet("1_1", recipe.num_classes)
        else:
            model = SqueezeNet("1_1", trained[recipe.parent].num_classes)
            model.load_state_dict(trained[recipe.parent].state_dict())
            if recipe.num_classes != model.num_classes:
                model.grow_classes(recipe.num_classes, torch.Generator().manual_seed(2000 + i))
        print(f"{recipe.name}: {recipe.scenario}", flush=True)
        train(model, recipe, seed=3000 + i)
        trained[recipe.name] = model
        path = args.out / f"{recipe.name}.onnx"
        _export(model, path, recipe.name)
        acc = {
            "clear": round(accuracy(model, *test_clear), 4),
            "fog_night": round(accuracy(model, *test_weather), 4),
        }
        entries.append(
            {
                "version": recipe.name,
                "file": path.name,
                "sha256": _sha256(path),
                "bytes": path.stat().st_size,
                "arch": "squeezenet1_1",
                "scenario": recipe.scenario,
                "parent": recipe.parent,
                "classes": list(CLASSES[: recipe.num_classes]),
                "heldout_accuracy": acc,
                "train": {"images": recipe.n_train, "epochs": recipe.epochs, "lr": recipe.lr, "head_only": recipe.head_only},
            }
        )
        print(f"  {recipe.name}: held-out accuracy {acc} in {time.time() - t0:.0f}s", flush=True)

    manifest = {
        "line": "road-signs",
        "image_size": IMAGE_SIZE,
        "input_name": "input",
        "output_name": "logits",
        "preprocess": {"layout": "NCHW", "scale": 1 / 255, "mean": 0.5, "std": 0.25},
        "probe": {"file": "probe.npz", "images": int(len(probe_labels)), "sha256": _sha256(args.out / "probe.npz")},
        "heldout": {"clear": 1100, "fog_night": 1100, "seeds": [100, 101]},
        "versions": entries,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
