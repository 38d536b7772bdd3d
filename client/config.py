"""``AgentConfig``: the one place an agent's settings live.

The caller (``ota agent``, the simulator, a test) builds it; library code never
reads the environment.  Units are in the field names.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from protocol.platform import Platform

log = logging.getLogger("client.config")


@dataclass
class AgentConfig:
    """Everything an agent needs to know that is not on its disk yet."""

    server_url: str
    device_id: str
    state_dir: Path
    line: str = "road-signs"
    #: Where this line's journal, slots and downloads live; None: ``state_dir`` (a one-line car).  A car on
    #: several lines (``client.multiagent``) gives each line its own; identity, device key and trust stay in
    #: ``state_dir``, shared by every line.
    slots_dir: Path | None = None
    #: The fleet's root public key (raw Ed25519, 32 bytes), provisioned before first contact: the car trusts
    #: only offers signed by keys a root-signed delegation names (client/trust.py).  Required to enrol.
    root_public_key: bytes | None = None
    #: Fleet enrollment token; needed only for the first start (or if the device token is revoked).
    enroll_token: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    #: Hardware tags reported in the car's platform (issue 20: a version may need one, e.g. "npu-v2").
    hardware: tuple[str, ...] = ()
    #: What the car reports it can run; None measures the local ONNX Runtime (client/platform_probe.py).  Set
    #: it only to model another car (the simulator's older cars, tests).
    platform: Platform | None = None
    #: PEM file of the CA that signed the registry's https certificate, when the system's CAs do not know it.
    ca_cert_path: Path | None = None

    #: Overrides the server-given poll interval when set (tests, the demo); not clamped: the caller chose it.
    poll_interval_s: float | None = None
    #: Bounds on the server-given interval: a registry answering 0 or a negative number (a bad row, a hostile
    #: proxy) would otherwise make the car poll hundreds of times a second, and an absurdly large one would
    #: silence it.  The ceiling is a day, so a car still hears of revocations and new keys daily.
    poll_interval_min_s: float = 1.0
    poll_interval_max_s: float = 24 * 3600.0
    #: Each wait is the interval times a uniform factor in [1 - j, 1 + j].
    poll_jitter_fraction: float = 0.2
    #: Exponential backoff on errors, with full jitter so a fleet does not return in step.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0

    #: Download pacing (token bucket); None means as fast as the link allows.
    max_rate_bytes_per_s: float | None = None
    rate_burst_bytes: int = 64 * 1024
    download_chunk_bytes: int = 64 * 1024
    #: Attempts per artifact before the update is reported failed (each resumes the partial file).
    download_max_attempts: int = 6
    http_timeout_s: float = 30.0

    #: ONNX Runtime threads per session; the car shares its cores with the camera pipeline.
    inference_threads: int = 1
    #: Patch and decode packages in a child process (``client.decode_worker``): in a thread of this
    #: process they hold the GIL for tens of ms and the camera thread waits for it after every inference.
    decode_in_subprocess: bool = True
    #: The child exits after this long without work, giving its memory back; the next update starts one.
    decode_worker_idle_s: float = 30.0
    #: How far the child lowers its priority (``os.nice``): the camera comes first, the update can wait.
    decode_worker_nice: int = 10
    #: GIL switch interval while an offer is handled (download and install), so a ``predict`` returning
    #: from ONNX Runtime waits at most about this long for the update's Python code; None keeps 5 ms.
    gil_switch_interval_s: float | None = 0.0001
    #: After a swap the new model must answer this many live inferences with at most this error rate.
    health_window_inferences: int = 20
    health_max_error_rate: float = 0.2
    #: A swap is kept if no inference arrives within this time (a parked car still counts as healthy).
    health_window_max_s: float = 60.0

    #: Reports kept on disk while offline; the oldest progress reports go first when full.
    report_queue_max: int = 500
    #: fsync on every atomic write.  Only a simulator running thousands of agents on one disk turns it off.
    fsync: bool = True


#: What a car does with a poll interval that is not a number at all (NaN): the registry's usual default.
FALLBACK_POLL_INTERVAL_S = 60.0


def clamp_server_poll_interval(config: AgentConfig, value: float) -> float:
    """The server's ``poll_interval_s`` bounded to ``[poll_interval_min_s, poll_interval_max_s]``.

    Logs a warning when it had to change the value, so the operator of the car can see the server is wrong.
    """
    if math.isnan(value):
        used = FALLBACK_POLL_INTERVAL_S
    else:
        used = min(max(value, config.poll_interval_min_s), config.poll_interval_max_s)
    if used != value:
        log.warning("server sent poll_interval_s=%r; using %.0f s (this car polls every %g-%g s)", value, used,
                    config.poll_interval_min_s, config.poll_interval_max_s)
    return used
