"""Transfer learning from the real ImageNet SqueezeNet 1.0 to the road-sign classes, deterministically.

    python -m models.training.transfer --out models/pretrained [--recipe head] [--compare]

As in the seed's MATLAB demo: take the pretrained network, replace its last learnable layer
(conv10: 1000 ImageNet classes) with one for the eleven road-sign classes, retrain, classify.

1. The ONNX initializers of ``squeezenet1.0-imagenet.onnx`` go into our PyTorch SqueezeNet 1.0
   (:mod:`models.training.onnx_weights`); its forward pass is checked against ONNX Runtime on
   natural photos (same top-1, max abs difference printed and bounded).
2. Road signs are rendered at 227x227 and put through the *ImageNet model's own* contract
   (BGR, 0..255 minus the Caffe mean): the new version keeps the line's input.
3. The frozen part of the network (conv1 .. the last max-pool) runs once per image in ONNX
   Runtime on the source model (the same weights; ~2x faster than PyTorch on this CPU), and
   its outputs are cached; only the tail (fire9 and/or conv10) is trained in PyTorch.
4. The trained weights are written back into a copy of the source graph under its own names
   (:func:`~models.training.onnx_weights.graft`): same input ``data`` 1x3x227x227, same Softmax
   output ``prob`` (now 1x11), class names in the ``labels`` metadata.  The artifact is checked
   with ONNX Runtime against the PyTorch tail before it is written.

Recipes (``--compare`` trains both and prints their held-out accuracy and the number of source
bytes each changes, the cost of the update to a car):

- ``head``: conv10 only, everything else frozen;
- ``head+fire9``: conv10 plus the last fire module at a 10x smaller learning rate.

Held-out accuracy is measured as for the zoo (``models.training.train``): 1,100 clear-weather
images (seed 100) and 1,100 fog/night images (seed 101), here rendered at 227x227.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from models import imagenet_line
from models.contract import InputContract
from models.preprocess import preprocess
from models.roadsigns import CLASSES, make_dataset
from models.sessions import open_session
from models.training.onnx_weights import graft, load_squeezenet
from models.training.squeezenet import SqueezeNet
from models.training.train import MIXED

if TYPE_CHECKING:
    import onnxruntime as ort

SIZE = 227
#: The frozen part ends at the last max-pool; fire9 (the last fire module) and conv10 follow it.
TAP = "/MaxPool_2_output_0"
CHUNK = 16
PARITY_TOLERANCE = 1e-4  # max abs difference of probabilities, PyTorch vs ONNX Runtime


@dataclass(frozen=True)
class Recipe:
    name: str
    train_fire9: bool
    epochs: int
    lr: float
    lr_fire9: float = 0.0


RECIPES = {
    "head": Recipe("head", train_fire9=False, epochs=20, lr=1e-3),
    "head+fire9": Recipe("head+fire9", train_fire9=True, epochs=12, lr=1e-3, lr_fire9=1e-4),
}
DEFAULT_RECIPE = "head"
N_TRAIN = 2200  # 200 per class, mixed weather (clear 40%, fog 30%, night 30%)
N_TEST = 1100
TRAIN_SEED = 6  # the zoo uses data seeds 1..5 (train), 100, 101 (held out), 200 (probe)


def _tap_session(source: onnx.ModelProto) -> tuple[ort.InferenceSession, str]:
    """An ONNX Runtime session on the source graph that also outputs the frozen part's result, any batch."""
    proto = copy.deepcopy(source)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(TAP, onnx.TensorProto.FLOAT, None))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = "batch"  # the source is fixed to batch 1; nothing in its graph depends on that
    for out in proto.graph.output:
        if out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.dim[0].Clear()
            out.type.tensor_type.shape.dim[0].dim_param = "batch"
    return open_session(proto.SerializeToString(), intra_threads=2), proto.graph.input[0].name


def frozen_features(session: ort.InferenceSession, input_name: str, images: np.ndarray, contract: InputContract) -> np.ndarray:
    """The frozen part's output (N, 512, 13, 13) for uint8 images, through the line's contract."""
    out = []
    for i in range(0, len(images), CHUNK):
        x = preprocess(images[i : i + CHUNK], contract)
        out.append(session.run([TAP], {input_name: x})[0])
    return np.concatenate(out)


def check_parity(model: SqueezeNet, source: onnx.ModelProto, contract: InputContract) -> float:
    """PyTorch (weights loaded from ONNX) vs ONNX Runtime on the source, on natural photos: same top-1.

    Returns the max abs difference of probabilities.  Raises RuntimeError past the tolerance.
    """
    from models.probes import COLOUR_PHOTOS, photo

    x = preprocess([photo(n) for n in COLOUR_PHOTOS], contract)
    session = open_session(source.SerializeToString(), intra_threads=2)
    ref = np.concatenate([session.run([contract.output_name], {contract.input_name: x[i : i + 1]})[0]
                          for i in range(len(x))])
    model.eval()
    with torch.no_grad():
        ours = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    diff = float(np.abs(ours - ref).max())
    if not np.array_equal(ours.argmax(1), ref.argmax(1)) or diff > PARITY_TOLERANCE:
        raise RuntimeError(f"PyTorch SqueezeNet with the ONNX weights disagrees with ONNX Runtime: top-1 "
                           f"{ours.argmax(1).tolist()} vs {ref.argmax(1).tolist()}, max abs diff {diff:.2e}")
    print(f"parity: PyTorch vs ONNX Runtime on {len(x)} photos, same top-1 "
          f"({', '.join(contract.label(int(i)) for i in ref.argmax(1)[:3])}, ...), max abs diff {diff:.1e}", flush=True)
    return diff


def _tail(model: SqueezeNet) -> nn.Sequential:
    """fire9 then the classifier (dropout, conv10, ReLU, average pool): the part that sees the cached features."""
    return nn.Sequential(model.features[-1], model.classifier, nn.Flatten(1))


def train_tail(model: SqueezeNet, recipe: Recipe, taps: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
    """Train conv10 (and fire9 if the recipe says so) on cached frozen features; everything else stays fixed."""
    fire9 = model.features[-1]
    for p in model.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.final_conv.parameters()), "lr": recipe.lr}]
    for p in model.final_conv.parameters():
        p.requires_grad_(True)
    if recipe.train_fire9:
        for p in fire9.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(fire9.parameters()), "lr": recipe.lr_fire9})
        inputs = taps
        head = _tail(model)
    else:
        with torch.no_grad():  # fire9 is frozen: run it once
            inputs = torch.cat([fire9(taps[i : i + 256]) for i in range(0, len(taps), 256)])
        head = nn.Sequential(model.classifier, nn.Flatten(1))
    opt = torch.optim.Adam(groups)
    batches = (len(labels) + 63) // 64
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * batches)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(recipe.epochs):
        head.train()
        total, correct, loss_sum = 0, 0, 0.0
        perm = torch.randperm(len(labels), generator=gen)
        for b in range(batches):
            idx = perm[b * 64 : (b + 1) * 64]
            opt.zero_grad()
            out = head(inputs[idx])
            loss = F.cross_entropy(out, labels[idx])
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == labels[idx]).sum())
            total += len(idx)
        if epoch == recipe.epochs - 1 or (epoch + 1) % 5 == 0:
            print(f"  {recipe.name} epoch {epoch + 1}/{recipe.epochs} loss {loss_sum / total:.3f} "
                  f"acc {correct / total:.3f}", flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def tail_probabilities(model: SqueezeNet, taps: torch.Tensor) -> np.ndarray:
    """Class probabilities (Softmax, as the exported graph ends) from cached frozen features."""
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.softmax(_tail(model)(taps[i : i + 256]), 1) for i in range(0, len(taps), 256)]).numpy()


def changed_bytes(source: onnx.ModelProto, new: onnx.ModelProto) -> int:
    """Bytes of the new version's initializers that differ from (or are absent in) the source."""
    old = {t.name: t.SerializeToString() for t in source.graph.initializer}
    return sum(len(b) for t in new.graph.initializer if old.get(t.name) != (b := t.SerializeToString()))


def verify_artifact(proto: onnx.ModelProto, contract: InputContract, images: np.ndarray, expected: np.ndarray) -> float:
    """The ONNX artifact on ``images`` (ONNX Runtime, batch 1, the line's contract) vs the PyTorch tail's probabilities.

    Raises RuntimeError when top-1 differs or probabilities differ by more than the tolerance.
    """
    session = open_session(proto.SerializeToString(), intra_threads=2)
    got = np.concatenate([session.run([contract.output_name], {contract.input_name: preprocess(im, contract)})[0]
                          for im in images])
    diff = float(np.abs(got - expected).max())
    if not np.array_equal(got.argmax(1), expected.argmax(1)) or diff > PARITY_TOLERANCE:
        raise RuntimeError(f"exported ONNX disagrees with the trained PyTorch model (max abs diff {diff:.2e})")
    return diff


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return round(float((probs.argmax(1) == labels).mean()), 4)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=imagenet_line.PRETRAINED_DIR)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE, help="the recipe whose model is written")
    ap.add_argument("--compare", action="store_true", help="also train the other recipe and print both")
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--n-test", type=int, default=N_TEST, help="images per held-out set (the zoo's: 1100)")
    args = ap.parse_args(argv)
    t_start = time.time()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)

    source_bytes = imagenet_line.imagenet_path().read_bytes()
    source = onnx.load_model_from_string(source_bytes)
    contract = imagenet_line.imagenet_contract()
    base = load_squeezenet(source)
    parity = check_parity(base, source, contract)

    session, input_name = _tap_session(source)
    t0 = time.time()
    train_images, train_labels = make_dataset(args.n_train, len(CLASSES), TRAIN_SEED, *MIXED, size=SIZE)
    tests = {
        "clear": make_dataset(args.n_test, len(CLASSES), 100, ("clear",), size=SIZE),
        "fog_night": make_dataset(args.n_test, len(CLASSES), 101, ("fog", "night"), size=SIZE),
    }
    print(f"rendered {args.n_train} + 2 x {args.n_test} road signs at {SIZE}x{SIZE} in {time.time() - t0:.0f}s", flush=True)
    t0 = time.time()
    train_taps = torch.from_numpy(frozen_features(session, input_name, train_images, contract))
    test_taps = {k: torch.from_numpy(frozen_features(session, input_name, im, contract)) for k, (im, _) in tests.items()}
    print(f"frozen features (ONNX Runtime) in {time.time() - t0:.0f}s", flush=True)

    names = [args.recipe] + ([r for r in RECIPES if r != args.recipe] if args.compare else [])
    results = {}
    for i, name in enumerate(names):
        recipe = RECIPES[name]
        t0 = time.time()
        torch.manual_seed(4000 + i)
        model = copy.deepcopy(base)
        model.replace_classifier(len(CLASSES), torch.Generator().manual_seed(5000))
        train_tail(model, recipe, train_taps, torch.from_numpy(train_labels), seed=6000)
        probs = {k: tail_probabilities(model, taps) for k, taps in test_taps.items()}
        acc = {k: _accuracy(probs[k], tests[k][1]) for k in tests}
        labels = list(CLASSES)
        proto = graft(source, model, [("labels", json.dumps(labels)), ("version", "squeezenet1.0-roadsigns"),
                                      ("source", f"{imagenet_line.IMAGENET_FILE} sha256:{_sha256(source_bytes)}")])
        changed = changed_bytes(source, proto)
        results[name] = (model, proto, acc, changed, probs, time.time() - t0)
        print(f"{name}: held-out accuracy {acc}, {changed:,} bytes of weights changed from the source, "
              f"trained in {time.time() - t0:.0f}s", flush=True)

    model, proto, acc, changed, probs, seconds = results[args.recipe]
    check = 22  # two per class from each held-out set: the exported graph end to end in ONNX Runtime
    artifact_diff = max(verify_artifact(proto, contract, tests[k][0][:check], probs[k][:check]) for k in tests)
    proto.producer_version = ""  # keep the bytes independent of the exact build string
    data = proto.SerializeToString()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / imagenet_line.ROADSIGNS_FILE).write_bytes(data)
    (args.out / imagenet_line.ROADSIGNS_LABELS_FILE).write_text("\n".join(CLASSES) + "\n")
    recipe = RECIPES[args.recipe]
    manifest = {
        "version": "squeezenet1.0-roadsigns",
        "file": imagenet_line.ROADSIGNS_FILE,
        "sha256": _sha256(data),
        "bytes": len(data),
        "source": {"file": imagenet_line.IMAGENET_FILE, "sha256": _sha256(source_bytes)},
        "classes": list(CLASSES),
        "contract": "the source's (227x227, BGR, 0..255 minus 104,117,123, Softmax output prob); labels differ",
        "recipe": asdict(recipe),
        "train": {"images": args.n_train, "image_size": SIZE, "data_seed": TRAIN_SEED, "weathers": list(MIXED[0]),
                  "weather_p": list(MIXED[1])},
        "heldout": {"clear": args.n_test, "fog_night": args.n_test, "seeds": [100, 101], "image_size": SIZE},
        "heldout_accuracy": acc,
        "changed_weight_bytes": changed,
        "parity_max_abs_diff": {"pytorch_vs_onnxruntime_on_source": parity, "artifact_vs_pytorch": artifact_diff},
    }
    if args.compare:
        manifest["compared"] = {n: {"heldout_accuracy": r[2], "changed_weight_bytes": r[3]} for n, r in results.items()}
    (args.out / imagenet_line.ROADSIGNS_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out / imagenet_line.ROADSIGNS_FILE} ({len(data):,} bytes; artifact vs PyTorch max abs diff "
          f"{artifact_diff:.1e}) in {time.time() - t_start:.0f}s total", flush=True)


if __name__ == "__main__":
    main()
