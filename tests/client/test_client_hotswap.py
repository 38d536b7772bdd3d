"""Hot swap on the real shipped SqueezeNet models with real ONNX Runtime sessions."""

import asyncio
import threading

import numpy as np
import pytest
from agent_factories import LABELS10, contract_for, nan_on_dark_model, sha, smoke_for, zoo_model

from client.errors import SmokeTestFailed
from client.hotswap import HotSwapper, LoadedModel, NoModel
from client.manifest import Smoke
from models.roadsigns import render
from protocol.contract import InputContract

IMAGE = render(3, np.random.default_rng(0))  # a speed_50 sign, uint8 HWC


def smoke_obj(model: bytes, **kw: object) -> Smoke:
    d = smoke_for(model, **kw)  # type: ignore[arg-type]
    return Smoke(d["seed"], d["count"], tuple(d["shape"]), d["input_name"], d["expected"], d["atol"])


def load(sw: HotSwapper, model: bytes, version: int, smoke: Smoke | None = None,
         labels: list[str] = LABELS10) -> LoadedModel:
    return asyncio.run(sw.load_and_smoke(model, version=version, model_sha256=sha(model),
                                         contract=InputContract.from_dict(contract_for(labels)),
                                         smoke=smoke or smoke_obj(model)))


def test_predict_before_any_model_says_so() -> None:
    with pytest.raises(NoModel, match="no verified model"):
        HotSwapper().predict(IMAGE)


def test_loaded_model_passes_its_smoke_test_and_answers_with_a_label() -> None:
    sw = HotSwapper()
    sw.swap(load(sw, zoo_model(1), 1))
    p = sw.predict(IMAGE)
    assert p.version == 1 and p.label in LABELS10 and 0 < p.probability <= 1
    assert str(p).endswith("%") and ", " in str(p)


def test_model_that_does_not_reproduce_the_golden_outputs_is_never_swapped_in() -> None:
    sw = HotSwapper()
    sw.swap(load(sw, zoo_model(1), 1))
    wrong = smoke_obj(zoo_model(2))  # expectations of another model
    with pytest.raises(SmokeTestFailed, match="differ from the manifest"):
        load(sw, zoo_model(3), 3, smoke=wrong)
    assert sw.current is not None and sw.current.version == 1
    assert sw.predict(IMAGE).version == 1


def test_bytes_that_are_not_a_model_fail_the_load_and_change_nothing() -> None:
    sw = HotSwapper()
    sw.swap(load(sw, zoo_model(1), 1))
    with pytest.raises(SmokeTestFailed, match="cannot load"):
        load(sw, b"\x08\x07garbage", 2, smoke=smoke_obj(zoo_model(1)))
    assert sw.predict(IMAGE).version == 1


def test_label_count_must_match_the_model_classes() -> None:
    sw = HotSwapper()
    with pytest.raises(SmokeTestFailed, match="11 classes but the offer lists 10 labels"):
        load(sw, zoo_model(4), 4)


def test_zero_failed_inferences_while_a_thread_predicts_through_several_swaps() -> None:
    sw = HotSwapper()
    models = {v: zoo_model(v) for v in (1, 2, 3)}
    sw.swap(load(sw, models[1], 1))
    stop = threading.Event()
    seen: list[int] = []
    failures: list[BaseException] = []

    def camera() -> None:
        while not stop.is_set():
            try:
                seen.append(sw.predict(IMAGE).version)
            except BaseException as e:  # any failure counts
                failures.append(e)

    t = threading.Thread(target=camera)
    t.start()
    try:
        for v in (2, 3, 1, 2, 3):
            sw.swap(load(sw, models[v], v))
            sw.close_health_window()
    finally:
        stop.set()
        t.join()
    assert failures == []
    assert set(seen) == {1, 2, 3} and len(seen) > 50


def test_health_window_answers_from_the_previous_model_and_counts_the_failure() -> None:
    sw = HotSwapper()
    sw.swap(load(sw, zoo_model(1), 1))
    bad = nan_on_dark_model()
    sw.swap(load(sw, bad, 2))  # passes the smoke test: golden inputs have mean ~0
    assert sw.predict(IMAGE).version == 2  # a normal frame is fine on the new model
    dark = np.zeros_like(IMAGE)
    p = sw.predict(dark)  # NaN on the new model -> the old one answers
    assert p.version == 1
    assert sw.health() == (2, 1)
    sw.close_health_window()
    assert sw.fallback is None


class _TracedSession:
    """A real session whose ``run`` can be held open, and which records the thread that frees it."""

    freed_by: dict[int, int] = {}

    def __init__(self, session: object, version: int, gate: threading.Event) -> None:
        self._s, self._version, self._gate = session, version, gate
        self.running = threading.Event()

    def get_inputs(self) -> object:
        return self._s.get_inputs()  # type: ignore[attr-defined]

    def get_outputs(self) -> object:
        return self._s.get_outputs()  # type: ignore[attr-defined]

    def run(self, *a: object) -> object:
        self.running.set()
        self._gate.wait(10)
        return self._s.run(*a)  # type: ignore[attr-defined]

    def __del__(self) -> None:
        _TracedSession.freed_by[self._version] = threading.get_ident()


def test_a_retired_session_is_freed_by_the_thread_that_retires_it_never_inside_a_predict() -> None:
    """Freeing a session holds the GIL ~0.5 ms: it must not land in the camera's call that held it last."""
    from client.hotswap import default_session_factory

    gates = {1: threading.Event(), 2: threading.Event()}
    gates[2].set()
    sessions: dict[int, _TracedSession] = {}
    make = default_session_factory()

    def factory(model: object, model_sha256: str) -> object:
        v = 1 if not sessions else 2
        sessions[v] = _TracedSession(make(model, model_sha256), v, gates[v])  # type: ignore[arg-type]
        return sessions[v]

    sw = HotSwapper(factory)  # type: ignore[arg-type]
    sw.release_wait_s = 10.0  # a loaded CI machine must not turn this into a timing test
    gates[1].set()
    sw.swap(load(sw, zoo_model(1), 1), health_window=False)
    gates[1].clear()
    sessions[1].running.clear()
    camera = threading.Thread(target=sw.predict, args=(IMAGE,))
    camera.start()  # a call on v1 that has not returned
    assert sessions[1].running.wait(10)
    sw.swap(load(sw, zoo_model(2), 2))
    del sessions[1]
    threading.Timer(0.05, gates[1].set).start()  # the camera's call returns while the window closes
    sw.close_health_window()
    camera.join()
    assert _TracedSession.freed_by.get(1) == threading.get_ident()  # freed here, after the call returned
    assert sw.predict(IMAGE).version == 2


def test_a_swap_during_an_open_window_keeps_only_the_model_it_replaces_as_fallback() -> None:
    import weakref

    sw = HotSwapper()
    sw.swap(load(sw, zoo_model(1), 1), health_window=False)
    first = weakref.ref(sw.current)  # type: ignore[arg-type]
    sw.swap(load(sw, zoo_model(2), 2))
    assert sw.fallback is first() and first() is not None
    sw.swap(load(sw, zoo_model(3), 3))  # the window of v2 was still open
    assert sw.fallback is not None and sw.fallback.version == 2 and first() is None  # v1 freed by the swap
    second = weakref.ref(sw.fallback)
    sw.swap(load(sw, zoo_model(1), 1), health_window=False)  # a rollback-style swap: nothing kept
    assert sw.fallback is None and second() is None and sw.predict(IMAGE).version == 1
