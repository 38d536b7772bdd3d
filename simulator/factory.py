"""Factory-installed models: cars that leave the factory with a version already on disk.

A real fleet does not download its first model over the air: each car is
flashed at the factory.  ``fetch_image`` takes one published version's
package from the registry (one admin download, checked against the SHA-256s
the registry published) and decodes it once; ``preinstall`` writes it into
each car's state dir as the active slot, exactly as an install would have
left it (slot files, journal), so the car boots it, enrols, polls with it and
gets deltas from it.  ``flash_fleet`` does both and returns the figures that
``bench/fleet.py`` and ``ota simulate`` report; they flash by default (a scale
run then measures a staged rollout rather than N initial full downloads) and
``--initial-install`` keeps the download path.  The slot records the
version's input contract as the registry published it, so a flashed car
classifies as an updated one does.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.slots import SlotRecord
from models import codec
from protocol.contract import InputContract
from protocol.errors import ContractError
from simulator.car import DedupSlotStore
from simulator.fleet import CarSpec
from simulator.registry_admin import AdminError, RegistryAdmin


@dataclass(frozen=True)
class FactoryImage:
    """One version's package and decoded model, as the registry published them."""

    version: int
    codec: str
    package: bytes
    model: bytes
    package_sha256: str
    model_sha256: str
    contract: InputContract


def fetch_image(admin: RegistryAdmin, published: dict, codec_name: str = "deep") -> FactoryImage:
    """The factory image of a published version (``published``: the registry's answer to the publish).

    Raises:
        AdminError: the registry has no such package, its bytes do not match what it published, or the
            version has no valid contract.
    """
    pkg = published.get("packages", {}).get(codec_name)
    if pkg is None:
        raise AdminError(f"version {published.get('version')} has no {codec_name!r} package to flash at the factory")
    package = admin.artifact(pkg["sha256"])
    if hashlib.sha256(package).hexdigest() != pkg["sha256"]:
        raise AdminError(f"package {pkg['sha256'][:12]} from the registry does not match its SHA-256")
    model = codec.unpack(package)
    if hashlib.sha256(model).hexdigest() != pkg["model_sha256"]:
        raise AdminError(f"package {pkg['sha256'][:12]} does not decode to the published model")
    try:
        contract = InputContract.from_dict(published.get("contract"))
    except ContractError as e:
        raise AdminError(f"version {published.get('version')} has no usable input contract to flash with it: {e}") from e
    return FactoryImage(int(published["version"]), codec_name, package, model, pkg["sha256"], pkg["model_sha256"],
                        contract)


def preinstall(specs: list[CarSpec], state_root: Path, image: FactoryImage) -> int:
    """Flash ``image`` as the active slot of every car that has no model yet; returns how many were flashed.

    Slot files are hard links to one copy per SHA-256, as the simulator's installs write them.
    """
    flashed = 0
    for spec in specs:
        store = DedupSlotStore(state_root / spec.device_id, state_root / ".shared-slots")
        journal = store.load()
        if journal.active is not None:
            continue
        slot = store.free_slot(journal)
        store.write_slot(slot, image.package, image.model)
        journal.active = SlotRecord(slot, image.version, image.model_sha256, image.package_sha256, image.codec,
                                    image.contract, 0, None)
        store.save(journal)
        flashed += 1
    return flashed


def factory_codec(published: dict) -> str:
    """The codec to flash: ``deep`` (what cars run in the field) when the version has it, else the first published.

    Raises:
        AdminError: the version has no package at all.
    """
    packages = published.get("packages") or {}
    if not packages:
        raise AdminError(f"version {published.get('version')} has no package to flash at the factory")
    return "deep" if "deep" in packages else next(iter(packages))


def flash_fleet(admin: RegistryAdmin, published: dict, specs: list[CarSpec], state_root: Path,
                codec_name: str | None = None) -> dict[str, Any]:
    """Fetch ``published`` once and flash it onto every car of ``specs`` that has no model yet.

    Returns the figures a run reports: ``version``, ``codec``, ``package_bytes``, ``cars_flashed``, ``flash_wall_s``.

    Raises:
        AdminError: the registry has no such package, or its bytes do not match what it published.
    """
    t = time.monotonic()
    image = fetch_image(admin, published, codec_name or factory_codec(published))
    flashed = preinstall(specs, state_root, image)
    return {"version": image.version, "codec": image.codec, "package_bytes": len(image.package),
            "cars_flashed": flashed, "flash_wall_s": round(time.monotonic() - t, 1)}


def describe_flash(figures: dict[str, Any]) -> str:
    """One line for the operator: what was flashed, onto how many cars, and how to download it instead."""
    return (f"factory: v{figures['version']} ({figures['package_bytes'] / 1e3:.0f} KB {figures['codec']} package) "
            f"flashed onto {figures['cars_flashed']} cars in {figures['flash_wall_s']} s "
            "(not downloaded: --initial-install does)")
