"""Inference throughput (images/s) by batch size, beside a batch-1 loop in the same run.

- digits: the committed ``digits-cnn`` model (trained), 256 test images, through the
  executor's batched path and through its dynamic batcher (``submit`` of 256 inputs at once);
- ResNet-50 at 224x224x3 -> 1000 classes with **seeded random weights** (not trained: only
  the speed is measured), a few images per round so that it stays quick on a 2-core CPU.

Each group runs the same images both ways; the baseline is a loop of batch-1 calls of the
same AOT-compiled executor. Under pytest: ``make bench`` or
``pytest benches/bench_inference.py --benchmark-enable``. Standalone (a GPU, say)::

    python benches/bench_inference.py --model resnet50 --batches 1,8,32,128 --images 256

``DROPBEAR_BENCH_RESNET_BATCHES`` (default ``4,8``) sets ResNet-50's batch sizes under pytest.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from dropbear.inference import Executor, ModelConfig, ModelRepository, seeded

ROOT = Path(__file__).resolve().parents[1]
DIGITS_IMAGES = 256
DIGITS_BATCHES = (8, 32, 128)
RESNET_BATCHES = tuple(
    int(b) for b in os.environ.get("DROPBEAR_BENCH_RESNET_BATCHES", "4,8").split(",")
)

RESNET50 = ModelConfig(
    name="resnet50-random",
    architecture="resnet50",
    input_shape=(224, 224, 3),
    labels=tuple(f"class-{i}" for i in range(1000)),
    top_k=5,
    description="ResNet-50, ImageNet configuration, seeded random weights (speed only)",
)


@functools.cache
def digits_executor() -> tuple[Executor, np.ndarray]:
    from dropbear.inference.train import load_digits_split

    model = ModelRepository(ROOT / "models").load("digits-cnn")
    x = load_digits_split().x_test
    images = np.concatenate([x, x])[:DIGITS_IMAGES]
    return Executor(model, max_batch_size=max(DIGITS_BATCHES), max_queue_delay=0.001), images


@functools.cache
def resnet_executor(max_batch: int) -> tuple[Executor, np.ndarray]:
    executor = Executor(seeded(RESNET50, seed=0), max_batch_size=max_batch)
    rng = np.random.default_rng(0)
    return executor, rng.uniform(0, 1, (max_batch, 224, 224, 3)).astype(np.float32)


def batch1_loop(executor: Executor, images: np.ndarray) -> int:
    for i in range(len(images)):
        executor.predict(images[i : i + 1])
    return len(images)


def batched(executor: Executor, images: np.ndarray, batch: int) -> int:
    for i in range(0, len(images), batch):
        executor.predict(images[i : i + batch])
    return len(images)


def dynamic_batcher(executor: Executor, images: np.ndarray) -> int:
    async def main():
        async with trio.open_nursery() as nursery:
            await executor.start(nursery)
            async with trio.open_nursery() as inner:
                for x in images:
                    inner.start_soon(executor.submit, x)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return len(images)


def _record(benchmark, images: int) -> None:
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = round(images / benchmark.stats.stats.mean, 1)


# --- digits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", DIGITS_BATCHES)
def test_digits_batch1_loop(benchmark, role, batch):
    executor, images = digits_executor()
    benchmark.group = f"digits-cnn {DIGITS_IMAGES} images, batch {batch}"
    role("baseline")
    benchmark.pedantic(batch1_loop, args=(executor, images), rounds=5, warmup_rounds=1)
    _record(benchmark, len(images))


@pytest.mark.parametrize("batch", DIGITS_BATCHES)
def test_digits_batched(benchmark, role, batch):
    executor, images = digits_executor()
    benchmark.group = f"digits-cnn {DIGITS_IMAGES} images, batch {batch}"
    role("dropbear")
    benchmark.pedantic(batched, args=(executor, images, batch), rounds=10, warmup_rounds=1)
    _record(benchmark, len(images))


def test_digits_dynamic_batcher_baseline(benchmark, role):
    executor, images = digits_executor()
    benchmark.group = f"digits-cnn {DIGITS_IMAGES} images, submit() dynamic batcher"
    role("baseline")
    benchmark.pedantic(batch1_loop, args=(executor, images), rounds=5, warmup_rounds=1)
    _record(benchmark, len(images))


def test_digits_dynamic_batcher(benchmark, role):
    executor, images = digits_executor()
    benchmark.group = f"digits-cnn {DIGITS_IMAGES} images, submit() dynamic batcher"
    role("dropbear")
    benchmark.pedantic(dynamic_batcher, args=(executor, images), rounds=5, warmup_rounds=1)
    _record(benchmark, len(images))


# --- one run after an idle spell: the parameters as a pytree or as a flat list -------------

IDLE_S = 0.05  # one request's gap at 20 req/s: the low-load benchmark's pattern


@functools.cache
def idle_run_pair() -> tuple[Any, Any]:
    """``digits-vit`` at batch 1, called the way executables were called before (the nnx
    State pytree, flattened by its Python callbacks on every call) and the way the executor
    calls them now (the parameters as a flat list); both with the same weights and input."""
    import jax
    from dropbear.inference.executor import Servable
    from flax import nnx

    model = ModelRepository(ROOT / "models").load("digits-vit")
    servable: Servable = Executor(model, max_batch_size=1, devices=jax.devices()[:1])._current
    config = model.config
    placement = servable._placement
    graphdef, state = nnx.split(model.module)
    state = jax.device_put(state, placement.replicated)

    def forward(state, x):
        logits = nnx.merge(graphdef, state)(config.preprocess(x))
        return jax.lax.top_k(jax.nn.softmax(logits.astype(np.float32), axis=-1), config.top_k)

    x = np.zeros((1, *config.input_shape), config.input_dtype)
    pytree = jax.jit(forward, in_shardings=(placement.replicated, placement.input_sharding(1))
                     ).lower(state, x).compile()
    flat = servable._executables[1]

    def old() -> None:
        np.asarray(pytree(state, x)[1])

    def new() -> None:
        np.asarray(flat(servable._leaves, x)[1])

    old(), new()
    return old, new


# Timed in CPU seconds of the whole process (XLA's threads included): the low-load cost is
# CPU shared by five processes on two cores, and a cold run's wall time varies more.
@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_idle_run_parameters(benchmark, role, side):
    old, new = idle_run_pair()
    benchmark.group = f"digits-vit batch 1, CPU of one run after {IDLE_S * 1000:.0f} ms idle"
    role(side)
    run = old if side == "baseline" else new  # the pytree, or the flat list of parameters
    benchmark.pedantic(run, setup=lambda: time.sleep(IDLE_S), rounds=60, warmup_rounds=2)


# --- ResNet-50 -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", RESNET_BATCHES)
def test_resnet50_batch1_loop(benchmark, role, batch):
    executor, images = resnet_executor(max(RESNET_BATCHES))
    benchmark.group = f"resnet50 224x224 (random weights), batch {batch}"
    role("baseline")
    benchmark.pedantic(batch1_loop, args=(executor, images[:batch]), rounds=2, warmup_rounds=1)
    _record(benchmark, batch)


@pytest.mark.parametrize("batch", RESNET_BATCHES)
def test_resnet50_batched(benchmark, role, batch):
    executor, images = resnet_executor(max(RESNET_BATCHES))
    benchmark.group = f"resnet50 224x224 (random weights), batch {batch}"
    role("dropbear")
    benchmark.pedantic(batched, args=(executor, images[:batch], batch), rounds=3, warmup_rounds=1)
    _record(benchmark, batch)


# --- standalone ------------------------------------------------------------------------------


def main() -> None:
    import jax

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["resnet50", "digits-cnn"], default="resnet50")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.model == "resnet50":
        t = time.perf_counter()
        executor = Executor(seeded(RESNET50, seed=0), max_batch_size=max(batches))
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 1, (args.images, 224, 224, 3)).astype(np.float32)
    else:
        t = time.perf_counter()
        executor, images = digits_executor()
    print(
        f"{args.model} on {jax.devices()[0].device_kind} x{len(executor.devices)}; "
        f"load + compile {len(executor.buckets)} buckets: {time.perf_counter() - t:.1f}s"
    )

    def rate(fn) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = fn()
            best = min(best, time.perf_counter() - t)
        return n / best

    loop = rate(lambda: batch1_loop(executor, images))
    print(f"  batch-1 loop        {loop:10.1f} images/s")
    for b in batches:
        r = rate(lambda b=b: batched(executor, images, b))
        print(f"  batch {b:<4}          {r:10.1f} images/s  ({r / loop:5.2f}x the loop)")
    r = rate(lambda: dynamic_batcher(executor, images))
    print(f"  submit() x{len(images):<5}     {r:10.1f} images/s  ({r / loop:5.2f}x the loop)")


if __name__ == "__main__":
    main()
