"""A line's calibration images: checking an uploaded probe file before anything is stored.

``ota publish --probe DIR|FILE.npz`` sends real images the model will see (issue 17: a gate that
measures on noise says nothing about a real classifier).  The file is an ``.npz`` of uint8 images:
either one ``images`` array (N, H, W, 3) -- other arrays beside it, such as the zoo's ``labels``,
are ignored -- or separate (H, W, 3) arrays, one per image (what the CLI packs from a folder of
JPEG/PNG files of any sizes).  :func:`read_probe` reads every array's header from the zip before
decompressing anything, so a hostile file costs at most its bounds: images, side, decoded bytes;
``allow_pickle=False`` throughout.  The registry stores the checked upload as a content-addressed
blob (``lines.probe_sha256``) and applies each version's contract to it (``models.preprocess``).

Pure: bytes in, images or :class:`~server.errors.BadRequest` out.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from server.errors import BadRequest

MAX_PROBE_IMAGES = 1000
MAX_PROBE_SIDE = 4096
MAX_PROBE_DECODED_BYTES = 512 * 1024 * 1024  # e.g. 1000 images of 227x227 take 155 MB
MAX_MEMBERS = MAX_PROBE_IMAGES + 8  # room for a few side arrays (labels) beside the images
HINT = ("send an .npz of uint8 images: one array 'images' of shape (N, H, W, 3), or one (H, W, 3) array per "
        "image (`ota publish --probe DIR` packs a folder of JPEG/PNG files so)")


@dataclass(frozen=True)
class Probe:
    """Checked calibration images (uint8 HxWx3, any sizes) and the exact bytes they came in."""

    images: list[np.ndarray]
    data: bytes

    @property
    def count(self) -> int:
        return len(self.images)


def _refuse(problem: str) -> BadRequest:
    return BadRequest(f"probe file refused: {problem}; {HINT}. Nothing was stored", code="invalid_probe")


def _header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` member declares, read without decompressing its data."""
    with zf.open(name) as f:
        try:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = reader(f)
        except (ValueError, OSError, SyntaxError) as e:
            raise _refuse(f"array {name!r} is not a .npy array ({e})") from e
    return tuple(int(d) for d in shape), dtype


def _check_image(name: str, shape: tuple[int, ...], dtype: np.dtype, rank: int) -> None:
    if dtype.hasobject:
        raise _refuse(f"array {name!r} holds Python objects (a pickle), which the registry never loads")
    if dtype != np.uint8:
        raise _refuse(f"array {name!r} has dtype {dtype}, not uint8")
    if len(shape) != rank or shape[-1] != 3:
        want = "(N, H, W, 3)" if rank == 4 else "(H, W, 3)"
        raise _refuse(f"array {name!r} has shape {list(shape)}, not {want}")
    sides = shape[-3:-1]
    if min(sides) < 1 or max(sides) > MAX_PROBE_SIDE:
        raise _refuse(f"array {name!r} has an image of {sides[0]}x{sides[1]} pixels; sides must be 1..{MAX_PROBE_SIDE}")


def read_probe(data: bytes, max_bytes: int) -> Probe:
    """Check an uploaded probe file and read its images.

    Raises:
        BadRequest: (code ``invalid_probe``) larger than ``max_bytes``, not an npz, a pickled or
            non-uint8 array, a wrong rank, no images, more than :data:`MAX_PROBE_IMAGES` images, a
            side over :data:`MAX_PROBE_SIDE`, or more than :data:`MAX_PROBE_DECODED_BYTES` decoded.
    """
    if len(data) > max_bytes:
        raise _refuse(f"it is {len(data):,} bytes, over the {max_bytes:,}-byte limit (OTA_MAX_PROBE_BYTES)")
    if not data:
        raise _refuse("it is empty")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _refuse(f"it is not an .npz (zip) file ({e})") from e
    with zf:
        if len(members) > MAX_MEMBERS:
            raise _refuse(f"it holds {len(members)} arrays; at most {MAX_PROBE_IMAGES} images are used")
        if any(not m.endswith(".npy") for m in members):
            raise _refuse(f"member {next(m for m in members if not m.endswith('.npy'))!r} is not a .npy array")
        names = [m[:-4] for m in members]
        use = ["images"] if "images" in names else names
        if not use:
            raise _refuse("it holds no arrays")
        total = 0
        count = 0
        for name in use:
            shape, dtype = _header(zf, name + ".npy")
            _check_image(name, shape, dtype, 4 if name == "images" and len(use) == 1 and len(shape) == 4 else 3)
            count += shape[0] if len(shape) == 4 else 1
            total += int(np.prod(shape, dtype=np.int64))
            if count > MAX_PROBE_IMAGES:
                raise _refuse(f"it holds more than {MAX_PROBE_IMAGES} images")
            if total > MAX_PROBE_DECODED_BYTES:
                raise _refuse(f"its images take more than {MAX_PROBE_DECODED_BYTES:,} bytes decoded")
        if count == 0:
            raise _refuse("it holds no images")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = [np.asarray(z[name]) for name in use]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise _refuse(f"an array does not decode ({e})") from e
    images = [im for a in arrays for im in (list(a) if a.ndim == 4 else [a])]
    return Probe([np.ascontiguousarray(im) for im in images], data)
