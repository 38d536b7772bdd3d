"""Re-export a model at another ONNX opset, for the demo's mixed-runtime phase (issue 20, variants).

The zoo's SqueezeNets are exported at opset 17, and every operator they use is the same from 17 to 21, so a
copy that imports opset 21 is the same network that an ONNX Runtime older than 1.16 refuses to load (1.14
stops at opset 18).  The publisher ships it with an opset-17 variant (``ota publish --variant-of``) for the
old cars.  A variant must not be byte for byte a version the cars already run (a car that holds that model
would take the offer for one it has), so the copy records which export it is in its metadata.
"""

from __future__ import annotations

import onnx
from onnx import helper


def at_opset(data: bytes, opset: int, export_note: str) -> bytes:
    """``data`` importing ai.onnx ``opset`` (other domains kept), ``export_note`` in its metadata; checked.

    Raises:
        onnx.checker.ValidationError: the graph is not valid at that opset.
    """
    model = onnx.load_from_string(data)
    others = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", opset), *others])
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "ota.export": export_note})
    onnx.checker.check_model(model)
    return model.SerializeToString()
