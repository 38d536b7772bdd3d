"""The live ONNX Runtime session, replaced without stopping inference.

``HotSwapper`` holds one immutable ``_Live`` record (current model, plus the
previous one during a health window).  ``predict`` reads that reference once
and runs on what it got, so a call that started before a swap finishes on the
old session; a swap is a single reference assignment.  Loading and smoke
testing happen in a worker thread and never touch the reference, so
``predict`` takes no lock the loader holds.

After a swap the previous session stays alive for a short health window: a
live inference that fails (exception or non-finite output) on the new model is
counted and answered by the previous model, so the camera pipeline never sees
the error; the agent reads the counters and rolls back if the rate is too high.

Every loaded model carries its line's input contract (``protocol.contract``):
``predict`` takes a uint8 image of any size, applies the contract's
preprocessing (``models.preprocess``), fetches only the contract's score output
(label tensors or ZipMaps a converter added are never fetched) and turns the
scores into probabilities (a softmax only on logits).

``gil_switch_interval`` shortens the interpreter's GIL switch interval while an
update runs beside inference: a ``predict`` coming back from ONNX Runtime must
re-take the GIL, and an update thread running Python keeps it until asked to
drop it, by default after 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from client.errors import AgentError, BadImage, SmokeTestFailed
from client.manifest import Smoke
from client.shadow import Comparator
from client.shadowproc import ProcessComparator
from models.errors import ContractError
from models.preprocess import postprocess, preprocess
from models.smoke import golden_inputs
from protocol.contract import InputContract
from protocol.quality import QualityPlan, QualitySummary

if TYPE_CHECKING:  # imported where a session is built: the agent daemon never loads ONNX Runtime
    import onnxruntime as ort

#: The model is ONNX bytes, or the path of an ONNX file; the second argument is its SHA-256.
ModelSource = bytes | Path
SessionFactory = Callable[[ModelSource, str], "ort.InferenceSession"]


class NoModel(AgentError):
    """``predict`` was called before any verified model was installed."""


class InferenceFailed(AgentError):
    """The live model raised or produced non-finite outputs (``nonfinite`` tells which)."""

    nonfinite: bool = False


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: label, its probability, the model version that gave it, and the class index."""

    label: str
    probability: float
    version: int
    index: int = -1

    def __str__(self) -> str:
        return f"{self.label}, {self.probability * 100:.1f}%"


@dataclass(frozen=True)
class LoadedModel:
    """A ready session and what it is: its contract says how to feed it and read it."""

    session: ort.InferenceSession
    version: int
    model_sha256: str
    contract: InputContract
    #: The model's batch size when its input fixes one (an image is repeated to fill it), else 1.
    batch: int = 1
    #: The model's bytes, kept only by a ``HotSwapper(comparisons="process")``: a comparison's child
    #: process builds its own session from them.
    source: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels


@dataclass(frozen=True)
class _Live:
    current: LoadedModel
    fallback: LoadedModel | None  # the model swapped out, kept during the health window


def default_session_factory(threads: int = 1) -> SessionFactory:
    """Sessions with a fixed, small thread count (the car's cores belong to the camera too)."""

    def make(model: ModelSource, model_sha256: str) -> ort.InferenceSession:
        # The bytes passed models.onnx_safety in codec.unpack; models.sessions confines any external
        # data lookup to an empty folder, so neither a staged file's neighbours nor the car's
        # working directory can be read (see the README's design notes).
        from models.sessions import open_session

        return open_session(model, intra_threads=threads)

    return make


class Comparison(Protocol):
    """What the agent reads of a running comparison: a ``client.shadow.Comparator`` in this process, or a
    ``client.agentd.RemoteComparison`` for one running in a ``ModelHost``'s process."""

    @property
    def kind(self) -> str:
        ...

    @property
    def beside_version(self) -> int:
        ...

    def snapshot(self) -> QualitySummary:
        ...


class Swapper(Protocol):
    """What the agent needs of the live session's owner: a ``HotSwapper`` in this process, or a
    ``client.agentd.RemoteSwapper`` speaking to one in the car application's process (``client.modelhost``).

    The models it hands back are opaque to the agent: it only passes them on to ``swap``.
    """

    @property
    def fallback(self) -> Any:
        """The model swapped out, while the health window keeps it alive (None otherwise)."""
        ...

    def load_sync(self, model: ModelSource, *, version: int, model_sha256: str, contract: InputContract) -> Any:
        ...

    def load_and_smoke_sync(self, model: ModelSource, *, version: int, model_sha256: str,
                            contract: InputContract, smoke: Smoke) -> Any:
        ...

    async def load_and_smoke(self, model: ModelSource, *, version: int, model_sha256: str,
                             contract: InputContract, smoke: Smoke) -> Any:
        ...

    def swap(self, new: Any, *, health_window: bool = True) -> Any:
        ...

    def health(self) -> tuple[int, int]:
        ...

    def close_health_window(self) -> None:
        ...

    @property
    def comparator(self) -> Comparison | None:
        """The comparison running beside the live model (issue 18), if any."""
        ...

    def start_comparison(self, beside: Any, plan: QualityPlan, *, kind: str, line: str,
                         rollout_id: int | None, resume: QualitySummary | None = None) -> Comparison:
        ...

    def stop_comparison(self) -> QualitySummary | None:
        ...


class HotSwapper:
    """Owns the live session; thread-safe ``predict``, async ``load``, atomic ``swap``."""

    #: How long ``swap`` and ``close_health_window`` wait for calls still running on a retired model,
    #: so that this thread, not the camera's, frees it (see ``_release``).
    release_wait_s: float = 0.05

    def __init__(self, session_factory: SessionFactory | None = None, *, comparisons: str = "thread") -> None:
        """``comparisons``: where a comparison's beside model runs: ``thread`` (a thread of this process) or
        ``process`` (``client.shadowproc``: a child process, so the camera never waits for its GIL; every
        loaded model then keeps its bytes)."""
        if comparisons not in ("thread", "process"):
            raise ValueError(f"comparisons must be 'thread' or 'process', got {comparisons!r}")
        self.comparisons = comparisons
        self._factory = session_factory or default_session_factory()
        self._live: _Live | None = None
        self._count_lock = threading.Lock()  # only guards the health counters, never held during a load
        self._window_calls = 0
        self._window_errors = 0
        #: The comparison running beside the live model (shadow or health-window), if any: ``predict``
        #: hands it a frame after answering.
        self._comparator: Comparator | ProcessComparator | None = None

    # -- the inference path -------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        live = self._live
        return live.current if live else None

    @property
    def fallback(self) -> LoadedModel | None:
        """The model swapped out, while the health window keeps it alive."""
        live = self._live
        return live.fallback if live else None

    def predict(self, image: np.ndarray) -> Prediction:
        """Classify one uint8 image of any size (HxW grey, HxWx3 RGB, HxWx4 RGBA) with the live model.

        Never blocked by an update.  During a health window a failure of the new model is counted and
        the previous model answers, with its own contract.

        Raises:
            BadImage: not a uint8 image of one of those shapes (nothing was run or counted).
            NoModel: nothing installed yet.
            InferenceFailed: the model failed and no previous model was there to answer.
        """
        live = self._live  # one read: this call finishes on whatever it got here
        if live is None:
            raise NoModel("no verified model installed yet; the agent has not completed its first update")
        t0 = time.perf_counter()
        x = _prepare(image, live.current)
        try:
            scores = _run(live.current, x)
            failed = None
        except InferenceFailed as e:
            failed = e
        if live.fallback is not None:
            with self._count_lock:
                self._window_calls += 1
                self._window_errors += failed is not None
        model = live.current
        comparator = self._comparator  # one read, as for ``_live``
        if failed is not None:
            if comparator is not None:
                comparator.record_live_failure(failed.nonfinite)
            if live.fallback is None:
                raise failed
            model = live.fallback
            scores = _run(model, _prepare(image, model))
        probs = postprocess(scores[:1], model.contract)[0]
        i = int(np.argmax(probs))
        answer = Prediction(model.contract.label(i), float(probs[i]), model.version, i)
        if comparator is not None and failed is None:  # after the answer: the camera never waits for the other
            comparator.offer_frame(image, answer, (time.perf_counter() - t0) * 1000, x)
        return answer

    # -- comparisons (issue 18) ---------------------------------------------

    @property
    def comparator(self) -> Comparator | ProcessComparator | None:
        return self._comparator

    def start_comparison(self, beside: LoadedModel, plan: QualityPlan, *, kind: str, line: str,
                         rollout_id: int | None, resume: QualitySummary | None = None
                         ) -> Comparator | ProcessComparator:
        """Run ``beside`` next to the live model on sampled frames (stopping any comparison running).

        ``kind`` ``shadow``: ``beside`` is a candidate that never answers.  ``kind`` ``live``: ``beside`` is
        the previous version (the health window's fallback) and the live model the candidate.

        Raises:
            NoModel: nothing is live to compare against.
        """
        live = self._live
        if live is None:
            raise NoModel("no live model to compare a candidate against")
        self.stop_comparison()
        comparator: Comparator | ProcessComparator
        if self.comparisons == "process" and beside.source is not None:
            comparator = ProcessComparator(beside, live.current, plan, kind=kind, line=line, rollout_id=rollout_id,
                                           resume=resume)
        else:
            comparator = Comparator(beside, live.current, plan, kind=kind, line=line, rollout_id=rollout_id,
                                    resume=resume)
        self._comparator = comparator
        return comparator

    def stop_comparison(self) -> QualitySummary | None:
        """Stop the comparison, if one runs, and free its beside model here; returns its final summary."""
        comparator, self._comparator = self._comparator, None
        return None if comparator is None else comparator.close()

    # -- the update path ----------------------------------------------------

    def load_sync(self, model: ModelSource, *, version: int, model_sha256: str,
                  contract: InputContract) -> LoadedModel:
        """Build a session and check that ``contract`` fits it (blocking; call from a worker thread).

        Raises:
            SmokeTestFailed: ONNX Runtime cannot load the model, or the contract does not fit it
                (input or output name, input rank, a fixed size or channel count, the class count).
        """
        source = None
        if self.comparisons == "process":  # read before the session: a staged file is renamed after the load
            source = model if isinstance(model, bytes) else Path(model).read_bytes()
        try:
            session = self._factory(model, model_sha256)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise SmokeTestFailed(f"ONNX Runtime cannot load model {model_sha256[:12]}: {e}") from e
        return LoadedModel(session, version, model_sha256, contract, _check_fits(session, contract), source)

    def load_and_smoke_sync(self, model: ModelSource, *, version: int, model_sha256: str,
                            contract: InputContract, smoke: Smoke) -> LoadedModel:
        """Build a session and run the golden probe on it (blocking; call from a worker thread).

        Prefer a file path to bytes: ONNX Runtime holds the GIL while it reads
        the model in its constructor, and from bytes it first copies them
        (measured: the camera thread was blocked ~1-2 ms from bytes, ~0.6 ms from
        a path; the rest of the load runs without the GIL).

        Raises:
            SmokeTestFailed: load failed, the contract does not fit the model, or the score output
                differs from the offer's expected values beyond ``atol``.
        """
        loaded = self.load_sync(model, version=version, model_sha256=model_sha256, contract=contract)
        smoke_test(loaded, smoke)
        return loaded

    async def load_and_smoke(self, model: ModelSource, *, version: int, model_sha256: str,
                             contract: InputContract, smoke: Smoke) -> LoadedModel:
        """``load_and_smoke_sync`` off the event loop and off the inference path.

        Raises:
            SmokeTestFailed: load failed, the contract does not fit, or outputs differ beyond ``atol``.
        """
        return await asyncio.to_thread(self.load_and_smoke_sync, model, version=version,
                                       model_sha256=model_sha256, contract=contract, smoke=smoke)

    def swap(self, new: LoadedModel, *, health_window: bool = True) -> None:
        """Make ``new`` live in one reference assignment.

        With ``health_window`` the model it replaces stays as the fallback;
        whatever is no longer needed (the replaced model without a window, a
        fallback of a window still open) is freed here, in the caller's thread.
        """
        live = self._live
        old = live.current if live else None
        retired = [] if live is None else [m for m in (live.current, live.fallback) if m is not None and m is not new]
        del live
        with self._count_lock:
            self._window_calls = 0
            self._window_errors = 0
        keep = old if health_window and old is not new else None
        self._live = _Live(new, keep)
        retired = [m for m in retired if m is not keep]
        del old, keep
        _release(retired, self.release_wait_s)

    def health(self) -> tuple[int, int]:
        """(calls, errors) on the new model since the last swap, while a health window is open."""
        with self._count_lock:
            return self._window_calls, self._window_errors

    def close_health_window(self) -> None:
        """Drop the previous session: the new model has proved itself.  It is freed in the caller's thread."""
        live = self._live
        if live is not None and live.fallback is not None:
            retired = [live.fallback]
            self._live = _Live(live.current, None)
            del live
            _release(retired, self.release_wait_s)


def _release(retired: list[LoadedModel], wait_s: float) -> None:
    """Free the models in ``retired`` (the only references this thread holds) here, not in the camera's thread.

    A ``predict`` that started before a swap holds its model until it returns,
    and whoever drops the last reference pays for freeing the session: 0.2-0.5
    ms holding the GIL (``bench/hotswap.py``), which would land inside one of
    the camera's inferences.  So wait, at most ``wait_s``, for such calls to
    end, then drop the models.  (With the whole agent in one process this runs
    on its event loop, which it holds up only while such a call is running.)
    """
    end = time.monotonic() + wait_s
    while retired:
        # The list's reference and getrefcount's argument: one more is a call still running on it.
        if sys.getrefcount(retired[-1]) > 2 and time.monotonic() < end:
            time.sleep(0.0005)
            continue
        retired.pop()


def _prepare(image: np.ndarray, model: LoadedModel) -> np.ndarray:
    """One image -> ``model``'s input batch (the image repeated when the model fixes a batch above 1).

    Raises:
        BadImage: not a uint8 image of an image shape.
    """
    try:
        x = preprocess(np.asarray(image), model.contract) if np.ndim(image) in (2, 3) else None
    except ContractError as e:
        raise BadImage(f"cannot classify this image: {e}") from e
    if x is None:
        raise BadImage(f"predict takes one image, (H, W) or (H, W, 1|3|4) uint8; got shape {np.shape(image)}")
    return np.repeat(x, model.batch, axis=0) if model.batch > 1 else x


def _run(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """The contract's score output on ``x`` (only that output is fetched); non-finite scores are a failure."""
    c = model.contract
    try:
        scores = model.session.run([c.output_name], {c.input_name: x})[0]
    except Exception as e:  # onnxruntime's own exception types
        raise InferenceFailed(f"model v{model.version} failed: {e}") from e
    scores = np.asarray(scores)
    if scores.dtype.kind != "f" or not np.all(np.isfinite(scores)):
        bad = InferenceFailed(f"model v{model.version} produced non-finite outputs")
        bad.nonfinite = True
        raise bad
    return scores


def _check_fits(session: Any, contract: InputContract) -> int:
    """Refuse a contract that does not fit the loaded model; returns the model's batch size (1 if dynamic).

    What the offer's contract says about the model is checked against what ONNX Runtime reads from it,
    so a contract for another model (a hostile or mistaken offer) fails here, before any swap.

    Raises:
        SmokeTestFailed: the input or output is missing, the input is not rank 4, the output does not
            hold float scores, or a fixed dimension (size, channels) or the class count differs from the
            contract's.
    """
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if contract.input_name not in inputs:
        raise SmokeTestFailed(f"model has inputs {sorted(inputs)}, the contract names {contract.input_name!r}")
    if contract.output_name not in outputs:
        raise SmokeTestFailed(f"model has outputs {sorted(outputs)}, the contract names {contract.output_name!r}")
    dims = list(inputs[contract.input_name].shape)
    wanted = contract.input_shape(1)
    if len(dims) != len(wanted):
        raise SmokeTestFailed(f"model input {contract.input_name!r} has shape {dims}; the contract feeds "
                              f"{contract.layout} images of shape {list(wanted)}")
    for got, want in zip(dims[1:], wanted[1:], strict=True):
        if isinstance(got, int) and got > 0 and got != want:
            raise SmokeTestFailed(f"model input {contract.input_name!r} has shape {dims}; the contract "
                                  f"({contract.layout}, {contract.height}x{contract.width}) feeds {list(wanted)}")
    if outputs[contract.output_name].type != "tensor(float)":
        raise SmokeTestFailed(f"the contract's score output {contract.output_name!r} is "
                              f"{outputs[contract.output_name].type}, not float scores")
    out_dims = list(outputs[contract.output_name].shape)
    classes = out_dims[1] if len(out_dims) >= 2 and isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    if contract.labels and classes is not None and classes != len(contract.labels):
        raise SmokeTestFailed(f"model has {classes} classes but the offer lists {len(contract.labels)} labels")
    batch = dims[0]
    return batch if isinstance(batch, int) and batch > 0 else 1


def smoke_test(model: LoadedModel, smoke: Smoke) -> None:
    """Check that ``model``'s score output reproduces the offer's expected values on the golden inputs.

    Raises:
        SmokeTestFailed: a count, shape or value differs beyond ``smoke.atol``, or the run fails.
    """
    c = model.contract
    if smoke.input_name != c.input_name:
        raise SmokeTestFailed(f"offer's smoke test feeds input {smoke.input_name!r}, its contract {c.input_name!r}")
    inputs = golden_inputs(smoke.seed, smoke.count, smoke.shape)
    if len(smoke.expected) != len(inputs):
        raise SmokeTestFailed(f"offer lists {len(smoke.expected)} expected outputs for {len(inputs)} inputs")
    got = np.zeros(0)
    for i, (x, expected) in enumerate(zip(inputs, smoke.expected, strict=True)):
        try:
            got = np.asarray(model.session.run([c.output_name], {c.input_name: x})[0], dtype=np.float64).reshape(-1)
        except Exception as e:
            raise SmokeTestFailed(f"golden input {i} does not run: {e}") from e
        want = np.asarray(expected, dtype=np.float64).reshape(-1)
        if got.shape != want.shape:
            raise SmokeTestFailed(f"golden input {i}: model gives {got.size} outputs, manifest expects {want.size}")
        diff = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not np.isfinite(diff) or diff > smoke.atol:
            raise SmokeTestFailed(
                f"golden input {i}: outputs differ from the manifest by {diff:.3g} > atol {smoke.atol:g}; "
                "this model is not the one the server verified"
            )
    n_out = got.size // max(1, smoke.shape[0]) if inputs else 0
    if c.labels and n_out != len(c.labels):
        raise SmokeTestFailed(f"model has {n_out} classes but the offer lists {len(c.labels)} labels")


_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def gil_switch_interval(seconds: float | None) -> Iterator[None]:
    """Run the block with ``sys.setswitchinterval(seconds)`` (never longer than the current one), then restore it.

    Why: measured on the hot-swap bench, inferences during an install waited
    ~1 ms for the GIL behind the update's Python code (journal writes, reports,
    logging) with the default 5 ms interval, and only the p99 tail moved; at
    0.1 ms the waits went.  The interval is process-wide, so overlapping users
    (many agents in one simulator) share one setting: the first one in lowers
    it, the last one out restores it.  ``None`` leaves it alone.

    Raises:
        ValueError: ``seconds`` is not a positive number.
    """
    global _switch_users, _switch_saved
    if seconds is None:
        yield
        return
    if not seconds > 0:
        raise ValueError(f"GIL switch interval must be > 0 seconds, got {seconds}")
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(seconds, _switch_saved))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)
