"""ONNX Runtime sessions that cannot read a file named by the model.

ONNX Runtime (checked on 1.32) has no session option that turns external
data off.  It has one that says where external data is looked up:
``session.model_external_initializers_file_folder_path``, honoured for models
loaded from bytes *and* from a path, and it refuses absolute locations and
locations that escape that folder (``..``).  Every session built here points
it at :func:`empty_dir`, a private (0700) folder this process creates and
never writes to, so a tensor that slipped past ``models.onnx_safety`` finds no
file to read and the session fails to load.  That is the second wall; the
first is :func:`models.onnx_safety.check_embedded`, which every model passes
before it reaches a session (at publish, and in ``codec.unpack`` on the car).

ONNX Runtime is imported inside the functions: the car's decode worker
imports ``models`` but never builds a session.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime as ort

#: The ONNX Runtime session config key that decides where external data files are looked up.
EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"

_lock = threading.Lock()
_empty: Path | None = None


def empty_dir() -> Path:
    """This process's empty, private folder for ONNX Runtime's external data lookups (made once, removed at exit).

    A fresh ``mkdtemp`` folder (mode 0700, owned by this process's user): nobody else can put a
    file there, and nothing here does.
    """
    global _empty
    with _lock:
        if _empty is None or not _empty.is_dir():
            _empty = Path(tempfile.mkdtemp(prefix="ota-ort-no-files-"))
            atexit.register(_remove, _empty)
        return _empty


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def session_options(*, intra_threads: int, inter_threads: int = 1, log_severity: int = 3) -> ort.SessionOptions:
    """Session options with our thread counts and external data confined to :func:`empty_dir`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = inter_threads
    opts.log_severity_level = log_severity
    opts.add_session_config_entry(EXTERNAL_DATA_FOLDER_KEY, str(empty_dir()))
    return opts


def open_session(model: bytes | Path, *, intra_threads: int, inter_threads: int = 1,
                 log_severity: int = 3) -> ort.InferenceSession:
    """A CPU session on ``model`` (ONNX bytes, or a file that holds nothing else to read).

    The caller must have passed the model's bytes through
    :func:`models.onnx_safety.check_embedded` first; this only makes sure a miss cannot read files.

    Raises:
        Exception: whatever ONNX Runtime raises for a model it cannot load (its errors derive
            from ``Exception`` only).
    """
    import onnxruntime as ort

    opts = session_options(intra_threads=intra_threads, inter_threads=inter_threads, log_severity=log_severity)
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
