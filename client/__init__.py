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
"""

from client.agent import Agent, Prediction
from client.config import AgentConfig

__all__ = ["Agent", "AgentConfig", "Prediction"]
