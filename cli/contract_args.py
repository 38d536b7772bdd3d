"""The input-contract flags shared by ``ota publish`` and ``ota model pack``, and ``--probe`` folders.

What the graph cannot say about a model's input (channel order, value scale, mean/std, a size for
dynamic height/width, labels) is given once as a ``--spec`` JSON file and/or flags; this module turns
them into the contract fields :func:`models.contract.infer_contract` and the registry's ``contract``
form field take.  Imports nothing heavy: it runs on the car's install too (``ota model pack``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


class SpecError(Exception):
    """A contract flag, ``--spec`` file, ``--labels`` file or ``--probe`` folder is unusable; the message says which."""


def add_contract_arguments(parser: argparse.ArgumentParser, *, output_flag: str = "--output") -> None:
    """The contract flags as one argument group (``output_flag`` names the score-output flag)."""
    ct = parser.add_argument_group("input contract", "what the model expects (later versions inherit it); the "
                                                     "flags override the --spec file")
    ct.add_argument("--spec", metavar="FILE", help="JSON object of contract fields (e.g. from `ota versions --json`)")
    ct.add_argument("--input-size", metavar="SIDE|H,W", help="input height and width, e.g. 227 or 224,320")
    ct.add_argument("--layout", choices=["NCHW", "NHWC", "nchw", "nhwc"])
    ct.add_argument("--resize", choices=["stretch", "crop"], help="stretch, or shorter side + centre crop")
    ct.add_argument("--channel-order", choices=["rgb", "bgr", "RGB", "BGR"])
    ct.add_argument("--scale", choices=["1", "255"], help="pixel values 0..1 or 0..255 before mean/std")
    ct.add_argument("--mean", metavar="M|R,G,B", help="per channel, in the model's channel order, e.g. 104,117,123")
    ct.add_argument("--std", metavar="S|R,G,B")
    ct.add_argument("--labels", metavar="FILE", help="class names, one per line, in class order")
    ct.add_argument(output_flag, dest="score_output", metavar="NAME", help="the output that holds the class scores")
    ct.add_argument("--output-kind", choices=["logits", "probabilities"])


MAX_PROBE_IMAGES = 1000  # the registry's bound (server/registry/probes.py)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _numbers(text: str, flag: str) -> float | list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as e:
        raise SpecError(f"{flag} {text!r} must be one number or three comma-separated numbers, e.g. 104,117,123") from e
    if len(values) not in (1, 3):
        raise SpecError(f"{flag} {text!r} must be one number or three (one per channel)")
    return values[0] if len(values) == 1 else values


def _input_size(text: str) -> int | list[int]:
    try:
        sides = [int(x) for x in text.lower().replace("x", ",").split(",")]
    except ValueError as e:
        raise SpecError(f"--input-size {text!r} must be SIDE or HEIGHT,WIDTH, e.g. 227 or 224,320") from e
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise SpecError(f"--input-size {text!r} must be SIDE or HEIGHT,WIDTH of positive integers")
    return sides[0] if len(sides) == 1 else sides


def _labels(path: Path) -> list[str]:
    """One label per line (blank lines skipped), or a JSON list of strings (``models.contract.parse_labels``)."""
    from models.contract import parse_labels
    from protocol.errors import ContractError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"--labels {path}: cannot read it as UTF-8 text ({e})") from e
    try:
        return list(parse_labels(text))
    except ContractError as e:
        raise SpecError(f"--labels {path}: {e}") from e


def contract_spec(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``contract`` form field: the ``--spec`` file's object, with the flags laid over it."""
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise SpecError(f"--spec {args.spec}: not a readable JSON file ({e})") from e
        if not isinstance(spec, dict):
            raise SpecError(f"--spec {args.spec} must hold a JSON object of contract fields, e.g. "
                           '{"channel_order": "BGR", "scale": 255, "mean": [104, 117, 123]}')
    flags = {"input_size": _input_size(args.input_size) if args.input_size else None,
             "layout": args.layout.upper() if args.layout else None, "resize": args.resize,
             "channel_order": args.channel_order.upper() if args.channel_order else None,
             "scale": float(args.scale) if args.scale else None,
             "mean": _numbers(args.mean, "--mean") if args.mean else None,
             "std": _numbers(args.std, "--std") if args.std else None,
             "labels": _labels(Path(args.labels)) if args.labels else None,
             "output_name": args.score_output, "output_kind": args.output_kind}
    spec.update({k: v for k, v in flags.items() if v is not None})
    if "input_size" in spec:
        spec.pop("height", None), spec.pop("width", None)
    return spec or None


def probe_file(path: Path) -> bytes:
    """``--probe``: an .npz as it is, or a folder of JPEG/PNG files (any sizes) packed into one, an array each."""
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        raise SpecError(f"--probe {path} is neither a folder of JPEG/PNG images nor an .npz file")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SpecError(f"--probe {path} holds no .jpg, .jpeg or .png file")
    if len(files) > MAX_PROBE_IMAGES:
        raise SpecError(f"--probe {path} holds {len(files)} images; the registry takes at most {MAX_PROBE_IMAGES}")
    arrays: dict[str, Any] = {}
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                arrays[f"image{i:04d}"] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise SpecError(f"--probe: {f} is not an image PIL can read ({e})") from e
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
