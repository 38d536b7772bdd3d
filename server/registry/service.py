"""Registry decisions: publishing versions, reading them back, storage figures.

Publishing validates first (nothing is written for a bad upload), then packs
every requested codec against the previous version's package of that codec
(so the codec can reuse its grids and the delta stays small), measures the
smoke outputs, stores each package as a keyframe or as a delta on its
predecessor, and inserts the version under a unique (line, number)
constraint, retrying a few times if a concurrent publisher took the number.

Publish is the one operation that does not run in a single request
transaction: packing takes seconds, and holding a transaction (on SQLite,
the write lock) that long would stall every poll.  It reads the previous
version in one short transaction, packs with no transaction open, and
inserts in a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

import numpy as np
import onnx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import codec
from models.errors import ContractError, FidelityGateError
from models.errors import InvalidModel as CodecInvalidModel
from models.preprocess import preprocess
from models.smoke import input_shape as smoke_shape
from protocol.contract import InputContract
from protocol.platform import Requirements
from server import audit, webhooks
from server.blobs import BlobStore
from server.config import Settings
from server.db import Database, utcnow
from server.errors import BadRequest, Conflict, InvalidModel, NotFound, Unprocessable
from server.orm import AuditEntry, Line, Package, Version, VersionVariant
from server.registry import contracts, fidelity, probes, schemas, store
from server.registry import requirements as compat
from server.registry.smoke import expected_outputs
from server.registry.storage import PackageStorage
from server.registry.validate import inspect_upload

log = logging.getLogger("ota.server.registry")
PUBLISH_ATTEMPTS = 5
MAX_GATE_INPUT_BYTES = 1024 * 1024 * 1024  # the line's images as model input (1000 at 227x227: 618 MiB)
LINE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def check_line_name(name: str) -> None:
    if not LINE_NAME.match(name):
        raise BadRequest(f"line name {name!r} is not valid: use lowercase letters, digits, '.', '_' or '-' "
                         "(at most 100 characters)")


def parse_codecs(value: str | None, settings: Settings) -> list[str]:
    names = [c.strip() for c in (value or "").split(",") if c.strip()] or settings.codec_list()
    unknown = [c for c in names if c not in codec.CODECS]
    if unknown:
        raise BadRequest(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(codec.CODECS)}")
    return list(dict.fromkeys(names))


@dataclass
class _Packed:
    codec: str
    package: bytes
    header: dict
    smoke: dict
    base_sha256: str | None  # previous version's package of this codec
    delta: bytes | None      # transfer delta from that base
    fidelity: dict           # what the gate measured (server/registry/fidelity.py)


@dataclass(frozen=True)
class _Gate:
    """What a publish measures lossy packages on: the line's images as model input (None: no images), the gate."""

    probe: np.ndarray | None
    min_agreement: float | None
    count: int | None


def _bases(session: Session, storage: PackageStorage, prev: Version | None,
           codecs: list[str]) -> dict[str, tuple[str, bytes]]:
    out = {}
    for name in codecs:
        row = store.package(session, prev.id, name) if prev else None
        if row is not None:
            out[name] = (row.sha256, storage.materialize(session, row))
    return out


def _pack_all(settings: Settings, data: bytes, contract: InputContract, shape: list[int], codecs: list[str],
              bases: dict[str, tuple[str, bytes]], gate: _Gate) -> list[_Packed]:
    out = []
    for name in codecs:
        base_sha, base = bases.get(name, (None, None))
        measured = gate.probe is not None and name != "lossless"
        started = time.perf_counter()
        try:
            # without images nothing is measured: the codec's own noise probe only steers its choices
            result = codec.pack(data, name, base=base, probe=gate.probe if measured else None,
                                min_agreement=gate.min_agreement if measured else None, contract=contract)
        except FidelityGateError as e:
            raise Unprocessable(f"codec {name!r}: {e} (gate {gate.min_agreement} on the line's "
                                f"{gate.count} calibration images; lower it with --min-agreement, or publish "
                                "without this codec); nothing was stored", code="fidelity_gate") from e
        except CodecInvalidModel as e:
            raise InvalidModel(f"codec {name!r} cannot encode this model: {e}") from e
        log.info("packed %s in %.1f s: %d bytes, %s", name, time.perf_counter() - started, len(result.package),
                 f"gate {gate.min_agreement} on {gate.count} images" if measured else "not measured")
        model = codec.unpack(result.package)
        seed = int(result.header["model_sha256"][:8], 16)
        smoke = expected_outputs(model, contract.input_name, shape, seed, settings.smoke_count,
                                 settings.smoke_atol, output_name=contract.output_name)
        delta = codec.diff(base, result.package) if base is not None else None
        record = fidelity.record(name, result.header.get("fidelity", {}), gate.min_agreement if measured else None,
                                 gate.count if measured else None)
        out.append(_Packed(name, result.package, result.header, smoke, base_sha, delta, record))
    return out


def _store_packages(session: Session, blobs: BlobStore, settings: Settings, version: Version,
                    packed: list[_Packed], variant: int = 0) -> None:
    # a variant is stored on the version's own package of its codec: the same weights, a few bytes
    keyframe_slot = variant == 0 and (version.number - 1) % settings.keyframe_interval == 0
    for p in packed:
        sha = blobs.put(p.package) if (p.delta is None or keyframe_slot) else hashlib.sha256(p.package).hexdigest()
        delta_sha = blobs.put(p.delta) if p.delta is not None else None
        as_delta = p.delta is not None and not keyframe_slot
        session.add(Package(
            version_id=version.id, variant=variant, codec=p.codec, sha256=sha, bytes=len(p.package),
            model_sha256=p.header["model_sha256"],
            fidelity=p.fidelity,
            smoke=p.smoke, storage_kind="delta" if as_delta else "full",
            storage_blob=delta_sha if as_delta else sha,
            storage_base_sha256=p.base_sha256 if as_delta else None,
            storage_bytes=len(p.delta) if as_delta and p.delta is not None else len(p.package),
        ))
        if p.delta is not None and p.base_sha256 is not None and store.delta(session, p.base_sha256, sha) is None:
            store.add_delta(session, p.base_sha256, sha, delta_sha or "", len(p.delta))
    session.flush()


def publish(db: Database, storage: PackageStorage, settings: Settings, line_name: str, data: bytes, *,
            notes: str | None = None, publisher: str | None = None, codecs: str | None = None,
            min_agreement: float | None = None, spec: str | None = None,
            probe: bytes | None = None, requirements: str | None = None, variant_of: int | None = None,
            actor: str = "admin") -> schemas.VersionOut:
    """Validate, pack and register a new version of ``line_name`` (or, ``variant_of`` N, another export of
    version N: :func:`publish_variant`), audited as ``version.publish`` by ``actor`` (a refused publish is
    audited by the route, whose transaction this is not).

    ``spec`` is the publisher's input contract (JSON object of contract fields, ``--spec`` and flags
    merged); fields it leaves out come from the graph, then from the line's previous version.
    ``probe`` is an npz of calibration images (server/registry/probes.py): it becomes the line's
    (replacing any before); without it the line's stored images are used.  Lossy packages are
    measured on the images under the gate (``min_agreement``, else the line's, else the default),
    and recorded as unmeasured when the line has no images.  ``min_agreement`` becomes the line's gate.
    ``requirements`` is the publisher's JSON object of ``protocol.platform.Requirements`` fields, merged
    with what the model says it needs (IR version, opsets) and stored with the version (issue 20).

    Raises:
        InvalidModel: the upload is not a valid ONNX model (nothing is stored).
        BadRequest: bad line name, codec list, spec JSON, probe file or gate (nothing is stored).
        Unprocessable: the contract does not fit the model (code ``contract``), no encoding
            meets the gate (code ``fidelity_gate``), or malformed requirements (code ``requirements``);
            nothing is stored.
        Conflict: concurrent publishers kept taking the version number.
    """
    check_line_name(line_name)
    inspect_upload(data)
    needs = compat.of_model(data).merged(compat.parse_publisher(requirements))
    spec_fields = _parse_spec_text(spec)
    codec_names = parse_codecs(codecs, settings)
    if variant_of is not None:
        return publish_variant(db, storage, settings, line_name, variant_of, data, needs, spec_fields, codec_names,
                               notes=notes, publisher=publisher)
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise BadRequest(f"min_agreement must be between 0 and 1, got {min_agreement}; nothing was stored")
    upload = probes.read_probe(probe, settings.max_probe_bytes) if probe is not None else None
    source_sha = hashlib.sha256(data).hexdigest()
    for _attempt in range(PUBLISH_ATTEMPTS):
        with db.read_scope() as session:  # rebuilding the previous packages is codec work: no write lock
            line = store.line_by_name(session, line_name)
            prev = store.latest_version(session, line.id) if line else None
            prev_number = prev.number if prev else 0
            prev_contract = InputContract.from_dict(prev.contract) if prev else None
            bases = _bases(session, storage, prev, codec_names)
            images = upload.images if upload else _line_images(storage, line)
            line_gate = line.min_agreement if line else None
        contract, shape, changed = _contract(data, spec_fields, prev_contract)
        if min_agreement is not None and images is None and any(c != "lossless" for c in codec_names):
            raise BadRequest(f"min_agreement {min_agreement} needs calibration images to measure on, and line "
                             f"{line_name!r} has none: pass --probe DIR|FILE.npz (real images the model will see); "
                             "nothing was stored", code="invalid_probe")
        gate_value = min_agreement if min_agreement is not None else (
            line_gate if line_gate is not None else settings.default_min_agreement)
        gate = _gate(images, contract, gate_value, codec_names)
        packed = _pack_all(settings, data, contract, shape, codec_names, bases, gate)
        try:
            with db.session_scope() as session:
                line = store.line_by_name(session, line_name) or store.add_line(session, line_name)
                version = Version(line_id=line.id, number=prev_number + 1, source_sha256=source_sha,
                                  source_bytes=len(data), publisher=publisher, notes=notes,
                                  labels=list(contract.labels), input_name=contract.input_name, input_shape=shape,
                                  contract=contract.to_dict(), requirements=needs.to_dict(), created_at=utcnow())
                session.add(version)
                session.flush()
                _store_packages(session, storage.blobs, settings, version, packed)
                if line.stable_version is None:
                    line.stable_version = version.number  # the first version is stable until a rollout completes
                _update_line(session, storage.blobs, line, upload, min_agreement, images is not None,
                             settings.default_min_agreement)
                if changed:
                    session.add(AuditEntry(at=utcnow(), actor=publisher or "admin", action="version.contract_changed",
                                           detail={"line": line.name, "version": version.number,
                                                   "fields": list(changed)}))
                webhooks.emit(session, "version.published", line=line.name, version=version.number,
                              publisher=publisher, source_sha256=source_sha)
                audit.record(session, actor, "version.publish", target=f"line:{line.name}", line=line.name,
                             version=version.number, publisher=publisher, source_sha256=source_sha,
                             codecs=sorted(p.codec for p in packed), probe=upload is not None)
                session.flush()
                out = version_out(session, line, version)
        except IntegrityError:
            continue  # someone else took this number (or created the line); re-read and re-pack
        precompute_fleet_deltas(db, storage, line_name, out.version, settings.fleet_delta_bases)
        return out
    raise Conflict(f"could not allocate a version number for {line_name!r} after {PUBLISH_ATTEMPTS} attempts "
                   "because of concurrent publishes; retry")


def publish_variant(db: Database, storage: PackageStorage, settings: Settings, line_name: str, number: int,
                    data: bytes, needs: Requirements, spec_fields: dict | None, codec_names: list[str], *,
                    notes: str | None = None, publisher: str | None = None) -> schemas.VersionOut:
    """Add another export of version ``number`` (issue 20, variants): e.g. the same weights at an older opset for
    cars whose ONNX Runtime cannot load the version's own export.  It is the same version (same number, same
    rollouts) with its own packages, requirements and model SHA-256; each car is offered the export it can run.

    Its input contract must be the version's: cars on either export must see the same inputs and outputs.
    Its packages are packed on the version's own ones (same weights: stored as a small delta) under the line's
    gate on the line's images.

    Raises:
        NotFound: the line or version ``number`` does not exist (nothing is stored).
        Unprocessable: (code ``contract``) the contract differs from version ``number``'s, or does not fit the
            model; (code ``fidelity_gate``) no encoding meets the gate; nothing is stored.
        Conflict: concurrent publishers kept taking the variant number.
    """
    for _attempt in range(PUBLISH_ATTEMPTS):
        with db.read_scope() as session:
            line = store.line_by_name(session, line_name)
            version = store.version(session, line.id, number) if line is not None else None
            if line is None or version is None:
                raise NotFound(f"line {line_name!r} has no version {number} to publish a variant of; publish the "
                               "version first (without --variant-of); nothing was stored")
            taken = max((v.variant for v in store.variants(session, version.id)), default=0)
            primary = InputContract.from_dict(version.contract)
            bases = _bases(session, storage, version, codec_names)
            images = _line_images(storage, line)
            gate_value = line.min_agreement if line.min_agreement is not None else settings.default_min_agreement
        contract, shape, _changed = _contract(data, spec_fields, primary)
        differ = sorted(k for k, v in contract.to_dict().items() if primary.to_dict().get(k) != v)
        if differ:
            raise Unprocessable(f"a variant must have its version's input contract, and this one differs from version "
                                f"{number}'s in {', '.join(differ)}; export the same inputs and outputs, or publish "
                                "a new version; nothing was stored", code="contract")
        packed = _pack_all(settings, data, contract, shape, codec_names, bases,
                           _gate(images, contract, gate_value, codec_names))
        try:
            with db.session_scope() as session:
                line_row = store.line_by_name(session, line_name)
                version_row = store.version(session, line_row.id, number) if line_row is not None else None
                assert line_row is not None and version_row is not None  # versions are never deleted
                row = store.add_variant(session, VersionVariant(
                    version_id=version_row.id, variant=taken + 1, source_sha256=hashlib.sha256(data).hexdigest(),
                    source_bytes=len(data), requirements=needs.to_dict(), publisher=publisher, notes=notes,
                    created_at=utcnow()))
                _store_packages(session, storage.blobs, settings, version_row, packed, variant=row.variant)
                session.add(AuditEntry(at=utcnow(), actor=publisher or "admin", action="version.variant_added",
                                       detail={"line": line_name, "version": number, "variant": row.variant,
                                               "requirements": needs.to_dict()}))
                session.flush()
                return version_out(session, line_row, version_row)
        except IntegrityError:
            continue  # a concurrent publisher took this variant number; re-read and re-pack
    raise Conflict(f"could not allocate a variant number of {line_name!r} v{number} after {PUBLISH_ATTEMPTS} "
                   "attempts because of concurrent publishes; retry")


def _line_images(storage: PackageStorage, line: Line | None) -> list[np.ndarray] | None:
    """The line's stored calibration images (None: the line has none)."""
    if line is None or line.probe_sha256 is None:
        return None
    data = storage.blobs.get(line.probe_sha256)
    return probes.read_probe(data, len(data)).images


def _gate(images: list[np.ndarray] | None, contract: InputContract, min_agreement: float,
          codec_names: list[str]) -> _Gate:
    """The gate's probe: the line's images through this version's contract (only when a lossy codec needs it)."""
    if images is None or all(c == "lossless" for c in codec_names):
        return _Gate(None, None, None)
    per_image = 4 * 3 * contract.height * contract.width
    if per_image * len(images) > MAX_GATE_INPUT_BYTES:
        raise BadRequest(f"{len(images)} calibration images at the model's {contract.height}x{contract.width} input "
                         f"make {per_image * len(images) / 2**20:,.0f} MiB of float32 input, over the "
                         f"{MAX_GATE_INPUT_BYTES // 2**20} MiB the gate holds: send at most "
                         f"{MAX_GATE_INPUT_BYTES // per_image} images with --probe; nothing was stored",
                         code="invalid_probe")
    try:
        x = preprocess(images, contract)
    except ContractError as e:
        raise BadRequest(f"the calibration images do not go through the contract: {e}; nothing was stored",
                         code="invalid_probe") from e
    return _Gate(x, min_agreement, len(images))


def _update_line(session: Session, blobs: BlobStore, line: Line, upload: probes.Probe | None,
                 min_agreement: float | None, has_images: bool, default_gate: float) -> None:
    """Keep a new probe as the line's images (content-addressed) and the gate the publisher set."""
    if upload is not None:
        line.probe_sha256 = blobs.put(upload.data)
        line.probe_count = upload.count
    if min_agreement is not None:
        line.min_agreement = min_agreement
    elif has_images and line.min_agreement is None:
        line.min_agreement = default_gate


def _parse_spec_text(spec: str | None) -> dict | None:
    if spec is None or not spec.strip():
        return None
    try:
        return contracts.parse_spec(json.loads(spec))
    except ValueError as e:  # JSONDecodeError, and ContractError is not a ValueError
        raise BadRequest(f"the contract spec is not valid JSON: {e}; nothing was stored", code="contract") from e
    except ContractError as e:
        raise BadRequest(f"{e}; nothing was stored", code="contract") from e


def _contract(data: bytes, spec: dict | None,
              previous: InputContract | None) -> tuple[InputContract, list[int], tuple[str, ...]]:
    """The version's contract, the smoke inputs' shape (the model's own batch, the contract's size) and the
    contract fields that differ from the previous version's.

    Raises:
        Unprocessable: the contract does not fit the model (code ``contract``).
    """
    model = onnx.load_from_string(data)
    try:
        resolved = contracts.resolve(model, spec or {}, previous)
        return resolved.contract, list(smoke_shape(model, resolved.contract)), resolved.changed
    except ContractError as e:
        raise Unprocessable(f"input contract: {e}; nothing was stored", code="contract") from e


def precompute_fleet_deltas(db: Database, storage: PackageStorage, line_name: str, number: int, limit: int) -> int:
    """Make the deltas from the versions most of the fleet runs to the new version now, not at first poll.

    The codec work runs in a read scope; a short write transaction then only inserts the rows (SQLite has
    one writer: a diff made while holding it held up every enrolment, report and poll that writes).
    Best effort (a failure only means the delta is made on demand later); returns how many were made.
    """
    try:
        with db.read_scope() as session:
            pairs = _fleet_delta_pairs(session, line_name, number, limit)
            for base, target in pairs:
                storage.make_delta(session, base, target)
            wanted = [(base.sha256, target.sha256) for base, target in pairs]
        with db.session_scope() as session:
            for base_sha, target_sha in wanted:
                base_row, target_row = store.package_by_sha(session, base_sha), store.package_by_sha(session, target_sha)
                if base_row is not None and target_row is not None:
                    storage.delta_for(session, base_row, target_row)  # made above: only the row is inserted here
    except Exception:  # noqa: BLE001 - best effort: never fail a publish that has been committed
        log.exception("precomputing fleet deltas for %s v%d failed; they will be made on demand", line_name, number)
        return 0
    return len(wanted)


def _fleet_delta_pairs(session: Session, line_name: str, number: int, limit: int) -> list[tuple[Package, Package]]:
    """(base, target) packages from the fleet's most-run versions to version ``number`` that have no delta yet."""
    line = store.line_by_name(session, line_name)
    target_v = store.version(session, line.id, number) if line else None
    if line is None or target_v is None:
        return []
    pairs = []
    for running in store.running_versions(session, line_name, limit):
        base_v = store.version(session, line.id, running)
        if base_v is None or running in (number, number - 1):
            continue  # the previous version's delta exists already
        for target in store.packages(session, target_v.id):
            base = store.package(session, base_v.id, target.codec)
            if base is not None and store.delta(session, base.sha256, target.sha256) is None:
                pairs.append((base, target))
    return pairs


def version_out(session: Session, line: Line, version: Version) -> schemas.VersionOut:
    previous = store.version(session, line.id, version.number - 1) if version.number > 1 else None
    changed = [] if previous is None else [k for k, v in version.contract.items() if previous.contract.get(k) != v]
    variants = [schemas.VariantOut(variant=v.variant, source_sha256=v.source_sha256, source_bytes=v.source_bytes,
                                   created_at=v.created_at, publisher=v.publisher, notes=v.notes,
                                   requirements=v.requirements,
                                   packages=_packages_out(session, version, previous, v.variant))
                for v in store.variants(session, version.id)]
    return schemas.VersionOut(
        line=line.name, version=version.number, source_sha256=version.source_sha256,
        source_bytes=version.source_bytes, created_at=version.created_at, publisher=version.publisher,
        notes=version.notes, labels=list(version.labels), contract=dict(version.contract),
        contract_changed=changed, packages=_packages_out(session, version, previous, 0),
        requirements=version.requirements, variants=variants,
    )


def _packages_out(session: Session, version: Version, previous: Version | None,
                  variant: int) -> dict[str, schemas.PackageOut]:
    """One export's packages, with the transfer delta from the same export of the previous version, if any."""
    pkgs = {}
    for p in store.packages(session, version.id, variant):
        delta = store.delta(session, p.storage_base_sha256, p.sha256) if p.storage_base_sha256 and not variant else None
        if delta is None and previous is not None:
            prev_pkg = store.package(session, previous.id, p.codec, variant)
            delta = store.delta(session, prev_pkg.sha256, p.sha256) if prev_pkg else None
        pkgs[p.codec] = schemas.PackageOut(
            sha256=p.sha256, bytes=p.bytes, model_sha256=p.model_sha256,
            fidelity=schemas.Fidelity(status=fidelity.status(p.codec, p.fidelity),
                                      top1_agreement=fidelity.agreement(p.codec, p.fidelity),
                                      max_abs_diff=p.fidelity.get("max_abs_diff"),
                                      probe_count=p.fidelity.get("probe_count"), gate=p.fidelity.get("gate")),
            delta_from_previous=delta.bytes if delta else None,
            stored_as=p.storage_kind, stored_bytes=p.storage_bytes,
        )
    return pkgs


def get_line(session: Session, name: str) -> Line:
    """Raises NotFound."""
    line = store.line_by_name(session, name)
    if line is None:
        raise NotFound(f"model line {name!r} does not exist; publish a version to create it")
    return line


def get_version(session: Session, line_name: str, number: int) -> schemas.VersionOut:
    """Raises NotFound."""
    line = get_line(session, line_name)
    version = store.version(session, line.id, number)
    if version is None:
        raise NotFound(f"line {line_name!r} has no version {number}")
    return version_out(session, line, version)


def list_versions(session: Session, line_name: str) -> list[schemas.VersionOut]:
    line = get_line(session, line_name)
    return [version_out(session, line, v) for v in store.versions(session, line.id)]


def list_lines(session: Session) -> list[schemas.LineOut]:
    out = []
    for line in store.lines(session):
        latest = store.latest_version(session, line.id)
        out.append(schemas.LineOut(name=line.name, stable_version=line.stable_version,
                                   latest_version=latest.number if latest else None,
                                   versions=store.version_count(session, line.id),
                                   probe_sha256=line.probe_sha256, probe_count=line.probe_count,
                                   min_agreement=line.min_agreement))
    return out


def storage_report(session: Session, line_name: str) -> schemas.StorageOut:
    line = get_line(session, line_name)
    pkgs = store.line_packages(session, line.id)
    stored, full = sum(p.storage_bytes for p in pkgs), sum(p.bytes for p in pkgs)
    return schemas.StorageOut(line=line.name, stored_bytes=stored, full_packages_bytes=full,
                              saving_ratio=round(1 - stored / full, 4) if full else 0.0, packages=len(pkgs),
                              keyframes=sum(1 for p in pkgs if p.storage_kind == "full"))
