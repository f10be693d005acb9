"""The batched executor: AOT buckets, dynamic batching off the trio loop, versions, bad input."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import trio
from dropbear import limits
from dropbear.inference import (
    BadConfig,
    BadInput,
    Executor,
    ExecutorClosed,
    InferenceError,
    LoadedModel,
    ModelConfig,
    Preprocessing,
    QueueFull,
    Skipped,
    UnknownModel,
    buckets_up_to,
    check_input,
    check_inputs,
    decode_input,
    decode_inputs,
    seeded,
)
from dropbear.inference import executor as executor_module
from dropbear.limits import INFERENCE_INLINE_SLOW_RUNS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(
    name="tiny-cnn",
    architecture="cnn",
    input_shape=(8, 8, 1),
    labels=tuple("0123456789"),
    options={"widths": [4, 8], "dense": 16},
    preprocessing=Preprocessing(scale=1 / 16),
    top_k=3,
)
COMPILE_EVENTS = (
    "/jax/core/compile/backend_compile_duration",
    "/jax/core/compile/jaxpr_trace_duration",
)


def spin(seconds: float) -> None:
    """Keeps a core busy for ``seconds``: a run that is slow by its own CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.fixture(scope="module")
def model():
    return seeded(CONFIG, seed=0)


@pytest.fixture(scope="module")
def other_model():
    return seeded(CONFIG, seed=1)


@pytest.fixture(scope="module")
def executor(model):
    return Executor(model, max_batch_size=8, max_queue_delay=0.002)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, (n, 8, 8, 1)).astype(np.float32)


class CompileCounter:
    """Counts JAX tracing and XLA compilations while active (jax.monitoring events)."""

    def __init__(self):
        self.events: list[str] = []

    def _listener(self, event: str, duration: float, **_: object) -> None:
        if event in COMPILE_EVENTS:
            self.events.append(event)

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def serve(executor: Executor, body):
    """Runs ``await body(executor)`` with the executor's batcher running, then stops it."""

    async def main():
        async with trio.open_nursery() as nursery:
            await executor.start(nursery)
            result = await body(executor)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


async def lone_input_seconds(executor: Executor) -> float:
    """How long one input, alone in the queue, takes to be answered."""
    start = trio.current_time()
    await executor.submit(images(1)[0])
    return trio.current_time() - start


async def submit_all(executor: Executor, xs: np.ndarray):
    results = [None] * len(xs)

    async def one(i):
        results[i] = await executor.submit(xs[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(xs)):
            nursery.start_soon(one, i)
    return results


def test_buckets():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(8) == (1, 2, 4, 8)
    assert buckets_up_to(12) == (1, 2, 4, 8, 12)


def test_no_compilation_after_warm_up(model):
    with CompileCounter() as warm_up:
        executor = Executor(model, max_batch_size=8, max_queue_delay=0.001)
    # The counter sees compilations: warming compiled (and traced) every bucket.
    assert warm_up.events.count(COMPILE_EVENTS[0]) >= len(executor.buckets)
    rng = np.random.default_rng(7)
    with CompileCounter() as serving:
        for n in rng.integers(1, 9, size=30):
            predictions = executor.predict(images(int(n), seed=int(n)))
            assert len(predictions) == n

        async def body(ex):
            for _ in range(5):
                n = int(rng.integers(1, 40))
                assert len(await submit_all(ex, images(n, seed=n))) == n

        serve(executor, body)
    assert serving.events == []


def test_predictions_carry_label_probability_top_k_and_version(executor, model):
    (p,) = executor.predict(images(1))
    assert p.model_version == model.version == executor.version
    assert p.label == CONFIG.labels[p.class_index] == p.top_k[0][0]
    assert p.probability == p.top_k[0][1]
    assert len(p.top_k) == 3
    probabilities = [q for _, q in p.top_k]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0001


def test_same_weights_and_input_give_the_same_label(executor, model, other_model):
    xs = images(8, seed=3)
    first = executor.predict(xs)
    assert executor.predict(xs) == first  # bit for bit on the same bucket
    # Alone, in another bucket, at another position: the same label.
    for i in (0, 5):
        assert executor.predict(xs[i : i + 1])[0].label == first[i].label
        assert executor.predict(xs[i : i + 3])[0].label == first[i].label
    # A second executor with the same weights agrees.
    again = Executor(seeded(CONFIG, seed=0), max_batch_size=8)
    assert [p.label for p in again.predict(xs)] == [p.label for p in first]


def test_dynamic_batcher_matches_direct_predictions(executor):
    xs = images(37, seed=11)
    before = executor.stats.batches
    results = serve(executor, lambda ex: submit_all(ex, xs))
    direct = [p for i in range(0, 37, 8) for p in executor.predict(xs[i : i + 8])]
    assert [r.label for r in results] == [d.label for d in direct]
    np.testing.assert_allclose(
        [r.probability for r in results], [d.probability for d in direct], rtol=1e-5
    )
    batches = executor.stats.batches - before
    assert 5 <= batches < 37  # batched, never more than max_batch_size at once


def test_submit_many_answers_in_order_and_refuses_only_the_bad_inputs(executor):
    xs = list(images(20, seed=5))
    xs[3] = np.full((8, 8, 1), np.nan, np.float32)
    xs[11] = np.zeros((4, 4, 1), np.float32)
    before = executor.stats.batches
    results = serve(executor, lambda ex: ex.submit_many(xs))
    good = [i for i in range(20) if i not in (3, 11)]
    good_xs = np.stack([xs[i] for i in good])
    direct = [p for i in range(0, len(good), 8) for p in executor.predict(good_xs[i:i + 8])]
    assert [results[i].label for i in good] == [d.label for d in direct]
    assert isinstance(results[3], BadInput) and "NaN" in str(results[3])
    assert isinstance(results[11], BadInput) and "shape" in str(results[11])
    assert executor.stats.batches - before <= 3  # 18 inputs queued at once: full batches
    with pytest.raises(ExecutorClosed, match="not serving"):
        trio.run(executor.submit_many, xs[:1])


def test_submit_many_takes_a_stacked_batch_and_refuses_only_its_bad_rows(executor):
    batch = images(12, seed=6)
    batch[2, 3, 4, 0] = np.inf
    batch[7] = np.nan
    results = serve(executor, lambda ex: ex.submit_many(batch))
    good = [i for i in range(12) if i not in (2, 7)]
    direct = executor.predict(batch[good[:8]]) + executor.predict(batch[good[8:]])
    assert [results[i].label for i in good] == [d.label for d in direct]
    assert isinstance(results[2], BadInput) and "holds 1 NaN or inf values" in str(results[2])
    assert isinstance(results[7], BadInput) and "holds 64 NaN or inf values" in str(results[7])
    wrong = serve(executor, lambda ex: ex.submit_many(np.zeros((3, 4, 4, 1), np.float32)))
    assert all(isinstance(r, BadInput) and "shape [4, 4, 1]" in str(r) for r in wrong)


def test_inputs_no_longer_wanted_when_their_batch_forms_are_not_run(model):
    """A node submits the requests it must vote on; one executed meanwhile (the others
    voted first) is asked about when its batch forms, not when it was queued."""
    executor = Executor(model, max_batch_size=8, max_queue_delay=0.0)
    xs = list(images(20, seed=8))
    first_batch_only = [lambda: executor.stats.batches == 0] * 16  # wanted until a batch ran
    results = serve(executor, lambda ex: ex.submit_many(xs[:16] + xs[16:],
                                                      first_batch_only + [None] * 4))
    direct = executor.predict(np.stack(xs[:8])) + executor.predict(np.stack(xs[16:]))
    assert [r.label for r in results[:8] + results[16:]] == [d.label for d in direct]
    assert all(isinstance(r, Skipped) for r in results[8:16])
    assert executor.stats.skipped == 8
    assert executor.stats.inputs == 12 and executor.stats.batches == 2
    with pytest.raises(ValueError, match="2 wanted checks for 1 inputs"):
        trio.run(executor.submit_many, xs[:1], first_batch_only[:2])


def test_zero_queue_delay_runs_a_lone_input_at_once_and_still_batches_under_load(model):
    executor = Executor(model, max_batch_size=8, max_queue_delay=0.0)
    assert serve(executor, lone_input_seconds) < 0.05
    before = executor.stats.batches
    serve(executor, lambda ex: submit_all(ex, images(40, seed=3)))
    assert executor.stats.batches - before < 40  # inputs queued while a batch ran joined


def test_max_queue_delay_bounds_the_wait_for_a_lone_input(model):
    executor = Executor(model, max_batch_size=8, max_queue_delay=0.05)
    elapsed = serve(executor, lone_input_seconds)
    assert 0.05 <= elapsed < 1.0


def test_the_trio_loop_stays_responsive_while_a_batch_runs(model):
    executor = Executor(model, max_batch_size=8)
    servable = executor._current
    real_run = servable.run

    def slow_run(batch):  # stands for a long XLA execution; blocks whatever thread runs it
        time.sleep(0.6)
        return real_run(batch)

    servable.run = slow_run
    servable.inline = frozenset()  # known to be slow: worker threads
    gaps = []

    async def body(ex):
        done = trio.Event()

        async def ticker():
            last = trio.current_time()
            while not done.is_set():
                await trio.sleep(0.01)
                now = trio.current_time()
                gaps.append(now - last)
                last = now

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            start = trio.current_time()
            await submit_all(ex, images(4))
            took = trio.current_time() - start
            done.set()
        return took

    took = serve(executor, body)
    assert took >= 0.6
    assert len(gaps) > 20 and max(gaps) < 0.2


def test_fast_buckets_run_in_place_and_one_that_turns_slow_goes_back_to_threads(
        model, monkeypatch):
    limit = 0.05  # well above this tiny model's runs, so that no hiccup demotes a bucket
    monkeypatch.setattr(executor_module, "INFERENCE_INLINE_MAX_S", limit)
    executor = Executor(model, max_batch_size=8)
    servable = executor._current
    timings = servable.time_buckets()
    assert set(timings) == {1, 2, 4, 8}
    assert servable.inline == {b for b, t in timings.items() if t < limit}
    servable.inline = frozenset(servable.buckets)
    real_run = servable.run
    threads = []

    def run(batch, delay=0.0):
        threads.append(threading.current_thread())
        spin(delay)
        return real_run(batch)

    servable.run = run
    xs = images(3)

    async def body(ex):
        return [await ex.submit(x) for x in xs]

    in_place = serve(executor, body)
    assert threads == [threading.main_thread()] * 3
    assert [p.class_index for p in in_place] == [p.class_index for p in executor.predict(xs)]
    slow = INFERENCE_INLINE_SLOW_RUNS
    servable.run = lambda batch: run(batch, delay=3 * limit if len(threads) != 1 else 0.0)
    threads.clear()
    xs = images(2 * slow + 2)
    serve(executor, body)
    # run 2 is fast again: the count restarts; then `slow` slow runs in a row demote bucket 1
    assert threads[: slow + 2] == [threading.main_thread()] * (slow + 2)
    assert all(t is not threading.main_thread() for t in threads[slow + 2:])
    assert 1 not in servable.inline and {2, 4, 8} <= servable.inline


def test_waiting_for_a_core_is_not_a_slow_run(model, monkeypatch):
    # On a loaded machine (a group's nodes sharing two cores) a 0.2 ms run took 1.5-2 ms of
    # wall time, waiting for a core, and that sent fast buckets to worker threads for good.
    # A run's cost is the lesser of its wall and CPU time: a run that waits (here: sleeps)
    # without working stays on the loop, at warming and when serving.
    limit = 0.02
    monkeypatch.setattr(executor_module, "INFERENCE_INLINE_MAX_S", limit)
    executor = Executor(model, max_batch_size=2)
    servable = executor._current
    real_run = servable.run
    threads = []

    def waiting_run(batch):
        threads.append(threading.current_thread())
        time.sleep(3 * limit)
        return real_run(batch)

    servable.run = waiting_run
    timings = servable.time_buckets()
    assert servable.inline == {1, 2} and all(t < limit for t in timings.values())
    threads.clear()
    xs = images(2 * INFERENCE_INLINE_SLOW_RUNS)

    async def body(ex):
        return [await ex.submit(x) for x in xs]

    serve(executor, body)
    assert threads == [threading.main_thread()] * len(xs)
    assert servable.inline == {1, 2}
    # the same runs busy for that long are slow: they go back to worker threads
    def busy_run(batch):
        threads.append(threading.current_thread())
        spin(3 * limit)
        return real_run(batch)

    servable.run = busy_run
    threads.clear()
    serve(executor, body)
    slow = INFERENCE_INLINE_SLOW_RUNS
    assert threads[:slow] == [threading.main_thread()] * slow
    assert all(t is not threading.main_thread() for t in threads[slow:])
    assert 1 not in servable.inline


def test_a_slow_first_run_does_not_keep_a_fast_bucket_off_the_event_loop(model, monkeypatch):
    # A bucket's first run pays one-time costs (a digit model's is 10-40x its steady run);
    # timing only that run used to send every small model's buckets to worker threads.
    limit = 0.02
    monkeypatch.setattr(executor_module, "INFERENCE_INLINE_MAX_S", limit)
    executor = Executor(model, max_batch_size=4)
    servable = executor._current
    calls: dict[int, int] = {}
    real_run = servable.run

    def first_run_slow(factor):
        def run(batch):
            calls[len(batch)] = calls.get(len(batch), 0) + 1
            if calls[len(batch)] == 1:
                spin(factor * limit)
            return real_run(batch)
        return run

    servable.run = first_run_slow(10)
    timings = servable.time_buckets()
    assert servable.inline == {1, 2, 4}
    assert all(t < limit for t in timings.values())
    assert all(n >= 2 for n in calls.values())
    # A first run past _RETIME_FIRST_RUN_UNDER times the limit is a large model's: run once.
    calls.clear()
    servable.run = first_run_slow(executor_module._RETIME_FIRST_RUN_UNDER + 5)
    monkeypatch.setattr(executor_module, "INFERENCE_INLINE_MAX_S", limit / 10)
    limit /= 10
    timings = servable.time_buckets()
    assert calls == {1: 1, 2: 1, 4: 1} and servable.inline == frozenset()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((8, 8), np.float32), "input shape \\[8, 8\\] is not the model's \\[8, 8, 1\\]"),
        (np.zeros((8, 8, 1), np.float64), "input dtype float64 is not the model's float32"),
        (np.full((8, 8, 1), np.nan, np.float32), "input holds 64 NaN or inf values"),
        (np.where(np.eye(8)[..., None] > 0, np.inf, 0).astype(np.float32), "8 NaN or inf"),
        ([[0.0] * 8] * 8, "input is a list, not a numpy array"),
    ],
)
def test_bad_input_is_refused_and_serving_goes_on(executor, bad, message):
    async def body(ex):
        with pytest.raises(BadInput, match=message):
            await ex.submit(bad)
        return await ex.submit(images(1)[0])

    assert serve(executor, body).model_version == executor.version


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((0, 8, 8, 1), np.float32), "batch is empty"),
        (np.zeros((9, 8, 8, 1), np.float32), "batch of 9 inputs exceeds the max batch size 8"),
        (np.zeros((2, 8, 8, 3), np.float32), "batch input shape \\[8, 8, 3\\]"),
        (np.zeros((2, 64), np.float32), "batch shape \\[2, 64\\] is not \\[n, 8, 8, 1\\]"),
        (np.zeros((2, 8, 8, 1), np.int32), "batch dtype int32"),
        (np.stack([images(1)[0], np.full((8, 8, 1), np.inf, np.float32)]), "inputs \\[1\\]"),
    ],
)
def test_bad_batches_are_refused(executor, batch, message):
    with pytest.raises(BadInput, match=message):
        executor.predict(batch)
    assert len(executor.predict(images(2))) == 2


def test_decode_input_from_request_bytes():
    x = images(1)[0]
    assert np.array_equal(decode_input(CONFIG, "float32", [8, 8, 1], x.tobytes()), x)
    with pytest.raises(BadInput, match="input dtype 'uint8'"):
        decode_input(CONFIG, "uint8", [8, 8, 1], bytes(64))
    with pytest.raises(BadInput, match="input is 255 bytes, shape \\[8, 8, 1\\] needs 256"):
        decode_input(CONFIG, "float32", [8, 8, 1], bytes(255))
    with pytest.raises(BadInput, match="over the limit of 1048576"):
        decode_input(CONFIG, "float32", [8, 8, 1], bytes(2_000_000))


def test_decode_inputs_stacks_the_well_formed_and_names_what_is_wrong_with_the_rest():
    xs = images(4, seed=9)
    items = [("float32", [8, 8, 1], xs[0].tobytes()),
             ("uint8", [8, 8, 1], bytes(64)),
             ("float32", [8, 8, 1], xs[1].tobytes()),
             ("float32", [4, 4, 1], xs[2].tobytes()[:64]),
             ("float32", [8, 8, 1], bytes(255)),
             ("float32", [8, 8, 1], xs[3].tobytes())]
    decoded = decode_inputs(CONFIG, items)
    assert decoded.kept == [0, 2, 5]
    assert decoded.batch.shape == (3, 8, 8, 1) and decoded.batch.dtype == np.float32
    assert np.array_equal(decoded.batch, xs[[0, 1, 3]])
    reasons = dict(decoded.refused)
    assert sorted(reasons) == [1, 3, 4]
    assert "input dtype 'uint8'" in str(reasons[1])
    assert "input shape [4, 4, 1]" in str(reasons[3])
    assert "input is 255 bytes, shape [8, 8, 1] needs 256" in str(reasons[4])
    empty = decode_inputs(CONFIG, [])
    assert empty.batch.shape == (0, 8, 8, 1) and empty.kept == [] and empty.refused == []


def test_decode_inputs_reads_large_inputs_in_place_instead_of_stacking_them():
    big = ModelConfig(name="big", architecture="mlp", input_shape=(224, 224, 3),
                      labels=("a", "b", "c"))
    size = 224 * 224 * 3 * 4
    rng = np.random.default_rng(11)
    datas = [rng.random((224, 224, 3), dtype=np.float32).tobytes() for _ in range(3)]
    items = [("float32", [224, 224, 3], datas[0]), ("float32", [224, 224, 3], bytes(size - 4)),
             ("float32", [224, 224, 3], datas[1]), ("float32", [224, 224, 3], datas[2])]
    assert 3 * size > limits.INFERENCE_STACK_BYTES >= size
    decoded = decode_inputs(big, items)
    assert decoded.kept == [0, 2, 3] and [i for i, _ in decoded.refused] == [1]
    assert isinstance(decoded.batch, list) and len(decoded.batch) == 3
    for x, data in zip(decoded.batch, (datas[0], datas[1], datas[2]), strict=True):
        assert x.shape == (224, 224, 3) and not x.flags.owndata and x.tobytes() == data
    assert check_inputs(big, decoded.batch) == [None, None, None]
    one = decode_inputs(big, items[:1])  # one input fits: an array of one
    assert isinstance(one.batch, np.ndarray) and one.batch.shape == (1, 224, 224, 3)


def test_check_inputs_agrees_with_check_input_row_by_row():
    batch = images(5, seed=10)
    batch[1, 0, 0, 0] = np.nan
    batch[4] = -np.inf
    errors = check_inputs(CONFIG, batch)
    for x, error in zip(batch, errors, strict=True):
        if error is None:
            assert check_input(CONFIG, x) is x
        else:
            with pytest.raises(BadInput, match=str(error)):
                check_input(CONFIG, x)
    assert [e is None for e in errors] == [True, False, True, True, False]
    assert "dtype float64" in str(check_inputs(CONFIG, batch.astype(np.float64))[0])
    assert [e is None for e in check_inputs(CONFIG, list(batch))] == [
        e is None for e in errors]
    with pytest.raises(BadInput, match="not a numpy array or a list"):
        check_inputs(CONFIG, {"x": batch[0]})


def test_full_queue_refuses_and_closed_executor_says_so(model):
    executor = Executor(model, max_batch_size=1, max_queue_length=2)
    with pytest.raises(ExecutorClosed, match="not serving"):
        trio.run(executor.submit, images(1)[0])
    real_run = executor._current.run
    release = threading.Event()

    def held_run(batch):
        release.wait(5)
        return real_run(batch)

    executor._current.run = held_run
    executor._current.inline = frozenset()  # a held run is a slow one: worker threads

    async def body(ex):
        async with trio.open_nursery() as nursery:
            for i in range(3):  # one running, two queued: the queue is full
                nursery.start_soon(ex.submit, images(1, seed=i)[0])
            await trio.sleep(0.2)
            with pytest.raises(QueueFull, match="2 inputs are queued"):
                await ex.submit(images(1)[0])
            release.set()
        return await ex.submit(images(1)[0])

    assert serve(executor, body).model_version == executor.version


def test_bad_executor_limits_are_named(model):
    with pytest.raises(BadConfig, match="max_batch_size 0 is not in 1..128"):
        Executor(model, max_batch_size=0)
    with pytest.raises(BadConfig, match="max_queue_delay 5s"):
        Executor(model, max_queue_delay=5)


def test_failed_batch_fails_its_inputs_and_serving_goes_on(model):
    executor = Executor(model, max_batch_size=4)
    real_run = executor._current.run
    calls = []

    def flaky_run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return real_run(batch)

    executor._current.run = flaky_run

    async def body(ex):
        with pytest.raises(InferenceError, match="device lost"):
            await ex.submit(images(1)[0])
        return await ex.submit(images(1)[0])

    assert serve(executor, body).model_version == executor.version
    assert executor.stats.failed_batches == 1


def test_hot_update_switches_atomically_and_in_flight_batches_keep_their_version(
    model, other_model
):
    executor = Executor(model, max_batch_size=4)
    old, new = model.version, other_model.version
    real_run = executor._current.run
    started, release = threading.Event(), threading.Event()

    def held_run(batch):
        started.set()
        release.wait(5)
        return real_run(batch)

    executor._current.run = held_run
    executor._current.inline = frozenset()  # a held run is a slow one: worker threads
    x = images(1)[0]

    async def body(ex):
        with CompileCounter() as staging:
            assert await ex.stage(other_model) == new
        assert staging.events.count(COMPILE_EVENTS[0]) == 0  # same architecture: reused
        assert ex.version == old and ex.staged_versions == (new,)
        in_flight = []
        async with trio.open_nursery() as nursery:

            async def first():
                in_flight.append(await ex.submit(x))

            nursery.start_soon(first)
            await trio.to_thread.run_sync(started.wait, 5)
            assert ex.switch(new) == old  # while the old version's batch runs
            assert ex.version == new
            release.set()
        after = await ex.submit(x)
        return in_flight[0], after

    before_switch, after_switch = serve(executor, body)
    assert before_switch.model_version == old
    assert after_switch.model_version == new
    assert executor.predict(x[None])[0] == after_switch
    # The reused executables run on the new version's own weights: the same answer as an
    # executor built for that version alone.
    assert Executor(other_model, max_batch_size=4).predict(x[None])[0] == after_switch
    assert Executor(model, max_batch_size=4).predict(x[None])[0] == before_switch
    with pytest.raises(UnknownModel, match="is not staged"):
        executor.switch(old)


def test_a_version_with_other_parameter_dtypes_is_compiled_anew(model, other_model):
    """Same configuration, but bfloat16 weights: the float32 executables cannot run them,
    so staging compiles new ones, and the version answers as an executor of its own."""
    from flax import nnx

    graphdef, state = nnx.split(other_model.module)
    half = LoadedModel.from_module(CONFIG, nnx.merge(graphdef, jax.tree_util.tree_map(
        lambda a: a.astype(jax.numpy.bfloat16), state)))
    executor = Executor(model, max_batch_size=4)

    async def body(ex):
        with CompileCounter() as staging:
            ex.switch(await ex.stage(half))
        assert staging.events.count(COMPILE_EVENTS[0]) > 0
        return await ex.submit(images(1)[0])

    answer = serve(executor, body)
    assert answer.model_version == half.version
    assert Executor(half, max_batch_size=4).predict(images(1))[0] == answer


def test_stage_refuses_a_model_with_other_inputs(executor):
    config = ModelConfig(
        name="rgb", architecture="mlp", input_shape=(8, 8, 3), labels=tuple("0123456789")
    )

    async def stage():
        await executor.stage(seeded(config))

    with pytest.raises(BadConfig, match="takes \\[8, 8, 3\\] float32"):
        trio.run(stage)


SHARDING_SCRIPT = """
import json, jax, numpy as np, trio
from dropbear.inference import Executor, ModelConfig, Preprocessing, seeded
config = ModelConfig(name="tiny-cnn", architecture="cnn", input_shape=(8, 8, 1),
                     labels=tuple("0123456789"), options={"widths": [4, 8], "dense": 16},
                     preprocessing=Preprocessing(scale=1 / 16))
model = seeded(config)
xs = np.random.default_rng(0).uniform(0, 16, (8, 8, 8, 1)).astype(np.float32)
sharded = Executor(model, max_batch_size=8)
single = Executor(model, max_batch_size=8, devices=jax.devices()[:1])
servable = sharded._current
placed = jax.device_put(xs, servable._placement.input_sharding(8))
async def main():
    async with trio.open_nursery() as nursery:
        await sharded.start(nursery)
        out = [await sharded.submit(x) for x in xs[:1]]
        nursery.cancel_scope.cancel()
    return out
print(json.dumps({
    "devices": len(jax.devices()),
    "executor_devices": len(sharded.devices),
    "bucket8_devices": len(placed.sharding.device_set),
    "bucket8_shard_rows": [s.data.shape[0] for s in placed.addressable_shards],
    "input_shardings": str(servable._executables[8].input_shardings),
    "labels_sharded": [p.label for p in sharded.predict(xs)],
    "labels_single": [p.label for p in single.predict(xs)],
    "probs_sharded": [p.probability for p in sharded.predict(xs[:5])],
    "probs_single": [p.probability for p in single.predict(xs[:5])],
    "submit": trio.run(main)[0].label,
}))
"""


def test_batches_are_sharded_across_local_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == result["executor_devices"] == 4
    assert result["bucket8_devices"] == 4
    assert result["bucket8_shard_rows"] == [2, 2, 2, 2]
    assert "'batch'" in result["input_shardings"]
    assert result["labels_sharded"] == result["labels_single"]
    np.testing.assert_allclose(result["probs_sharded"], result["probs_single"], rtol=1e-5)
    assert result["submit"] == result["labels_single"][0]
