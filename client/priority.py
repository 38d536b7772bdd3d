"""Update work at a lower CPU priority than inference, inside the agent's own process.

The decode worker is a child process lowered with ``os.nice``
(``client.decode_worker``); what stays in the agent process (building the new
ONNX Runtime session, its smoke test, hashing and writing the slot) runs in
threads.  On Linux a thread has its own nice value, so ``update_executor``
gives that work threads that lowered theirs: when the car's cores are busy,
the scheduler runs the camera's inference thread first and the update waits.
The GIL is unaffected (``hotswap.gil_switch_interval`` handles that part).

Lowering is one-way for an unprivileged process, so these threads are kept
for update work only.  Elsewhere ``os.setpriority`` on a thread id is not
per-thread (or does not exist) and the threads keep the process's priority.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

_executors: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice`` (Linux only); returns whether it did."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:  # a sandbox that forbids it: the update just competes at normal priority
        log.warning("could not lower the update thread's priority: %s", e)
        return False
    return True


def update_executor(nice: int, max_workers: int = 2) -> ThreadPoolExecutor:
    """The process's executor whose threads run at ``nice`` below normal (one per nice value, made on first use)."""
    with _lock:
        ex = _executors.get(nice)
        if ex is None:
            ex = _executors[nice] = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"ota-update-n{nice}",
                                                       initializer=lower_thread_priority, initargs=(nice,))
        return ex
