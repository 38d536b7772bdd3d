"""The transfer-learned road-sign SqueezeNet 1.0 beside the from-scratch zoo, on the zoo's own held-out images.

    .venv/bin/python bench/transfer_accuracy.py [--n 1100] [--json]

The zoo's held-out sets (``models.training.train``: 1,100 clear-weather signs, seed 100, and 1,100
fog/night signs, seed 101, rendered at 64x64) go through each model's *own* contract: the zoo's
(64 px, mean 0.5, std 0.25) for v4 and v5, the ImageNet line's (stretched to 227 px bicubic, BGR,
0..255 minus the Caffe mean) for ``squeezenet1.0-roadsigns``, which was trained on signs rendered at
227 px and so sees these 64 px ones upscaled.  Real ONNX Runtime sessions, one image at a time
(the ImageNet line's batch is fixed to 1).  No torch needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import imagenet_line, zoo  # noqa: E402
from models.contract import InputContract  # noqa: E402
from models.preprocess import postprocess, preprocess  # noqa: E402
from models.roadsigns import CLASSES, make_dataset  # noqa: E402
from models.sessions import open_session  # noqa: E402


def accuracy(path: Path, contract: InputContract, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX file at ``path`` on uint8 images put through ``contract``."""
    session = open_session(onnx.load(path).SerializeToString(), intra_threads=2)
    scores = np.concatenate([session.run([contract.output_name], {contract.input_name: preprocess(im, contract)})[0]
                             for im in images])
    return float((postprocess(scores, contract).argmax(1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1100, help="images per held-out set (the zoo's: 1100)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sets = {"clear": make_dataset(args.n, len(CLASSES), 100, ("clear",)),
            "fog_night": make_dataset(args.n, len(CLASSES), 101, ("fog", "night"))}
    models = {"v4": (zoo.model_path("v4"), zoo.contract("v4")), "v5": (zoo.model_path("v5"), zoo.contract("v5")),
              "squeezenet1.0-roadsigns": (imagenet_line.roadsigns_path(), imagenet_line.roadsigns_contract())}
    rows = []
    for name, (path, contract) in models.items():
        start = time.perf_counter()
        acc = {k: round(accuracy(path, contract, *v), 4) for k, v in sets.items()}
        rows.append({"model": name, **acc, "seconds": round(time.perf_counter() - start, 1)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"held-out road signs at 64x64 ({args.n} clear, seed 100; {args.n} fog/night, seed 101), each model's contract")
    print(f"{'model':<26}{'clear':>8}{'fog/night':>11}{'s':>7}")
    for r in rows:
        print(f"{r['model']:<26}{r['clear']:>8.3f}{r['fog_night']:>11.3f}{r['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
