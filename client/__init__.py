"""The car agent: enrol, poll, download, verify, install and hot-swap ONNX models.

Pieces, from the bottom up:

- ``config``     ``AgentConfig``: every knob, units in the names.
- ``errors``     the small exception tree callers decide on.
- ``ratelimit``  token bucket that paces downloads (bytes per second).
- ``manifest``   pure verification of signed offers (Ed25519, expiry, replay, downgrade).
- ``api``        async HTTP calls to the registry over an injectable httpx transport.
- ``download``   resumable, bounded, verified artifact downloads.
- ``decode_worker`` patch + unpack in a child process, so decoding never holds the agent's GIL.
- ``slots``      two model slots on disk and the atomic state journal.
- ``hotswap``    the live ONNX Runtime session; load + smoke test off the inference path.
- ``reports``    state-change reports, queued in the journal, sent idempotently by seq.
- ``agent``      the orchestrator that reads top to bottom, and ``Agent.predict``.
- ``modelhost``  the car application's side of a split agent: the live session and ``ModelHost.predict``
                 in the application's process, the ``Agent`` in a daemon it starts (``agentd``), so the
                 agent's Python never takes the camera thread's GIL.
- ``agentd``     that daemon: an ``Agent`` whose ``Swapper`` is the host's session, over a socket.
"""

from client.agent import Agent, Prediction
from client.config import AgentConfig
from client.modelhost import ModelHost

__all__ = ["Agent", "AgentConfig", "ModelHost", "Prediction"]
