"""What this car can run (issue 20 item 3): its ``protocol.platform.Platform``, measured once per process.

The registry offers a version only to a car whose platform meets the version's requirements, so the
figures must be what the local ONNX Runtime really loads:

* opsets: the highest ``since_version`` of the operator schemas ONNX Runtime registered, per domain
  (``get_all_operator_schema``; an opset is at least the newest operator version it defines), else
  ``protocol.platform.ORT_SUPPORT``'s row for the release;
* IR version: the highest a one-node model of that IR version loads at (ONNX Runtime refuses a newer IR
  than it knows), probed downwards from a little above the ``onnx`` package's, else the table's;
* execution providers, CPU architecture (``platform.machine()``) and physical memory (``os.sysconf``).

About a quarter of a second the first time (reading ~900 schemas); then cached for every agent of the process.
"""

from __future__ import annotations

import functools
import logging
import os
import platform as host

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from protocol.errors import MalformedMessage
from protocol.platform import MAX_DOMAINS, Platform, ort_support

log = logging.getLogger(__name__)


def _schema_opsets() -> dict[str, int] | None:
    try:
        from onnxruntime.capi import _pybind_state as capi

        schemas = capi.get_all_operator_schema()
    except (ImportError, AttributeError, RuntimeError):
        return None
    out: dict[str, int] = {}
    for s in schemas:
        domain = s.domain or "ai.onnx"
        out[domain] = max(out.get(domain, 0), int(s.since_version))
    return dict(sorted(out.items(), key=lambda kv: (kv[0] not in ("ai.onnx", "ai.onnx.ml"), kv[0]))[:MAX_DOMAINS])


def _loads_ir(ir_version: int, opset: int) -> bool:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ONNX Runtime raises its own, unexported exception types
        return False
    return True


def _ir_version(table_ir: int, opset: int) -> int:
    for ir in range(max(onnx.IR_VERSION, table_ir) + 2, table_ir, -1):
        if _loads_ir(ir, opset):
            return ir
    return table_ir


@functools.lru_cache(maxsize=1)
def _runtime() -> tuple[str, dict[str, int], int, tuple[str, ...], str | None, int | None]:
    version = ort.__version__
    table_opsets, table_ir = ort_support(version)
    opsets = _schema_opsets() or table_opsets
    ir = _ir_version(table_ir, opsets.get("ai.onnx", 14))
    try:
        memory: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        memory = None
    return version, opsets, ir, tuple(ort.get_available_providers()), host.machine() or None, memory


def current_platform(hardware: tuple[str, ...] = ()) -> Platform | None:
    """This car's platform with the ``hardware`` tags its maker gave it (``AgentConfig.hardware``); None if it
    cannot be described (then the registry treats the car as able to run anything, as before issue 20)."""
    version, opsets, ir, providers, arch, memory = _runtime()
    try:
        return Platform.from_dict({"ort_version": version, "opsets": opsets, "ir_version": ir,
                                   "providers": list(providers), "arch": arch, "memory_mb": memory,
                                   "hardware": list(hardware)})
    except MalformedMessage as e:
        log.warning("this car's platform cannot be reported (%s); the registry will assume it runs anything", e)
        return None
