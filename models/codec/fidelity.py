"""The accuracy gate's measurement: decoded model vs the fp32 original on a probe set.

Runs real ONNX Runtime sessions (in memory, no files).  A model whose batch
dimension is fixed runs the probe in chunks of that size, padding the last
chunk, so a batch-1 export works the same as a dynamic one.  Only the output
that holds the class scores is compared (the contract's ``output_name``, else
the first float output of rank 2): label tensors and ONNX-ML ZipMap outputs
that converters add beside it are not numbers to compare.  Probabilities (a
Softmax output) are compared as log-probabilities, i.e. logits up to a
per-sample constant: the gate's noise model and the allocator's sensitivities
are in logit units, and a probability's error says nothing about a class that
is 1e-6 likely (issue 17: the real ImageNet SqueezeNet, gated on its
probabilities, failed 0.99 even at the finest setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from models.codec import onnxio
from models.contract import InputContract, ends_in_softmax, score_output
from models.errors import ContractError, InvalidModel
from models.smoke import golden_inputs, input_shape

if TYPE_CHECKING:
    import onnxruntime as ort

SYNTHETIC_PROBE_COUNT = 32
TINY_PROBABILITY = 1e-37  # float32 probabilities below this are 0 after underflow; log of it stands for -inf
SYNTHETIC_PROBE_SEED = 20261129
MAX_CHUNK = 64


@dataclass(frozen=True)
class Fidelity:
    """How closely a decoded model agrees with the original."""

    top1_agreement: float
    max_abs_diff: float
    mse: float = 0.0
    expected_agreement: float = 1.0

    def passes(self, gate: float) -> bool:
        """The measured agreement reaches the gate, and the expected one with room to spare.

        The expected number of disagreements (under the measured output noise)
        may be at most half of what the gate allows, so that a pass is not a
        lucky draw on near-tie samples and the next version, packed on this
        one's grids, passes as well.
        """
        return self.top1_agreement >= gate and self.expected_agreement >= 1.0 - (1.0 - gate) / 2

    def as_dict(self) -> dict[str, float]:
        return {
            "top1_agreement": round(self.top1_agreement, 6),
            "expected_agreement": round(self.expected_agreement, 6),
            "max_abs_diff": float(f"{self.max_abs_diff:.6g}"),
            "rms_diff": float(f"{math.sqrt(self.mse):.6g}"),
        }


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    """An in-memory session for probe runs, unable to read files (``models.sessions``).

    Callers pass bytes that went through ``onnxio.load`` or ``onnxio.assemble``,
    both of which refuse external data.  ONNX Runtime is imported when a
    session is built, never at module level: the car's decode worker imports
    the codec to patch and unpack, never to measure, and the runtime costs it ~20 MB.
    """
    from models.sessions import open_session

    return open_session(onnx_bytes, intra_threads=2)


def synthetic_probe(model: onnx.ModelProto, contract: InputContract | None = None) -> np.ndarray:
    """Deterministic noise inputs when the publisher gave no probe set, in the model's real input shape.

    Noise says little about a real classifier's agreement; callers record such a measurement
    as synthetic.

    Raises:
        ContractError: the input has dynamic height/width and no contract gives the size.
    """
    shape = input_shape(model, contract)
    return np.concatenate(golden_inputs(SYNTHETIC_PROBE_SEED, SYNTHETIC_PROBE_COUNT, [1, *shape[1:]]))


def scores_name(model: onnx.ModelProto, contract: InputContract | None = None) -> str:
    """The output compared by the gate: the contract's, else the first float rank-2 output, else the first."""
    if contract is not None:
        return contract.output_name
    try:
        return score_output(model).name
    except ContractError:
        return model.graph.output[0].name


class Reference:
    """The fp32 model's outputs on the probe, computed once and compared against many candidates."""

    def __init__(self, model: onnx.ModelProto, onnx_bytes: bytes, probe: np.ndarray,
                 contract: InputContract | None = None) -> None:
        self.input_name, dims = onnxio.input_spec(model)
        if contract is not None:
            self.input_name = contract.input_name
        self.output_name = scores_name(model, contract)
        self.log_scores = (contract.output_kind == "probabilities" if contract is not None
                           else ends_in_softmax(model, self.output_name))
        probe = np.ascontiguousarray(probe, dtype=np.float32)
        if probe.ndim != len(dims) or any(d and d != p for d, p in zip(dims[1:], probe.shape[1:], strict=False)):
            raise InvalidModel(
                f"probe shape {list(probe.shape)} does not fit model input {self.input_name!r} "
                f"{['N' if d is None else d for d in dims]}"
            )
        if len(probe) == 0:
            raise InvalidModel("probe set is empty")
        self.batch = dims[0] if dims and dims[0] else None
        self.probe = probe
        self.outputs = self.run(onnx_bytes)
        top2 = np.sort(self.outputs, axis=1)[:, -2:] if self.outputs.shape[1] > 1 else None
        self.margins = (top2[:, 1] - top2[:, 0]).astype(np.float64) if top2 is not None else None

    def run(self, onnx_bytes: bytes) -> np.ndarray:
        """The score output of the model on every probe sample, as (N, -1) float32.

        Raises:
            InvalidModel: ONNX Runtime cannot load the model or run it on the probe.
        """
        try:
            return self._run(onnx_bytes)
        except InvalidModel:
            raise
        except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument/... types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InvalidModel(f"ONNX Runtime cannot run the model on the probe set: {first}") from e

    def _run(self, onnx_bytes: bytes) -> np.ndarray:
        sess = session(onnx_bytes)
        step = self.batch or MAX_CHUNK
        chunks = []
        for start in range(0, len(self.probe), step):
            x = self.probe[start : start + step]
            n = len(x)
            if self.batch and n < self.batch:
                x = np.concatenate([x, np.repeat(x[-1:], self.batch - n, axis=0)])
            out = sess.run([self.output_name], {self.input_name: x})[0]
            chunks.append(np.asarray(out, dtype=np.float32).reshape(len(x), -1)[:n])
        scores = np.concatenate(chunks)
        return np.log(np.maximum(scores, TINY_PROBABILITY)) if self.log_scores else scores

    def compare(self, onnx_bytes: bytes) -> Fidelity:
        """Top-1 agreement and max |difference| of a candidate's outputs against the reference."""
        out = self.run(onnx_bytes)
        agree = float(np.mean(out.argmax(axis=1) == self.outputs.argmax(axis=1)))
        diff = out - self.outputs
        mse = float(np.mean(diff.astype(np.float64) ** 2))
        return Fidelity(agree, float(np.max(np.abs(diff))), mse, self.expected_agreement(mse))

    def expected_agreement(self, mse: float) -> float:
        """Agreement expected if every output moved by independent noise of this mean square.

        A sample whose top-two reference logits differ by ``m`` flips when the
        difference of two noise terms exceeds ``m``: probability
        ``0.5 * erfc(m / (2 * sigma))``.  Near-ties flip either way at the
        slightest change, so the measured count alone is a lottery: a model
        that passes by luck would fail as soon as the next version is packed
        on its grid.  The gate requires this expectation too.
        """
        if self.margins is None or mse <= 0:
            return 1.0
        sigma = math.sqrt(mse)
        flips = sum(0.5 * math.erfc(m / (2 * sigma)) for m in self.margins)
        return 1.0 - flips / len(self.margins)


class Gate:
    """What the allocator may ask of the probe: measure a candidate, or one layer's sensitivity."""

    SENSITIVITY_SAMPLES = 32

    def __init__(self, model: onnx.ModelProto, onnx_bytes: bytes, probe: np.ndarray, skeleton: bytes,
                 weights: dict[str, np.ndarray], contract: InputContract | None = None) -> None:
        self.reference = Reference(model, onnx_bytes, probe, contract)
        self.small = Reference(model, onnx_bytes, self.reference.probe[: self.SENSITIVITY_SAMPLES], contract)
        self.skeleton = skeleton
        self.weights = weights
        self.model = model
        self._moments: dict[str, np.ndarray] | None = None
        self._dead: dict[str, np.ndarray] = {}
        self._dead_inputs: dict[str, np.ndarray] = {}

    @property
    def moments(self) -> dict[str, np.ndarray]:
        """Per-convolution input second moments on the probe (computed on first use)."""
        if self._moments is None:
            from models.codec.calibrate import input_moments

            found = input_moments(self.model, self.reference, self.weights)
            self._moments, self._dead, self._dead_inputs = found.moments, found.dead_rows, found.dead_inputs
        return self._moments

    @property
    def biases(self) -> set[str]:
        """Names of the initializers that are Conv / Gemm biases (input 2)."""
        return {n.input[2] for n in self.model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}

    @property
    def dead_rows(self) -> dict[str, np.ndarray]:
        """Per-convolution masks of output channels that are dead on the whole probe (see ``calibrate``)."""
        _ = self.moments
        return self._dead

    @property
    def dead_inputs(self) -> dict[str, np.ndarray]:
        """Per-convolution masks of input channels that are exactly 0 on every probe sample."""
        _ = self.moments
        return self._dead_inputs

    def measure(self, weights: dict[str, np.ndarray]) -> Fidelity:
        """Fidelity of a model with these (decoded) weights on the whole probe."""
        return self.reference.compare(onnxio.assemble(self.skeleton, weights))

    def sensitivity(self, name: str, approx: np.ndarray, nsr: float) -> float:
        """Output mean squared error per unit of relative weight error, for one layer alone."""
        out = self.small.compare(onnxio.assemble(self.skeleton, {**self.weights, name: approx}))
        return out.mse / max(nsr, 1e-30)
