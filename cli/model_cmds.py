"""``ota model pack|diff|patch|unpack|inspect``: the codec on files.

Each command reads its inputs whole, calls the pure codec in ``models.codec``,
and writes its output atomically (temp file + rename), so a failure leaves no
half-written file and never touches the inputs.  ``--json`` prints one JSON
object with the sizes and figures instead of the human summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cli.contract_args import add_contract_arguments
from cli.safe_text import safe

CODEC_CHOICES = ("lossless", "int8", "deep", "svd")


class UsageError(Exception):
    """A file argument is missing or unreadable; the message says which."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path!r}: {e.strerror or e}") from e


def _write(path: str, data: bytes) -> None:
    from client.atomic import write_atomic
    from client.errors import StorageError

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data, what="output file")
    except (OSError, StorageError) as e:
        raise UsageError(f"cannot write {path!r}: {e}") from e


def load_probe(path: str, contract: Any) -> Any:
    """A probe set as model input: a folder of JPEG/PNG images or an .npy/.npz of uint8 images (one
    ``images`` array or an array each, any sizes), put through ``contract``; or float32 model inputs as they are.
    """
    import io

    import numpy as np

    from cli.contract_args import SpecError, probe_file
    from models.preprocess import preprocess

    try:
        data = probe_file(Path(path)) if Path(path).is_dir() else _read(path, "probe")
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, SpecError) as e:
        raise UsageError(f"cannot read probe {path!r} as a folder of images or a numpy .npy/.npz file: {e}") from e
    arrays = [loaded[k] for k in loaded.files] if isinstance(loaded, np.lib.npyio.NpzFile) else [loaded]
    if not arrays:
        raise UsageError(f"probe {path!r} holds no array")
    if len(arrays) == 1 and arrays[0].dtype == np.float32:
        if arrays[0].ndim != 4:
            raise UsageError(f"probe {path!r}: float32 inputs must be (N, C, H, W) or (N, H, W, C), "
                             f"got {list(arrays[0].shape)}")
        return arrays[0]
    images = [img for a in arrays for img in (a if a.ndim == 4 else [a])]
    if not all(img.dtype == np.uint8 and img.ndim in (2, 3) for img in images):
        raise UsageError(f"probe {path!r} must hold uint8 images (H, W[, 3]) or float32 model inputs")
    try:
        return preprocess(images, contract)
    except ValueError as e:
        raise UsageError(f"probe {path!r}: {e}") from e


def _contract(args: argparse.Namespace, src: bytes) -> Any:
    """The model's input contract: what the graph says, with the ``--spec`` file and flags over it."""
    from cli.contract_args import SpecError, contract_spec
    from models.contract import infer_contract
    from models.onnx_safety import parse_embedded

    try:
        spec = contract_spec(args) or {}
    except SpecError as e:
        raise UsageError(str(e)) from e
    if "height" in spec or "width" in spec:
        spec["input_size"] = [spec.pop("height"), spec.pop("width")]
    return infer_contract(parse_embedded(src), **spec)  # InvalidModel for junk, as the codec says it


def _emit(args: argparse.Namespace, result: dict[str, Any], human: str) -> int:
    # A package's header carries publisher text (notes): escape control characters line by line.
    print(json.dumps(result, sort_keys=True) if args.json else "\n".join(safe(line) for line in human.split("\n")))
    return 0


def _fail(args: argparse.Namespace, error: Exception) -> int:
    code = type(error).__name__
    if getattr(args, "json", False):
        print(json.dumps({"error": code, "detail": str(error)}))
    print(f"error: {safe(error)}", file=sys.stderr)
    return 1


def cmd_pack(args: argparse.Namespace) -> int:
    from models import codec

    src = _read(args.src, "model")
    base = _read(args.base, "base package") if args.base else None
    contract = _contract(args, src)
    probe = load_probe(args.probe, contract) if args.probe else None
    t0 = time.perf_counter()
    result = codec.pack(src, args.codec, base=base, probe=probe, min_agreement=args.min_agreement, contract=contract)
    seconds = time.perf_counter() - t0
    _write(args.output, result.package)
    h = result.header
    out = {
        "output": args.output, "codec": h["codec"], "source_bytes": len(src), "package_bytes": len(result.package),
        "ratio": round(len(result.package) / len(src), 4), "model_sha256": h["model_sha256"],
        "fidelity": h["fidelity"], "gate": h["gate"], "base": h["base"], "encode_s": round(seconds, 3),
    }
    f = h["fidelity"]
    human = (f"{args.output}: {h['codec']} package {len(result.package):,} bytes ({out['ratio']:.1%} of "
             f"{len(src):,}), top-1 agreement {f['top1_agreement']:.4f}, max |diff| {f['max_abs_diff']:.4g} "
             f"on {f['probe_count']} {f['probe']} probe inputs, {seconds:.2f} s")
    return _emit(args, out, human)


def cmd_diff(args: argparse.Namespace) -> int:
    from models import codec

    old, new = _read(args.old, "old package"), _read(args.new, "new package")
    t0 = time.perf_counter()
    delta = codec.diff(old, new)
    seconds = time.perf_counter() - t0
    _write(args.output, delta)
    out = {"output": args.output, "old_bytes": len(old), "new_bytes": len(new), "patch_bytes": len(delta),
           "ratio": round(len(delta) / len(new), 4), "encode_s": round(seconds, 3)}
    human = f"{args.output}: patch {len(delta):,} bytes ({out['ratio']:.1%} of the {len(new):,}-byte package)"
    return _emit(args, out, human)


def cmd_patch(args: argparse.Namespace) -> int:
    from models import codec

    old, delta = _read(args.old, "old package"), _read(args.patch, "patch")
    t0 = time.perf_counter()
    new = codec.patch(old, delta)
    seconds = time.perf_counter() - t0
    _write(args.output, new)
    header = codec.read_header(new)
    out = {"output": args.output, "patch_bytes": len(delta), "package_bytes": len(new),
           "model_sha256": header["model_sha256"], "apply_s": round(seconds, 4)}
    human = f"{args.output}: {len(new):,}-byte package rebuilt from a {len(delta):,}-byte patch, SHA-256 verified"
    return _emit(args, out, human)


def cmd_unpack(args: argparse.Namespace) -> int:
    from models import codec

    package = _read(args.package, "package")
    t0 = time.perf_counter()
    model = codec.unpack(package)
    seconds = time.perf_counter() - t0
    _write(args.output, model)
    header = codec.read_header(package)
    out = {"output": args.output, "package_bytes": len(package), "model_bytes": len(model),
           "model_sha256": header["model_sha256"], "codec": header["codec"], "decode_s": round(seconds, 4)}
    human = f"{args.output}: {len(model):,}-byte ONNX model decoded from {header['codec']} package, SHA-256 verified"
    return _emit(args, out, human)


def _inspect_model(args: argparse.Namespace, src: bytes) -> int:
    """An ONNX file: the input contract the registry would infer from it, with the contract flags given."""
    contract = _contract(args, src).to_dict()
    labels = contract["labels"]
    human = "\n".join([
        f"input {contract['input_name']} {contract['layout']} {contract['height']}x{contract['width']} "
        f"({contract['resize']}), {contract['channel_order']}, scale 0..{contract['scale']:g}, "
        f"mean {contract['mean']}, std {contract['std']}",
        f"output {contract['output_name']} ({contract['output_kind']}), "
        f"{len(labels) or 'no'} labels" + (f": {', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}"
                                            if labels else " (classes shown as class_<i>; pass --labels FILE)"),
    ])
    return _emit(args, {"contract": contract}, human)


def cmd_inspect(args: argparse.Namespace) -> int:
    from models import codec

    data = _read(args.package, "package")
    if not data.startswith(b"OTAPKG"):
        return _inspect_model(args, data)
    info = codec.inspect(data)
    f = info["fidelity"]
    lines = [
        f"codec {info['codec']}  package {info['package_bytes']:,} bytes  model {info['model_bytes']:,} bytes"
        + (f"  ratio {info['ratio']:.1%}" if info["ratio"] else ""),
        f"model sha256 {info['model_sha256']}",
        f"fidelity: top-1 agreement {f['top1_agreement']:.4f}, max |diff| {f['max_abs_diff']:.4g} "
        f"({f['probe_count']} {f['probe']} probe inputs)",
        f"{'tensor':40} {'kind':6} {'shape':>18} {'bits':>4} {'sparsity':>8} {'bytes':>9} {'bits/w':>7}",
    ]
    for t in info["tensors"]:
        lines.append(f"{t['name'][:40]:40} {t['kind']:6} {'x'.join(map(str, t['shape'])):>18} {t['bits']:>4} "
                     f"{t['sparsity']:>8.3f} {t['bytes']:>9,} {t['bits_per_weight']:>7.3f}")
    return _emit(args, info, "\n".join(lines))


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from models.errors import ModelError

        try:
            return int(handler(args))
        except (UsageError, ModelError) as e:
            return _fail(args, e)

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ota model ...``."""
    model = subparsers.add_parser("model", help="pack, diff, patch, unpack and inspect model packages")
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("pack", help="encode an ONNX model as a package")
    p.add_argument("src", metavar="SRC.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pkg")
    p.add_argument("--codec", choices=CODEC_CHOICES, default="lossless")
    p.add_argument("--base", metavar="BASE.pkg", help="previous version's package: reuse its codebooks for small deltas")
    p.add_argument("--probe", metavar="DIR|PROBE.npz", help="calibration images (a folder of JPEG/PNG, or .npy/.npz "
                                                           "of uint8 images), put through the input contract; or "
                                                           "float32 model inputs")
    p.add_argument("--min-agreement", type=float, metavar="0.99", help="smallest encoding with this top-1 agreement")
    add_contract_arguments(p, output_flag="--score-output")
    p.set_defaults(func=_guarded(cmd_pack))

    p = sub.add_parser("diff", help="make a patch from OLD.pkg to NEW.pkg")
    p.add_argument("old", metavar="OLD.pkg")
    p.add_argument("new", metavar="NEW.pkg")
    p.add_argument("-o", "--output", required=True, metavar="PATCH")
    p.set_defaults(func=_guarded(cmd_diff))

    p = sub.add_parser("patch", help="apply PATCH to OLD.pkg (SHA-256 checked)")
    p.add_argument("old", metavar="OLD.pkg")
    p.add_argument("patch", metavar="PATCH")
    p.add_argument("-o", "--output", required=True, metavar="NEW.pkg")
    p.set_defaults(func=_guarded(cmd_patch))

    p = sub.add_parser("unpack", help="decode a package to ONNX (SHA-256 checked)")
    p.add_argument("package", metavar="PKG")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.set_defaults(func=_guarded(cmd_unpack))

    p = sub.add_parser("inspect", help="a package: per-tensor codec, bits, sparsity, bytes, fidelity; an ONNX "
                                       "model: the input contract the registry would infer (with the flags given)")
    p.add_argument("package", metavar="PKG|MODEL.onnx")
    add_contract_arguments(p, output_flag="--score-output")
    p.set_defaults(func=_guarded(cmd_inspect))

    for parser in sub.choices.values():
        parser.add_argument("--json", action="store_true", help="print one JSON object")
