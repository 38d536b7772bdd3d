"""What a published version needs of a car (issue 20 item 3): read off the model, raised by the publisher.

The model says which ONNX IR version and which opset of each domain it was exported at (its
``opset_import``): an ONNX Runtime that supports less refuses to load it.  The publisher may add what
the graph cannot say (``requirements`` form field, a JSON object of ``protocol.platform.Requirements``
fields): a minimum ONNX Runtime release, an execution provider, a CPU architecture, hardware tags,
memory.  Both are merged (the stricter of each) and stored with the version.
"""

from __future__ import annotations

import json

import onnx

from protocol.errors import MalformedMessage
from protocol.platform import Requirements
from server.errors import Unprocessable

MAX_REQUIREMENTS_CHARS = 4000


def of_model(data: bytes) -> Requirements:
    """The IR version and the opset of every domain the model imports (checked upload bytes)."""
    model = onnx.load_from_string(data)
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        domain = o.domain or "ai.onnx"
        opsets[domain] = max(opsets.get(domain, 0), int(o.version))
    try:
        return Requirements.from_dict({"ir_version": int(model.ir_version) or None, "opsets": opsets},
                                      "the model's requirements")
    except MalformedMessage as e:
        raise Unprocessable(f"{e}; nothing was stored", code="requirements") from e


def parse_publisher(text: str | None) -> Requirements:
    """The publisher's requirements (the ``requirements`` form field), bounded.

    Raises:
        Unprocessable: (code ``requirements``) not JSON, not an object, an unknown field or a value out of
            range; the detail names the field.
    """
    if text is None or not text.strip():
        return Requirements()
    if len(text) > MAX_REQUIREMENTS_CHARS:
        raise Unprocessable(f"requirements: longer than {MAX_REQUIREMENTS_CHARS} characters; nothing was stored",
                            code="requirements")
    try:
        return Requirements.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise Unprocessable(f"requirements: not valid JSON ({e}); nothing was stored", code="requirements") from e
    except MalformedMessage as e:
        raise Unprocessable(f"{e}; nothing was stored", code="requirements") from e
