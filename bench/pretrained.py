"""The real ImageNet SqueezeNet 1.0 (models/pretrained) through each codec, gated on natural photos.

    .venv/bin/python bench/pretrained.py [--json] [--probe 256] [--held-out 300] [--min-agreement 0.99]

The probe is ``--probe`` crops of scikit-image's bundled photos (``models.probes``, seed 1), put
through the model's own contract (227x227, BGR, 0..255 minus the Caffe mean); the held-out check is
``--held-out`` other crops (seed 2) never seen by the gate.  For ``lossless``, ``int8`` and ``deep``
(the lossy ones at the gate; ``*`` = the codec cannot reach it, packed ungated) it prints the package bytes, % of the fp32 ONNX, top-1 agreement with the
fp32 model on the probe and on the held-out photos, and pack time; beside them ``zstd -19`` of the
fp32 ONNX, run in the same process (if ``zstd`` is on PATH), and each package's size as a ratio of it.
Target (issue 17): deep <= 400 KB at >= 0.99 agreement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import codec  # noqa: E402
from models.codec.fidelity import Reference  # noqa: E402
from models.contract import infer_contract  # noqa: E402
from models.errors import FidelityGateError  # noqa: E402
from models.preprocess import preprocess  # noqa: E402
from models.probes import natural_crops  # noqa: E402

PRETRAINED = ROOT / "models" / "pretrained"
CODECS = ("lossless", "int8", "deep")


def zstd_bytes(path: Path) -> int | None:
    """Size of ``zstd -19`` of the file, or None without zstd on PATH."""
    if shutil.which("zstd") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.zst"
        subprocess.run(["zstd", "-q", "-f", "-19", str(path), "-o", str(out)], check=True, capture_output=True)
        return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--probe", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--min-agreement", type=float, default=0.99)
    args = parser.parse_args()

    path = PRETRAINED / "squeezenet1.0-imagenet.onnx"
    source = path.read_bytes()
    model = onnx.load_model_from_string(source)
    contract = infer_contract(model, channel_order="bgr", scale=255, mean=[104, 117, 123],
                              labels=(PRETRAINED / "imagenet-labels.txt").read_text())
    probe = preprocess(natural_crops(args.probe, seed=1), contract)
    held_out = Reference(model, source, preprocess(natural_crops(args.held_out, seed=2), contract), contract)
    baseline = zstd_bytes(path)
    rows = []
    for name in CODECS:
        gate = None if name == "lossless" else args.min_agreement
        start = time.perf_counter()
        try:
            result = codec.pack(source, name, probe=probe, min_agreement=gate, contract=contract)
            passed = True
        except FidelityGateError:  # shown ungated and flagged, as bench/codec.py does
            result = codec.pack(source, name, probe=probe, contract=contract)
            passed = False
        seconds = time.perf_counter() - start
        fid = held_out.compare(codec.unpack(result.package))
        rows.append({
            "codec": name, "gate": gate, "passed_gate": passed, "package_bytes": len(result.package),
            "percent_of_fp32": round(100 * len(result.package) / len(source), 2),
            "probe_agreement": result.header["fidelity"]["top1_agreement"],
            "held_out_agreement": round(fid.top1_agreement, 4),
            "pack_s": round(seconds, 1),
            "vs_zstd19": round(len(result.package) / baseline, 3) if baseline else None,
        })
    report = {"fp32_bytes": len(source), "zstd19_bytes": baseline, "probe": args.probe, "held_out": args.held_out,
              "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"real ImageNet SqueezeNet 1.0: fp32 ONNX {len(source):,} bytes; zstd -19 "
          f"{'n/a (no zstd on PATH)' if baseline is None else f'{baseline:,} bytes'}; probe {args.probe} crops, "
          f"held-out {args.held_out} crops of skimage.data photos")
    print(f"{'codec':<9} {'gate':>5} {'bytes':>10} {'% fp32':>7} {'probe':>7} {'held-out':>8} {'pack s':>7} "
          f"{'/ zstd':>7}")
    for r in rows:
        flag = "" if r["passed_gate"] else "*"
        print(f"{r['codec'] + flag:<9} {r['gate'] or '-':>5} {r['package_bytes']:>10,} {r['percent_of_fp32']:>6.2f}% "
              f"{r['probe_agreement']:>7.4f} {r['held_out_agreement']:>8.4f} {r['pack_s']:>7.1f} "
              f"{'-' if r['vs_zstd19'] is None else r['vs_zstd19']:>7}")


if __name__ == "__main__":
    main()
