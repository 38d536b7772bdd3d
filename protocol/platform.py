"""What a car can run (``Platform``) and what a model version needs (``Requirements``), issue 20 item 3.

A model exported at a newer ONNX opset or IR version than the car's ONNX
Runtime supports simply fails to load there; a rollout would count that car
as failed when it should never have been offered the version.  So the car
reports its :class:`Platform` (at enrolment, and in a poll when it changed:
polls carry its :meth:`Platform.digest`), the registry records each version's
:class:`Requirements` at publish (IR version and opsets read from the model,
plus what the publisher sets), and an offer is made only when
``requirements.unmet(platform)`` is empty.

ONNX Runtime does not expose the opsets it supports at run time, so the car
looks its version up in :data:`ORT_SUPPORT`, the table of ONNX Runtime's
compatibility page (ORT release -> highest ai.onnx opset, ai.onnx.ml opset and
IR version it loads).  A release newer than the table gets the table's last
row: an under-estimate, which can only withhold a version, never break a car.

Pure: values, bounded parsing (:class:`~protocol.errors.MalformedMessage`
naming the field) and the comparison; no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.canonical import canonical_json
from protocol.errors import MalformedMessage

#: ONNX Runtime release (major, minor) -> (ai.onnx opset, ai.onnx.ml opset, IR version) it supports
#: (https://onnxruntime.ai/docs/reference/compatibility.html).
ORT_SUPPORT: dict[tuple[int, int], tuple[int, int, int]] = {
    (1, 0): (10, 2, 6), (1, 1): (11, 2, 6), (1, 2): (11, 2, 6), (1, 3): (12, 2, 7), (1, 4): (12, 2, 7),
    (1, 5): (12, 2, 7), (1, 6): (13, 2, 7), (1, 7): (13, 2, 7), (1, 8): (14, 2, 7), (1, 9): (15, 2, 8),
    (1, 10): (15, 2, 8), (1, 11): (16, 3, 8), (1, 12): (17, 3, 8), (1, 13): (17, 3, 8), (1, 14): (18, 3, 8),
    (1, 15): (19, 3, 9), (1, 16): (19, 3, 9), (1, 17): (20, 4, 9), (1, 18): (21, 4, 10), (1, 19): (21, 4, 10),
    (1, 20): (21, 4, 10), (1, 21): (22, 5, 10), (1, 22): (22, 5, 10), (1, 23): (23, 5, 11),
}
#: The opset domains every ONNX Runtime build provides besides ai.onnx and ai.onnx.ml (its contrib operators).
ORT_EXTRA_DOMAINS = {"com.microsoft": 1}

AI_ONNX = "ai.onnx"
MAX_DOMAINS = 16
MAX_PROVIDERS = 16
MAX_HARDWARE = 16
MAX_NAME_CHARS = 64
MAX_OPSET = 1000
MAX_IR = 1000
MAX_MEMORY_MB = 1 << 30
_VERSION = re.compile(r"^(\d{1,6})\.(\d{1,6})(?:\.(\d{1,6}))?")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:/-]{0,63}$")


def parse_ort_version(text: str, where: str = "ort_version") -> tuple[int, int, int]:
    """``"1.18.1"`` (or ``"1.18.1.dev2024"``, ``"1.18"``) -> (1, 18, 1).

    Raises:
        MalformedMessage: not a version string starting ``MAJOR.MINOR``.
    """
    m = _VERSION.match(text) if isinstance(text, str) and len(text) <= MAX_NAME_CHARS else None
    if m is None:
        raise MalformedMessage(f"{where}: {str(text)[:40]!r} is not an ONNX Runtime version like 1.18.1")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def ort_support(version: str) -> tuple[dict[str, int], int]:
    """(opsets by domain, IR version) an ONNX Runtime release loads, from :data:`ORT_SUPPORT`.

    Raises:
        MalformedMessage: ``version`` is not a version string.
    """
    major, minor, _patch = parse_ort_version(version)
    known = sorted(ORT_SUPPORT)
    row = ORT_SUPPORT.get((major, minor))
    if row is None:  # newer than the table: its last row (older than the table: its first)
        row = ORT_SUPPORT[known[-1]] if (major, minor) > known[-1] else ORT_SUPPORT[known[0]]
    onnx_opset, ml_opset, ir = row
    return {AI_ONNX: onnx_opset, "ai.onnx.ml": ml_opset, **ORT_EXTRA_DOMAINS}, ir


def _domain(name: str) -> str:
    return AI_ONNX if name in ("", AI_ONNX) else name


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise MalformedMessage(f"{where}: {str(value)[:40]!r} is not a name of 1-{MAX_NAME_CHARS} letters, digits "
                               "and ._+:/- ")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedMessage(f"{where}: {value!r} is not an integer in [{low}, {high}]")
    return value


def _names(value: Any, where: str, limit: int) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise MalformedMessage(f"{where}: expected a list of at most {limit} names")
    return tuple(_name(v, f"{where}[{i}]") for i, v in enumerate(value))


def _opsets(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping) or len(value) > MAX_DOMAINS:
        raise MalformedMessage(f"{where}: expected an object of at most {MAX_DOMAINS} domain: opset entries")
    out: dict[str, int] = {}
    for k, v in value.items():
        if not isinstance(k, str) or (k and not _NAME.match(k)):
            raise MalformedMessage(f"{where}: {str(k)[:40]!r} is not an opset domain name")
        out[_domain(k)] = max(out.get(_domain(k), 0), _int(v, f"{where}.{k or AI_ONNX}", 1, MAX_OPSET))
    return out


def _check_keys(d: Any, allowed: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise MalformedMessage(f"{what}: expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise MalformedMessage(f"{what}: unknown field {str(unknown[0])[:40]!r}; known fields are "
                               f"{', '.join(sorted(allowed))}")
    return d


@dataclass(frozen=True)
class Platform:
    """What a car has: its ONNX Runtime (version, the opsets and IR version it loads, execution providers),
    CPU architecture, memory and the hardware tags its maker gave it."""

    ort_version: str
    opsets: dict[str, int]
    ir_version: int
    providers: tuple[str, ...] = ()
    arch: str | None = None
    memory_mb: int | None = None
    hardware: tuple[str, ...] = ()

    @classmethod
    def for_runtime(cls, ort_version: str, providers: tuple[str, ...] = (), arch: str | None = None,
                    memory_mb: int | None = None, hardware: tuple[str, ...] = ()) -> Platform:
        """The platform of a car running ONNX Runtime ``ort_version`` (opsets and IR from :data:`ORT_SUPPORT`)."""
        opsets, ir = ort_support(ort_version)
        return cls.from_dict({"ort_version": ort_version, "opsets": opsets, "ir_version": ir,
                              "providers": list(providers), "arch": arch, "memory_mb": memory_mb,
                              "hardware": list(hardware)})

    def to_dict(self) -> dict[str, Any]:
        return {"ort_version": self.ort_version, "opsets": dict(sorted(self.opsets.items())),
                "ir_version": self.ir_version, "providers": list(self.providers), "arch": self.arch,
                "memory_mb": self.memory_mb, "hardware": list(self.hardware)}

    def digest(self) -> str:
        """Hex SHA-256 of the canonical JSON: what a poll carries, so an unchanged platform costs a string compare."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    @classmethod
    def from_dict(cls, d: Any) -> Platform:
        """Parse a reported platform, every field bounded.

        Raises:
            MalformedMessage: naming the field (``platform.<field>: ...``).
        """
        d = _check_keys(d, {"ort_version", "opsets", "ir_version", "providers", "arch", "memory_mb", "hardware"},
                        "platform")
        version = d.get("ort_version")
        parse_ort_version(version, "platform.ort_version")
        memory = d.get("memory_mb")
        arch = d.get("arch")
        return cls(ort_version=version, opsets=_opsets(d.get("opsets", {}), "platform.opsets"),
                   ir_version=_int(d.get("ir_version"), "platform.ir_version", 1, MAX_IR),
                   providers=_names(d.get("providers", []), "platform.providers", MAX_PROVIDERS),
                   arch=None if arch is None else _name(arch, "platform.arch"),
                   memory_mb=None if memory is None else _int(memory, "platform.memory_mb", 0, MAX_MEMORY_MB),
                   hardware=_names(d.get("hardware", []), "platform.hardware", MAX_HARDWARE))


@dataclass(frozen=True)
class Requirements:
    """What a model version needs of a car.  Every field is optional (None / empty: no requirement).

    ``ir_version`` and ``opsets`` are read from the model at publish (a publisher may raise them);
    ``min_ort_version``, ``providers`` (any one of them), ``arch`` (any one of them), ``hardware`` (every
    tag) and ``min_memory_mb`` are the publisher's.
    """

    ir_version: int | None = None
    opsets: dict[str, int] = field(default_factory=dict)
    min_ort_version: str | None = None
    providers: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    min_memory_mb: int | None = None

    FIELDS = ("ir_version", "opsets", "min_ort_version", "providers", "arch", "hardware", "min_memory_mb")

    def to_dict(self) -> dict[str, Any]:
        return {"ir_version": self.ir_version, "opsets": dict(sorted(self.opsets.items())),
                "min_ort_version": self.min_ort_version, "providers": list(self.providers),
                "arch": list(self.arch), "hardware": list(self.hardware), "min_memory_mb": self.min_memory_mb}

    @classmethod
    def from_dict(cls, d: Any, what: str = "requirements") -> Requirements:
        """Parse requirements (the publisher's form field, or a stored version's), every field bounded.

        Raises:
            MalformedMessage: naming the field (``requirements.<field>: ...``).
        """
        d = _check_keys(d, set(cls.FIELDS), what)
        ir, ort, memory = d.get("ir_version"), d.get("min_ort_version"), d.get("min_memory_mb")
        if ort is not None:
            parse_ort_version(ort, f"{what}.min_ort_version")
        return cls(ir_version=None if ir is None else _int(ir, f"{what}.ir_version", 1, MAX_IR),
                   opsets=_opsets(d.get("opsets") or {}, f"{what}.opsets"), min_ort_version=ort,
                   providers=_names(d.get("providers") or [], f"{what}.providers", MAX_PROVIDERS),
                   arch=_names(d.get("arch") or [], f"{what}.arch", MAX_PROVIDERS),
                   hardware=_names(d.get("hardware") or [], f"{what}.hardware", MAX_HARDWARE),
                   min_memory_mb=None if memory is None else _int(memory, f"{what}.min_memory_mb", 0, MAX_MEMORY_MB))

    def merged(self, other: Requirements) -> Requirements:
        """Both sets of requirements at once (the stricter of each): the model's, raised by the publisher's."""
        opsets = dict(self.opsets)
        for k, v in other.opsets.items():
            opsets[k] = max(opsets.get(k, 0), v)
        ir = max((v for v in (self.ir_version, other.ir_version) if v is not None), default=None)
        orts = [v for v in (self.min_ort_version, other.min_ort_version) if v is not None]
        mem = max((v for v in (self.min_memory_mb, other.min_memory_mb) if v is not None), default=None)
        return Requirements(ir, opsets, max(orts, key=parse_ort_version) if orts else None,
                            other.providers or self.providers, other.arch or self.arch,
                            tuple(dict.fromkeys((*self.hardware, *other.hardware))), mem)

    def unmet(self, platform: Platform) -> list[str]:
        """Why ``platform`` cannot run a version with these requirements (empty: it can)."""
        out: list[str] = []
        if self.ir_version is not None and platform.ir_version < self.ir_version:
            out.append(f"ONNX IR version {self.ir_version} needed, the runtime loads up to {platform.ir_version}")
        for domain, version in sorted(self.opsets.items()):
            has = platform.opsets.get(domain)
            if has is None:
                out.append(f"opset domain {domain} needed, the runtime has none")
            elif has < version:
                out.append(f"opset {domain} {version} needed, the runtime supports up to {has}")
        if self.min_ort_version is not None and (
                parse_ort_version(platform.ort_version) < parse_ort_version(self.min_ort_version)):
            out.append(f"ONNX Runtime >= {self.min_ort_version} needed, the car has {platform.ort_version}")
        if self.providers and not set(self.providers) & set(platform.providers):
            out.append(f"execution provider {' or '.join(self.providers)} needed, the car has "
                       f"{', '.join(platform.providers) or 'none'}")
        if self.arch and platform.arch not in self.arch:
            out.append(f"CPU architecture {' or '.join(self.arch)} needed, the car is {platform.arch or 'unknown'}")
        missing = [h for h in self.hardware if h not in platform.hardware]
        if missing:
            out.append(f"hardware {', '.join(missing)} needed")
        if self.min_memory_mb is not None and (platform.memory_mb is None or platform.memory_mb < self.min_memory_mb):
            out.append(f"{self.min_memory_mb} MB of memory needed, the car has "
                       f"{'an unknown amount' if platform.memory_mb is None else f'{platform.memory_mb} MB'}")
        return out
