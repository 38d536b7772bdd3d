"""How the car starts its helper processes: ``python -m <module>`` with this package importable.

Three children share it: the decode worker (``client.decode_worker``), the agent daemon beside a ModelHost
(``client.agentd``) and the shadow comparison (``client.shadowchild``).  Each is started as a module, so
``ps`` shows what it is and no code is passed on the command line; the folder holding ``client`` and
``models`` goes first on PYTHONPATH so that a car running from a source tree (not installed) starts the
same code as its parent.  Secrets never go on argv (readable by every user): each child reads its
configuration from a pipe.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: The folder holding ``client`` and ``models``.
ROOT = Path(__file__).resolve().parents[1]

# One BLAS thread: a child's matrix products must not take the camera's core as well.
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def module_command(module: str, *args: str) -> list[str]:
    """argv that runs ``module`` under this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with ``ROOT`` first on PYTHONPATH, and ``extra``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}
