"""``ota model pack|diff|patch|unpack|inspect`` on real files, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from models import onnx_factory


def ota(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["model", *argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_pack_diff_patch_unpack_inspect_round_trip_with_a_uint8_probe(tmp_path: Path, capsys) -> None:
    old = onnx_factory.squeezenet("1_1", num_classes=5, image_size=32, seed=4)
    (tmp_path / "v1.onnx").write_bytes(old)
    (tmp_path / "v2.onnx").write_bytes(onnx_factory.fine_tune(old, scale=0.003))
    images = np.random.default_rng(0).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "probe.npy", images)
    p = str(tmp_path)

    code, v1 = ota(capsys, "pack", f"{p}/v1.onnx", "-o", f"{p}/v1.pkg", "--codec", "deep",
                   "--probe", f"{p}/probe.npy", "--min-agreement", "0.9")
    assert code == 0 and v1["fidelity"]["probe_count"] == 12 and v1["fidelity"]["top1_agreement"] >= 0.9
    code, v2 = ota(capsys, "pack", f"{p}/v2.onnx", "-o", f"{p}/v2.pkg", "--codec", "deep", "--base", f"{p}/v1.pkg",
                   "--probe", f"{p}/probe.npy")
    assert code == 0 and v2["base"]["reused_grids"] > 0
    code, d = ota(capsys, "diff", f"{p}/v1.pkg", f"{p}/v2.pkg", "-o", f"{p}/d.patch")
    assert code == 0 and d["patch_bytes"] == (tmp_path / "d.patch").stat().st_size < v2["package_bytes"]
    code, rebuilt = ota(capsys, "patch", f"{p}/v1.pkg", f"{p}/d.patch", "-o", f"{p}/v2b.pkg")
    assert code == 0 and (tmp_path / "v2b.pkg").read_bytes() == (tmp_path / "v2.pkg").read_bytes()
    code, un = ota(capsys, "unpack", f"{p}/v2b.pkg", "-o", f"{p}/out.onnx")
    assert code == 0 and un["model_sha256"] == v2["model_sha256"]
    code, info = ota(capsys, "inspect", f"{p}/v2.pkg")
    assert code == 0 and info["codec"] == "deep" and len(info["tensors"]) == 52
    assert main(["model", "inspect", f"{p}/v2.pkg"]) == 0
    assert "bits/w" in capsys.readouterr().out


def test_pack_applies_the_input_contract_to_a_folder_of_photos_of_any_size(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from models.probes import natural_crops

    (tmp_path / "m.onnx").write_bytes(onnx_factory.squeezenet("1_1", num_classes=5, image_size=32, seed=4))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        Image.fromarray(natural_crops(1, size=(40 + 9 * i, 50), seed=i)[0]).save(photos / f"{i}.png")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"channel_order": "BGR", "scale": 255, "mean": [104, 117, 123]}))
    p = str(tmp_path)
    code, out = ota(capsys, "pack", f"{p}/m.onnx", "-o", f"{p}/m.pkg", "--codec", "deep", "--probe", str(photos),
                    "--spec", str(spec), "--std", "58", "--min-agreement", "0.9")
    assert code == 0 and out["fidelity"]["probe_count"] == 6 and out["fidelity"]["top1_agreement"] >= 0.9
    code, err = ota(capsys, "pack", f"{p}/m.onnx", "-o", f"{p}/bad.pkg", "--input-size", "64")
    assert code == 1 and "fixed to 32" in err["detail"] and not (tmp_path / "bad.pkg").exists()


def test_failures_print_a_json_error_exit_1_and_write_nothing(tmp_path: Path, capsys) -> None:
    model = onnx_factory.squeezenet("1_1", num_classes=4, image_size=32, seed=1)
    (tmp_path / "m.onnx").write_bytes(model)
    (tmp_path / "junk.onnx").write_bytes(b"\x00" * 100)
    np.save(tmp_path / "bad_probe.npy", np.zeros((2, 3), dtype=np.int64))
    p = str(tmp_path)
    code, err = ota(capsys, "pack", f"{p}/junk.onnx", "-o", f"{p}/junk.pkg")
    assert code == 1 and err["error"] == "InvalidModel"
    code, err = ota(capsys, "pack", f"{p}/m.onnx", "-o", f"{p}/m.pkg", "--codec", "deep", "--probe", f"{p}/bad_probe.npy")
    assert code == 1 and "uint8 images" in err["detail"]
    code, err = ota(capsys, "unpack", f"{p}/missing.pkg", "-o", f"{p}/x.onnx")
    assert code == 1 and "cannot read package" in err["detail"]
    ota(capsys, "pack", f"{p}/m.onnx", "-o", f"{p}/m.pkg")
    (tmp_path / "other.pkg").write_bytes(b"OTAPKG1\n\x00\x00\x00\x02{}")
    code, err = ota(capsys, "diff", f"{p}/m.pkg", f"{p}/m.pkg", "-o", f"{p}/same.patch")
    assert code == 0
    code, err = ota(capsys, "patch", f"{p}/other.pkg", f"{p}/same.patch", "-o", f"{p}/never.pkg")
    assert code == 1 and err["error"] == "BaseMismatch"
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "bad_probe.npy", "junk.onnx", "m.onnx", "m.pkg", "other.pkg", "same.patch"]


def test_inspect_of_an_onnx_model_prints_the_contract_the_registry_would_infer(capsys) -> None:
    from models.imagenet_line import imagenet_labels_path, imagenet_path

    code, out = ota(capsys, "inspect", str(imagenet_path()), "--channel-order", "bgr", "--scale", "255",
                    "--mean", "104,117,123", "--labels", str(imagenet_labels_path()))
    c = out["contract"]
    assert code == 0 and (c["height"], c["width"], c["layout"]) == (227, 227, "NCHW")
    assert c["channel_order"] == "BGR" and c["output_kind"] == "probabilities" and c["labels"][285] == "Egyptian cat"
    code, err = ota(capsys, "inspect", str(imagenet_path()), "--labels", str(imagenet_labels_path()),
                    "--input-size", "224")
    assert code == 1 and "fixed to 227" in err["detail"]
