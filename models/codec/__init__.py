"""Model codec public API: pack, unpack, read_header, inspect, diff, patch.

All functions are pure (bytes in, bytes out).  The server packs versions and
makes deltas at publish time; the car patches and unpacks.

How the pieces fit::

    api.py        pack / unpack / read_header / inspect (orchestration)
    allocate.py   per-tensor encoding choice under the accuracy gate
    quantize.py   pruning + shared-weight codebooks/grids, per-channel int8, low-rank SVD
    tensors.py    one coded tensor <-> payload bytes
    entropy.py    ANS entropy coding (constriction) of symbol streams
    onnxio.py     ONNX model <-> weightless skeleton + float32 weights
    fidelity.py   ONNX Runtime measurement of agreement on a probe set
    calibrate.py  per-layer input statistics from the probe (for compensated rounding)
    container.py  package / patch byte layout
    delta.py      diff / patch in the coded domain
"""

from models.codec.api import CODECS, PackResult, inspect, pack, read_header, unpack
from models.codec.delta import diff, patch

__all__ = ["CODECS", "PackResult", "diff", "inspect", "pack", "patch", "read_header", "unpack"]
