"""Codec benchmark: full packages per codec and model-aware deltas vs generic binary diffs.

    make bench            (installs bsdiff, xdelta3, zstd from Debian first)
    .venv/bin/python bench/codec.py [--json] [--series DIR ...] [--codecs deep] [--min-agreement 0.99]

``--series DIR`` (repeatable; default the shipped zoo, ``models/zoo``) names a
folder holding ``manifest.json``, ``probe.npz`` and ``v*.onnx`` in the zoo's
format (``bench/series.py`` makes more such series with other seeds and
schedules); every figure is reported per series.  For every consecutive pair
of a series and for v1 -> v4 it prints one table row: the new version's fp32 ONNX size; its full package per codec
with top-1 agreement on the probe set (``*`` = the codec cannot reach the
gate, shown ungated); our ``deep`` delta (new packed with ``--base`` = old
package) and the lossless delta beside ``bsdiff``, ``xdelta3 -9`` and
``zstd -19 --long --patch-from`` run in the same process on the same ONNX
files; the ratio best-generic / ours; encode time (pack with base + diff) and
apply time on this machine (patch + decode to ONNX, median of 5).

Then, per series, the server's storage of its ``deep`` line as deltas with a
full keyframe every ``--keyframe-interval`` versions (the registry's default,
5) against storing every full package, and, for a car several versions
behind, the one delta from its version to the newest against the chain of
consecutive deltas.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import codec  # noqa: E402
from models.errors import FidelityGateError  # noqa: E402
from models.preprocess import to_input  # noqa: E402

# issue 19's targets: best generic patch / our deep delta at least this much
TARGETS = {"head-only": 20, "fine-tune": 40, "new class": 25}
FINE_TUNE_SHARE = 0.20  # and a fine-tune delta at most this share of the new full package
FIRST_INSTALL_SHARE = 0.08  # first deep package of a line / fp32 ONNX
STORAGE_SHARE = 0.40  # keyframes + deltas / every full package, for a 10-version line
LOSSY = ("int8", "deep", "svd")


def pairs_of(versions: list[str]) -> list[tuple[str, str]]:
    """Consecutive pairs, and v1 -> v4 (a car three versions behind) when the series has a v4."""
    out = list(zip(versions, versions[1:], strict=False))
    if "v1" in versions and "v4" in versions:
        out.append(("v1", "v4"))
    return out


def generic(old: Path, new: Path, work: Path) -> dict[str, int | None]:
    """Patch sizes of the three generic tools (None if a tool is missing)."""
    out: dict[str, int | None] = {}
    commands = {
        "bsdiff": ["bsdiff", str(old), str(new), str(work / "p.bsdiff")],
        "xdelta3": ["xdelta3", "-e", "-9", "-f", "-s", str(old), str(new), str(work / "p.xdelta3")],
        "zstd": ["zstd", "-q", "-f", "-19", "--long=27", f"--patch-from={old}", str(new), "-o", str(work / "p.zstd")],
    }
    for tool, cmd in commands.items():
        if shutil.which(cmd[0]) is None:
            out[tool] = None
            continue
        subprocess.run(cmd, check=True, capture_output=True)
        out[tool] = (work / f"p.{tool}").stat().st_size
    return out


def pack_gated(onnx_bytes: bytes, name: str, probe: np.ndarray, gate: float, base: bytes | None = None):
    """Pack at the gate; a codec that cannot reach it is packed ungated and flagged."""
    try:
        return codec.pack(onnx_bytes, name, base=base, probe=probe, min_agreement=gate), True
    except FidelityGateError:
        return codec.pack(onnx_bytes, name, base=base, probe=probe), False


def scenario(manifest: dict, old: str, new: str) -> str:
    text = next((v["scenario"] for v in manifest["versions"] if v["version"] == new), "")
    parent = next((v["parent"] for v in manifest["versions"] if v["version"] == new), None)
    if "scratch" in text:
        return "from scratch"
    if "class" in text:
        return "new class"
    if "head" in text and parent == old:
        return "head-only"
    if parent == old:
        return "fine-tune"
    return "new class" if new == "v4" else text


def storage(versions: list[str], deep_pkg: dict[str, bytes], interval: int) -> dict:
    """Bytes the registry stores for the line: a keyframe every ``interval`` versions, deltas on the previous between."""
    stored, full = 0, 0
    for i, v in enumerate(versions):
        full += len(deep_pkg[v])
        stored += len(deep_pkg[v]) if i % interval == 0 else len(codec.diff(deep_pkg[versions[i - 1]], deep_pkg[v]))
    return {"versions": len(versions), "keyframe_interval": interval, "stored_bytes": stored, "full_bytes": full,
            "share": round(stored / full, 4)}


def behind(versions: list[str], deep_pkg: dict[str, bytes]) -> list[dict]:
    """A car on version k gets one delta to the newest: its size beside the chain of consecutive deltas."""
    newest, rows = versions[-1], []
    step = {v: len(codec.diff(deep_pkg[a], deep_pkg[v])) for a, v in zip(versions, versions[1:], strict=False)}
    for k, v in enumerate(versions[:-2]):
        d = codec.diff(deep_pkg[v], deep_pkg[newest])
        assert codec.patch(deep_pkg[v], d) == deep_pkg[newest]
        rows.append({"from": v, "to": newest, "delta": len(d), "chain": sum(step[x] for x in versions[k + 1:]),
                     "package": len(deep_pkg[newest])})
    return rows


def measure(zoo: Path, gate: float, codecs: tuple[str, ...] = LOSSY, interval: int = 5) -> dict:
    manifest = json.loads((zoo / "manifest.json").read_text())
    probe = to_input(np.load(zoo / "probe.npz")["images"])
    versions = [v["version"] for v in manifest["versions"]]
    onnx = {v: (zoo / f"{v}.onnx").read_bytes() for v in versions}
    full: dict[str, dict] = {}
    deep_pkg: dict[str, bytes] = {}
    lossless_pkg: dict[str, bytes] = {}
    encode_s: dict[str, float] = {}
    prev = None
    for v in versions:
        row = {"fp32_bytes": len(onnx[v])}
        lossless_pkg[v] = codec.pack(onnx[v], "lossless").package
        row["lossless"] = {"bytes": len(lossless_pkg[v]), "agreement": 1.0, "gate_met": True}
        for name in codecs:
            t0 = time.perf_counter()
            result, met = pack_gated(onnx[v], name, probe, gate, base=deep_pkg.get(prev) if name == "deep" else None)
            if name == "deep":
                encode_s[v] = time.perf_counter() - t0
                deep_pkg[v] = result.package
            row[name] = {"bytes": len(result.package), "agreement": result.header["fidelity"]["top1_agreement"],
                         "gate_met": met, "ratio": round(len(result.package) / len(onnx[v]), 4)}
        full[v] = row
        prev = v
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for old, new in pairs_of(versions):
            t0 = time.perf_counter()
            delta = codec.diff(deep_pkg[old], deep_pkg[new])
            diff_s = time.perf_counter() - t0
            applies = []
            for _ in range(5):
                t0 = time.perf_counter()
                model = codec.unpack(codec.patch(deep_pkg[old], delta))
                applies.append(time.perf_counter() - t0)
            assert codec.read_header(deep_pkg[new])["model_sha256"] == codec.api.sha256(model)
            lossless_delta = codec.diff(lossless_pkg[old], lossless_pkg[new])
            tools = generic(zoo / f"{old}.onnx", zoo / f"{new}.onnx", work)
            best = min(s for s in tools.values() if s is not None)
            kind = scenario(manifest, old, new)
            rows.append({
                "pair": f"{old}->{new}", "scenario": kind, "fp32_bytes": len(onnx[new]),
                "full": full[new], "delta_deep": len(delta), "delta_lossless": len(lossless_delta),
                "generic": tools, "best_generic": best, "ratio": round(best / len(delta), 2),
                "target_ratio": TARGETS.get(kind), "deep_package": len(deep_pkg[new]),
                "package_share": round(len(delta) / len(deep_pkg[new]), 4),
                "target_met": (best / len(delta) >= TARGETS[kind]
                               and (kind != "fine-tune" or len(delta) <= FINE_TUNE_SHARE * len(deep_pkg[new])))
                if kind in TARGETS else len(delta) <= len(deep_pkg[new]),
                "encode_s": round(encode_s[new] + diff_s, 2), "diff_s": round(diff_s, 3),
                "apply_ms": round(1000 * statistics.median(applies), 1),
            })
    return {"series": manifest.get("series", str(zoo)), "gate": gate, "probe_count": len(probe), "versions": full,
            "pairs": rows, "storage": storage(versions, deep_pkg, interval), "behind": behind(versions, deep_pkg)}


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1000:,.1f}K"


def _codec(cell: dict | None) -> str:
    if cell is None:
        return "-"
    return f"{cell['bytes'] / 1000:,.0f}K {cell['agreement']:.3f}{'' if cell['gate_met'] else '*'}"


def table(result: dict) -> str:
    head = (f"{'pair':8} {'scenario':12} {'fp32':>7} | {'lossless':>13} {'int8':>13} {'deep':>13} {'svd':>13} | "
            f"{'deep delta':>10} {'lossl. d':>9} {'bsdiff':>9} {'xdelta3':>9} {'zstd':>9} | {'ratio':>6} "
            f"{'target':>6} | {'enc s':>5} {'apply ms':>8}")
    lines = [f"series {result['series']}: top-1 agreement gate {result['gate']} on {result['probe_count']} probe images "
             "(* = codec cannot reach the gate; shown ungated)", head, "-" * len(head)]
    v1 = result["versions"]["v1"]
    lines.append(f"{'v1':8} {'first':12} {v1['fp32_bytes'] / 1000:>6,.0f}K | "
                 + " ".join(f"{_codec(v1.get(c)):>13}" for c in ("lossless", *LOSSY)) + " |")
    for r in result["pairs"]:
        f = r["full"]
        target = f">={r['target_ratio']}" if r["target_ratio"] else "<=full"
        lines.append(
            f"{r['pair']:8} {r['scenario'][:12]:12} {r['fp32_bytes'] / 1000:>6,.0f}K | "
            + " ".join(f"{_codec(f.get(c)):>13}" for c in ("lossless", *LOSSY))
            + f" | {_kb(r['delta_deep']):>10} {_kb(r['delta_lossless']):>9} {_kb(r['generic']['bsdiff']):>9} "
            f"{_kb(r['generic']['xdelta3']):>9} {_kb(r['generic']['zstd']):>9} | {r['ratio']:>6} {target:>6}"
            f"{'' if r['target_met'] else '!'} | {r['encode_s']:>5} {r['apply_ms']:>8}"
        )
    lines.append("ratio = best generic patch / our deep delta; '!' = target missed (fine-tune: also <= "
                 f"{FINE_TUNE_SHARE:.0%} of the new package)")
    share = ", ".join(f"{r['pair']} {r['package_share']:.1%}" for r in result["pairs"])
    lines.append(f"deep delta / new deep package: {share}")
    deep = ", ".join(f"{v} {r['deep']['ratio']:.1%}" for v, r in result["versions"].items())
    lines.append(f"deep full package / fp32 ONNX (first install target <= {FIRST_INSTALL_SHARE:.0%}): {deep}")
    st = result["storage"]
    lines.append(f"stored line ({st['versions']} versions, keyframe every {st['keyframe_interval']}): "
                 f"{st['stored_bytes']:,} B of {st['full_bytes']:,} B full packages = {st['share']:.1%}"
                 f" (target <= {STORAGE_SHARE:.0%} for 10 versions)")
    for b in result["behind"]:
        lines.append(f"  car on {b['from']}: one delta to {b['to']} {b['delta']:,} B, chain of deltas {b['chain']:,} B, "
                     f"package {b['package']:,} B")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", "--zoo", dest="series", type=Path, action="append",
                    help="a version series folder (manifest.json, probe.npz, v*.onnx); repeatable; default models/zoo")
    ap.add_argument("--codecs", default=",".join(LOSSY), help="lossy codecs to pack in full (deep is always packed)")
    ap.add_argument("--keyframe-interval", type=int, default=5)
    ap.add_argument("--min-agreement", type=float, default=0.99)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    codecs = tuple(c for c in LOSSY if c in args.codecs.split(",") or c == "deep")
    results = [measure(d, args.min_agreement, codecs, args.keyframe_interval)
               for d in (args.series or [ROOT / "models" / "zoo"])]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, sort_keys=True))
    else:
        print("\n\n".join(table(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
