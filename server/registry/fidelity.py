"""What the registry records of a package's fidelity, and whether a package passes its line's gate.

Three states (``packages.fidelity["status"]``), shown by the API, the CLI and the models dashboard:

* ``exact``: lossless; the decoded model is the published one.
* ``measured``: a lossy package whose top-1 agreement with the fp32 model was measured on the
  line's calibration images (``ota publish --probe``), under the line's gate.
* ``unmeasured``: a lossy package of a line without images.  The registry never measures on
  synthetic noise (issue 17: a real ImageNet SqueezeNet scored 0.16 on noise and nothing warned
  anyone), so its agreement is unknown and a rollout must opt in to ship it (``--allow-unmeasured``).

Packages published before this record existed carry ``probe`` instead of ``status``: ``given``
was a measurement on the zoo's road-sign images, ``synthetic`` on noise (now: unmeasured).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EXACT, MEASURED, UNMEASURED = "exact", "measured", "unmeasured"


def record(codec: str, measured: dict[str, Any], gate: float | None, probe_count: int | None) -> dict[str, Any]:
    """The fidelity row of a new package: ``measured`` is the codec header's fidelity, ``gate`` the gate it
    was packed under and ``probe_count`` the images it was measured on (both None: no images)."""
    if codec == "lossless":
        return {"status": EXACT, "top1_agreement": 1.0, "max_abs_diff": 0.0}
    if probe_count is None:
        return {"status": UNMEASURED, "top1_agreement": None, "max_abs_diff": None}
    return {"status": MEASURED, "top1_agreement": measured.get("top1_agreement"),
            "max_abs_diff": measured.get("max_abs_diff"), "probe_count": probe_count, "gate": gate}


def status(codec: str, fid: dict[str, Any]) -> str:
    """The package's status, also for rows written before ``status`` existed."""
    if fid.get("status") in (EXACT, MEASURED, UNMEASURED):
        return str(fid["status"])
    if codec == "lossless" or fid.get("probe") == "exact":
        return EXACT
    return MEASURED if fid.get("probe") == "given" and fid.get("top1_agreement") is not None else UNMEASURED


def agreement(codec: str, fid: dict[str, Any]) -> float | None:
    """The measured top-1 agreement (1.0 for exact), None when unmeasured."""
    s = status(codec, fid)
    if s == EXACT:
        return 1.0
    return fid.get("top1_agreement") if s == MEASURED else None


def passes(codec: str, fid: dict[str, Any], gate: float | None) -> bool:
    """Whether the package may ship without ``--allow-unmeasured``: exact, or measured at or above ``gate``."""
    s = status(codec, fid)
    if s == EXACT:
        return True
    value = agreement(codec, fid)
    return s == MEASURED and gate is not None and value is not None and value >= gate


def shipping_codec(packages: Iterable[tuple[str, int, dict[str, Any]]], gate: float | None) -> str | None:
    """What ships when nobody names a codec: the smallest lossy package that passed ``gate``, else lossless.

    ``packages`` are (codec, bytes, fidelity) of one version.  None when neither exists (every lossy package is
    unmeasured or below the gate and there is no lossless one): the caller must decide.
    """
    rows = list(packages)
    passed = [(size, codec) for codec, size, fid in rows if codec != "lossless" and passes(codec, fid, gate)]
    if passed:
        return min(passed)[1]
    return "lossless" if any(codec == "lossless" for codec, _, _ in rows) else None
