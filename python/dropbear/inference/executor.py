"""The batched executor: a dynamic batcher in front of ahead-of-time compiled model buckets.

Inputs are queued by :meth:`Executor.submit`; the batcher takes up to ``max_batch_size`` of
them, waiting at most ``max_queue_delay`` after the first, pads the batch to the next bucket
size (1, 2, 4, ..., max) and runs that bucket's executable in a worker thread, so the trio
loop stays free (buckets that ran in under INFERENCE_INLINE_MAX_S when warmed run in place,
a thread's hand-off costing more, until INFERENCE_INLINE_SLOW_RUNS runs in a row are slow).
Every bucket is compiled (``jax.jit(...).lower(...).compile()``) and run when a version is
warmed; the serving path only calls compiled executables.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import numpy as np
import trio
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dropbear.inference.errors import (
    BadConfig,
    BadInput,
    ExecutorClosed,
    InferenceError,
    QueueFull,
    Skipped,
    UnknownModel,
)
from dropbear.inference.parameters import ModelVersion
from dropbear.inference.repository import LoadedModel, ModelConfig
from dropbear.limits import (
    INFERENCE_DEFAULT_MAX_BATCH_SIZE,
    INFERENCE_DEFAULT_MAX_QUEUE_DELAY_S,
    INFERENCE_INLINE_MAX_S,
    INFERENCE_INLINE_SLOW_RUNS,
    INFERENCE_MAX_BATCH_SIZE,
    INFERENCE_MAX_INPUT_BYTES,
    INFERENCE_MAX_QUEUE_DELAY_S,
    INFERENCE_MAX_QUEUE_LENGTH,
    INFERENCE_MAX_STAGED_VERSIONS,
    INFERENCE_STACK_BYTES,
)


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one input, and the version that computed it."""

    label: str
    class_index: int
    probability: float
    top_k: tuple[tuple[str, float], ...]
    """``(label, probability)``, most probable first; the first is the top-1."""
    model_version: ModelVersion


def bucket_for(buckets: Sequence[int], n: int) -> int:
    """The smallest of (ascending) ``buckets`` that holds ``n`` inputs."""
    return next(b for b in buckets if b >= n)


def buckets_up_to(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including ``max_batch_size`` (which need not be a power of 2)."""
    out = [1]
    while out[-1] * 2 < max_batch_size:
        out.append(out[-1] * 2)
    if out[-1] != max_batch_size:
        out.append(max_batch_size)
    return tuple(out)


def check_request_input(config: ModelConfig, dtype: str, shape: Sequence[int],
                        nbytes: int) -> None:
    """BadInput unless a request's ``(dtype, shape)`` and byte count fit ``config`` (what
    can be told without reading the input's values)."""
    if nbytes > INFERENCE_MAX_INPUT_BYTES:
        raise BadInput(f"input is {nbytes} bytes, over the limit of {INFERENCE_MAX_INPUT_BYTES}")
    if dtype != config.input_dtype:
        raise BadInput(f"input dtype {dtype!r} is not the model's {config.input_dtype!r}")
    if tuple(shape) != config.input_shape:
        raise BadInput(f"input shape {list(shape)} is not the model's {list(config.input_shape)}")
    expected = _input_bytes(config.input_dtype, config.input_shape)
    if nbytes != expected:
        raise BadInput(f"input is {nbytes} bytes, shape {list(shape)} needs {expected}")


def decode_input(config: ModelConfig, dtype: str, shape: Sequence[int], data: bytes) -> np.ndarray:
    """The model input of a request's ``(dtype, shape, bytes)``, checked against ``config``.

    The byte count is checked before anything is allocated.
    """
    check_request_input(config, dtype, shape, len(data))
    # A read-only view of the request's bytes; copied only where the host is big-endian.
    x = np.frombuffer(data, dtype=_little_endian(config.input_dtype)).reshape(config.input_shape)
    if x.dtype != config.input_dtype:
        x = x.astype(config.input_dtype)
    return check_input(config, x)


class DecodedInputs(NamedTuple):
    """What :func:`decode_inputs` made of several requests' inputs."""

    batch: np.ndarray | list[np.ndarray]
    """The well-formed inputs, not yet checked for NaN or inf values (:func:`check_inputs`
    does that): stacked, ``(len(kept), *input_shape)``, while they fit in
    INFERENCE_STACK_BYTES; else a list of read-only views of the requests' bytes."""
    kept: list[int]
    """The position, among the items given, of each input of ``batch``."""
    refused: list[tuple[int, BadInput]]
    """The position of each item of the wrong dtype, shape or size, and why."""


def decode_inputs(config: ModelConfig,
                  items: Sequence[tuple[str, Sequence[int], bytes]]) -> DecodedInputs:
    """The inputs of several requests' ``(dtype, shape, bytes)`` as one batch: small ones
    in one array (one copy of their bytes, where :func:`decode_input` makes an array per
    input), large ones as they are (no copy; see INFERENCE_STACK_BYTES)."""
    kept: list[int] = []
    refused: list[tuple[int, BadInput]] = []
    parts: list[bytes] = []
    for i, (dtype, shape, data) in enumerate(items):
        try:
            check_request_input(config, dtype, shape, len(data))
        except BadInput as error:
            refused.append((i, error))
            continue
        kept.append(i)
        parts.append(data)
    wire = _little_endian(config.input_dtype)
    if len(parts) * _input_bytes(config.input_dtype, config.input_shape) > INFERENCE_STACK_BYTES:
        views = [np.frombuffer(data, dtype=wire).reshape(config.input_shape) for data in parts]
        if wire != config.input_dtype:
            views = [x.astype(config.input_dtype) for x in views]
        return DecodedInputs(views, kept, refused)
    batch = np.frombuffer(b"".join(parts), dtype=wire).reshape((len(kept), *config.input_shape))
    if batch.dtype != config.input_dtype:
        batch = batch.astype(config.input_dtype)
    return DecodedInputs(batch, kept, refused)


@functools.cache
def _little_endian(dtype: str) -> np.dtype:
    """The wire's (little-endian) form of a model input dtype."""
    return np.dtype(dtype).newbyteorder("<")


@functools.cache
def _input_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_input(config: ModelConfig, x: Any) -> np.ndarray:
    """``x`` itself if it is one valid input for ``config``; else :class:`BadInput`."""
    if not isinstance(x, np.ndarray):
        raise BadInput(f"input is a {type(x).__name__}, not a numpy array")
    if x.shape != config.input_shape:
        raise BadInput(f"input shape {list(x.shape)} is not the model's {list(config.input_shape)}")
    if x.dtype != np.dtype(config.input_dtype):
        raise BadInput(f"input dtype {x.dtype} is not the model's {config.input_dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = x.size - int(np.count_nonzero(finite))
        raise BadInput(f"input holds {bad} NaN or inf values")
    return x


def check_inputs(config: ModelConfig, batch: Any) -> list[BadInput | None]:
    """Per input of ``batch``, None if it is a valid input for ``config``, else why not:
    :func:`check_input` for many inputs. ``batch``: one array of them stacked on a first
    axis (checked in one pass), or a list or tuple of them (checked one by one)."""
    if isinstance(batch, list | tuple):
        errors: list[BadInput | None] = []
        for x in batch:
            try:
                check_input(config, x)
                errors.append(None)
            except BadInput as error:
                errors.append(error)
        return errors
    if not isinstance(batch, np.ndarray):
        raise BadInput(f"inputs are a {type(batch).__name__}, not a numpy array or a list")
    if batch.ndim == 0:
        raise BadInput("inputs are a 0-d array, not a stack of inputs")
    n = batch.shape[0]
    if batch.shape[1:] != config.input_shape:
        reason = (f"input shape {list(batch.shape[1:])} is not the model's "
                  f"{list(config.input_shape)}")
        return [BadInput(reason) for _ in range(n)]
    if batch.dtype != np.dtype(config.input_dtype):
        reason = f"input dtype {batch.dtype} is not the model's {config.input_dtype}"
        return [BadInput(reason) for _ in range(n)]
    out: list[BadInput | None] = [None] * n
    finite = np.isfinite(batch)
    if not finite.all():  # rows counted only then: numpy's per-row count costs ~10 us
        counts = np.count_nonzero(finite.reshape(n, -1), axis=1)
        size = math.prod(config.input_shape)
        for i in np.flatnonzero(counts != size).tolist():
            out[i] = BadInput(f"input holds {size - int(counts[i])} NaN or inf values")
    return out


def check_batch(config: ModelConfig, batch: Any, max_batch_size: int) -> np.ndarray:
    """``batch`` itself if it stacks 1..``max_batch_size`` valid inputs; else :class:`BadInput`."""
    if not isinstance(batch, np.ndarray):
        raise BadInput(f"batch is a {type(batch).__name__}, not a numpy array")
    if batch.ndim != 1 + len(config.input_shape):
        raise BadInput(
            f"batch shape {list(batch.shape)} is not [n, {', '.join(map(str, config.input_shape))}]"
        )
    n = batch.shape[0]
    if n == 0:
        raise BadInput("batch is empty (0 inputs)")
    if n > max_batch_size:
        raise BadInput(f"batch of {n} inputs exceeds the max batch size {max_batch_size}")
    if batch.shape[1:] != config.input_shape:
        raise BadInput(
            f"batch input shape {list(batch.shape[1:])} is not the model's "
            f"{list(config.input_shape)}"
        )
    if batch.dtype != np.dtype(config.input_dtype):
        raise BadInput(f"batch dtype {batch.dtype} is not the model's {config.input_dtype}")
    finite = np.isfinite(batch).reshape(n, -1).all(axis=1)
    if not finite.all():
        raise BadInput(f"batch inputs {np.flatnonzero(~finite)[:10].tolist()} hold NaN or inf")
    return batch


_RETIME_FIRST_RUN_UNDER = 100
"""A bucket whose first (warming) run took under this many times INFERENCE_INLINE_MAX_S is
timed again (see :meth:`Servable.time_buckets`)."""


def run_cost(run: Callable[[np.ndarray], Any], x: np.ndarray) -> tuple[Any, float]:
    """Calls ``run(x)``; returns its result and its cost in seconds: the lesser of its wall
    time and the CPU time the process spent meanwhile (all threads, XLA's included).

    Wall time alone counts the time the process waited for a core: on a loaded machine
    (a group's nodes sharing its cores) a 0.2 ms model run took 1.5-2 ms of wall time,
    and that sent fast buckets to worker threads, whose hand-off then added about 1 ms per
    batch. CPU time alone counts other threads' work (a version warming meanwhile). A run
    that is really slow is slow by both.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(x)
    return result, min(time.perf_counter() - wall, time.process_time() - cpu)


class Servable:
    """One warmed model version: parameters on the devices and one executable per bucket."""

    def __init__(
        self, model: LoadedModel, executables: dict[int, Any], placement: _Placement,
        leaves: list[Any], signature: Any,
    ):
        self.model = model
        self.version = model.version
        self.config = model.config
        self._executables = executables
        self.buckets: tuple[int, ...] = tuple(sorted(executables))
        self._placement = placement
        self._leaves = leaves
        """The parameters as a flat list (``jax.tree_util.tree_flatten`` of the nnx State):
        what the executables take."""
        self._signature = signature
        """The parameters' tree structure, and each leaf's shape and dtype: a version whose
        signature (and configuration) is the same can run on these executables."""
        self._labels = model.config.labels
        self.inline: frozenset[int] = frozenset()
        """Buckets fast enough to run on the event loop's thread (see :meth:`time_buckets`)."""
        self.slow_runs: dict[int, int] = {}
        """Slow in-place runs in a row, per bucket (INFERENCE_INLINE_SLOW_RUNS demote it)."""

    def time_buckets(self, runs: int = 3) -> dict[int, float]:
        """Runs every bucket (blocking) and returns each one's fastest run in seconds.

        Buckets faster than INFERENCE_INLINE_MAX_S become :attr:`inline`: handing such a
        batch to a worker thread and back costs more than running it in place. A bucket's
        first run pays one-time costs (a small model's first run is often 10-40x its
        steady one), so a bucket whose first run is within ``_RETIME_FIRST_RUN_UNDER``
        times the limit runs up to ``runs`` times more, until a run settles it (under the
        limit, or four times over it); a large model's buckets run once, as when warming.
        """
        fastest = {}
        for bucket in self.buckets:
            x = np.zeros((bucket, *self.config.input_shape), self.config.input_dtype)
            best = self._timed_run(x)
            if best < _RETIME_FIRST_RUN_UNDER * INFERENCE_INLINE_MAX_S:
                for _ in range(runs):
                    best = min(best, self._timed_run(x))
                    if best < INFERENCE_INLINE_MAX_S or best > 4 * INFERENCE_INLINE_MAX_S:
                        break
            fastest[bucket] = best
        self.inline = frozenset(b for b, t in fastest.items() if t < INFERENCE_INLINE_MAX_S)
        return fastest

    def _timed_run(self, x: np.ndarray) -> float:
        return run_cost(self.run, x)[1]

    def run(self, batch: np.ndarray) -> list[Prediction]:
        """Runs a checked batch (blocking): pads it to its bucket, calls that executable."""
        n = batch.shape[0]
        bucket = bucket_for(self.buckets, n)
        if n != bucket:
            padded = np.zeros((bucket, *batch.shape[1:]), dtype=batch.dtype)
            padded[:n] = batch
        else:
            padded = batch
        # On one device the executable takes the host array itself and copies it in C++,
        # which costs about half of what jax.device_put's Python path does (0.3-0.4 ms per
        # run on a core that was idle); over a mesh it must be split first.
        x = padded if self._placement.single else jax.device_put(
            padded, self._placement.input_sharding(bucket))
        top_p, top_i = self._executables[bucket](self._leaves, x)
        top_p, top_i = np.asarray(top_p)[:n], np.asarray(top_i)[:n]
        labels, version = self._labels, self.version
        return [
            Prediction(
                label=labels[int(idx[0])],
                class_index=int(idx[0]),
                probability=float(p[0]),
                top_k=tuple((labels[int(i)], float(q)) for i, q in zip(idx, p, strict=True)),
                model_version=version,
            )
            for p, idx in zip(top_p, top_i, strict=True)
        ]


class _Placement:
    """Where parameters and batches live: one device, or a 1-D ``batch`` mesh over several."""

    def __init__(self, devices: Sequence[jax.Device]):
        self.devices = tuple(devices)
        self.single = len(self.devices) == 1
        self.mesh = Mesh(np.array(self.devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._split = NamedSharding(self.mesh, PartitionSpec("batch"))

    def input_sharding(self, bucket: int) -> NamedSharding:
        """Split along the batch when it divides evenly over the devices, else replicated."""
        return self._split if bucket % len(self.devices) == 0 else self.replicated


def _compile_buckets(
    model: LoadedModel, graphdef: Any, treedef: Any, leaves: list[Any], placement: _Placement,
    buckets: Sequence[int],
) -> dict[int, Any]:
    """One executable per bucket, called as ``executable(leaves, batch)``."""
    config = model.config
    k = config.top_k

    def forward(leaves, x):
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        logits = nnx.merge(graphdef, state)(config.preprocess(x))
        probabilities = jax.nn.softmax(logits.astype(np.float32), axis=-1)
        return jax.lax.top_k(probabilities, k)  # ties: the lower class index first

    executables = {}
    for bucket in buckets:
        sharding = placement.input_sharding(bucket)
        spec = jax.ShapeDtypeStruct(
            (bucket, *config.input_shape), np.dtype(config.input_dtype), sharding=sharding
        )
        jitted = jax.jit(forward, in_shardings=(placement.replicated, sharding))
        executables[bucket] = jitted.lower(leaves, spec).compile()
    return executables


def _leaf_types(leaves: Sequence[Any]) -> tuple[tuple[tuple[int, ...], np.dtype], ...]:
    return tuple((tuple(leaf.shape), np.dtype(leaf.dtype)) for leaf in leaves)


def _same_signature(a: ModelConfig, b: ModelConfig) -> bool:
    """Same architecture, shapes and preprocessing: compiled executables can be shared."""
    return replace(a, current_version=None, description="") == replace(
        b, current_version=None, description=""
    )


@dataclass
class _Pending:
    x: np.ndarray
    queued_at: float
    done: trio.Event
    wanted: Callable[[], bool] | None = None
    """Asked when the input's batch forms; False: the input is skipped, not run."""
    result: Prediction | None = None
    error: InferenceError | None = None


@dataclass
class ExecutorStats:
    batches: int = 0
    inputs: int = 0
    padded: int = 0
    """Padding rows run (bucket size minus batch size, summed)."""
    failed_batches: int = 0
    skipped: int = 0
    """Inputs no longer wanted when their batch formed (see ``submit_many``)."""


class Executor:
    """Serves one model: AOT-compiled buckets, a trio dynamic batcher, hot version switches.

    Construction compiles and runs every bucket of ``model`` (blocking; in a trio program
    create it with ``await trio.to_thread.run_sync(...)``). Then ``await executor.start(nursery)``
    and ``await executor.submit(x)``.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_size: int = INFERENCE_DEFAULT_MAX_BATCH_SIZE,
        max_queue_delay: float = INFERENCE_DEFAULT_MAX_QUEUE_DELAY_S,
        max_queue_length: int = INFERENCE_MAX_QUEUE_LENGTH,
        devices: Sequence[jax.Device] | None = None,
    ):
        if not 1 <= max_batch_size <= INFERENCE_MAX_BATCH_SIZE:
            raise BadConfig(
                f"max_batch_size {max_batch_size} is not in 1..{INFERENCE_MAX_BATCH_SIZE}"
            )
        if not 0 <= max_queue_delay <= INFERENCE_MAX_QUEUE_DELAY_S:
            raise BadConfig(
                f"max_queue_delay {max_queue_delay}s is not in 0..{INFERENCE_MAX_QUEUE_DELAY_S}s"
            )
        if not 1 <= max_queue_length <= INFERENCE_MAX_QUEUE_LENGTH:
            raise BadConfig(
                f"max_queue_length {max_queue_length} is not in 1..{INFERENCE_MAX_QUEUE_LENGTH}"
            )
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_length = max_queue_length
        self.buckets = buckets_up_to(max_batch_size)
        self.stats = ExecutorStats()
        self._placement = _Placement(devices if devices is not None else jax.local_devices())
        self._current = self.warm(model)
        self._staged: dict[ModelVersion, Servable] = {}
        self._send: trio.MemorySendChannel[_Pending] | None = None

    # --- versions ---------------------------------------------------------------------------

    @property
    def version(self) -> ModelVersion:
        """The model version new batches run on."""
        return self._current.version

    @property
    def config(self) -> ModelConfig:
        return self._current.config

    @property
    def devices(self) -> tuple[jax.Device, ...]:
        return self._placement.devices

    @property
    def staged_versions(self) -> tuple[ModelVersion, ...]:
        return tuple(self._staged)

    def warm(self, model: LoadedModel) -> Servable:
        """Places ``model`` on the devices, compiles every bucket and runs each once (blocking).

        A version with the same configuration, parameter tree and parameter shapes and
        dtypes as the current one reuses its executables.
        """
        input_bytes = (
            math.prod(model.config.input_shape) * np.dtype(model.config.input_dtype).itemsize
        )
        if input_bytes > INFERENCE_MAX_INPUT_BYTES:
            raise BadConfig(
                f"model input is {input_bytes} bytes, over the limit of {INFERENCE_MAX_INPUT_BYTES}"
            )
        graphdef, state = nnx.split(model.module)
        state = jax.device_put(state, self._placement.replicated)
        # The executables take the parameters as a flat list of arrays, not as the nnx
        # State pytree: flattening that tree (Python callbacks per node) on every call cost
        # 70-190 us of the caller's CPU per run of a digit model after an idle spell.
        leaves, treedef = jax.tree_util.tree_flatten(state)
        signature = (treedef, _leaf_types(leaves))
        current = getattr(self, "_current", None)
        if (current is not None and _same_signature(current.config, model.config)
                and current._signature == signature):
            executables = current._executables
        else:
            executables = _compile_buckets(model, graphdef, treedef, leaves, self._placement,
                                           self.buckets)
        servable = Servable(model, executables, self._placement, leaves, signature)
        servable.time_buckets()
        return servable

    async def stage(self, model: LoadedModel) -> ModelVersion:
        """Loads and warms ``model`` beside the current version (in a worker thread).

        Its inputs and labels must be the current model's, since queued inputs were checked
        against them. At most INFERENCE_MAX_STAGED_VERSIONS versions wait staged.
        """
        current = self._current.config
        if (model.config.input_shape, model.config.input_dtype, model.config.labels) != (
            current.input_shape,
            current.input_dtype,
            current.labels,
        ):
            raise BadConfig(
                f"model {model.config.name!r} takes {list(model.config.input_shape)} "
                f"{model.config.input_dtype} with {len(model.config.labels)} labels; the served "
                f"model takes {list(current.input_shape)} {current.input_dtype} with "
                f"{len(current.labels)}"
            )
        if model.version in self._staged or model.version == self.version:
            return model.version
        if len(self._staged) >= INFERENCE_MAX_STAGED_VERSIONS:
            raise InferenceError(
                f"{len(self._staged)} versions are staged already, the limit is "
                f"{INFERENCE_MAX_STAGED_VERSIONS}; switch to or drop one first"
            )
        servable = await trio.to_thread.run_sync(self.warm, model)
        if len(self._staged) >= INFERENCE_MAX_STAGED_VERSIONS:
            raise InferenceError(f"staged versions reached {INFERENCE_MAX_STAGED_VERSIONS}")
        self._staged[model.version] = servable
        return model.version

    def switch(self, version: str) -> ModelVersion:
        """Makes a staged version current, atomically; returns the version it replaces.

        Batches already running finish on (and report) the version they started with.
        """
        wanted = ModelVersion(version)
        if wanted == self.version:
            return wanted
        if wanted not in self._staged:
            raise UnknownModel(
                f"version {wanted} is not staged (staged: {list(self._staged)}); stage it first"
            )
        previous = self._current.version
        self._current = self._staged.pop(wanted)
        return previous

    def drop(self, version: str) -> None:
        """Forgets a staged version that will not be switched to."""
        if self._staged.pop(ModelVersion(version), None) is None:
            raise UnknownModel(f"version {version} is not staged")

    # --- serving ----------------------------------------------------------------------------

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        """Runs 1..max_batch_size inputs at once on the current version (blocking, no queue)."""
        servable = self._current
        return servable.run(check_batch(servable.config, batch, self.max_batch_size))

    async def submit(self, x: np.ndarray) -> Prediction:
        """Queues one input and returns its prediction once its batch has run.

        Raises BadInput at once for a bad input, QueueFull when max_queue_length inputs wait,
        ExecutorClosed when the batcher is not running.
        """
        self._check_serving()
        pending = self._enqueue(check_input(self._current.config, x), trio.current_time())
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def submit_many(
        self, xs: Sequence[np.ndarray] | np.ndarray,
        wanted: Sequence[Callable[[], bool]] | None = None
    ) -> list[Prediction | InferenceError]:
        """Queues several inputs at once (one task, however many) and returns, in order, each
        one's prediction or the InferenceError that refused or failed it (BadInput,
        QueueFull, a failed batch, Skipped). ``xs``: the inputs, or one array of them stacked
        on a first axis (checked in one pass, see :func:`check_inputs`). ``wanted``, one per
        input, is asked when the input's batch forms: an input no longer wanted then is not
        run (Skipped), so that inputs queued behind a backlog do not cost a run for nothing.
        Raises ExecutorClosed when the batcher is not running, and BadInput when ``xs`` is
        a 0-d array (no inputs to answer for one by one)."""
        if wanted is not None and len(wanted) != len(xs):
            raise ValueError(f"{len(wanted)} wanted checks for {len(xs)} inputs")
        self._check_serving()
        errors = check_inputs(self._current.config,
                              xs if isinstance(xs, np.ndarray) else list(xs))
        now = trio.current_time()
        out: list[Prediction | InferenceError | _Pending] = []
        for i, x in enumerate(xs):
            error = errors[i]
            if error is not None:
                out.append(error)
                continue
            try:
                out.append(self._enqueue(x, now, None if wanted is None else wanted[i]))
            except QueueFull as error:
                out.append(error)
        results: list[Prediction | InferenceError] = []
        for item in out:
            if isinstance(item, _Pending):
                await item.done.wait()
                results.append(item.error if item.error is not None else item.result)
            else:
                results.append(item)
        return results

    def _check_serving(self) -> None:
        if self._send is None:
            raise ExecutorClosed("executor is not serving: start it with `await start(nursery)`")

    def _enqueue(self, x: np.ndarray, now: float,
                 wanted: Callable[[], bool] | None = None) -> _Pending:
        """Queues ``x``, an input already checked (QueueFull, ExecutorClosed otherwise)."""
        assert self._send is not None
        pending = _Pending(x, now, trio.Event(), wanted)
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            raise QueueFull(
                f"{self.max_queue_length} inputs are queued, the limit (max_queue_length)"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ExecutorClosed("executor stopped serving") from None
        return pending

    async def start(self, nursery: trio.Nursery) -> None:
        """Starts the batcher in ``nursery``; returns once :meth:`submit` is accepted."""
        await nursery.start(self.serve)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The batcher: forms batches and runs them, one at a time, until cancelled."""
        if self._send is not None:
            raise InferenceError("executor is already serving")
        send, receive = trio.open_memory_channel[_Pending](self.max_queue_length)
        self._send = send
        try:
            task_status.started()
            while True:
                batch = await self._next_batch(receive)
                await self._run_batch(batch)
        finally:
            self._send = None
            send.close()
            while True:
                try:
                    pending = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                pending.error = ExecutorClosed("executor stopped serving before this input ran")
                pending.done.set()

    async def _next_batch(self, receive: trio.MemoryReceiveChannel[_Pending]) -> list[_Pending]:
        first = await receive.receive()
        while not self._still_wanted(first):
            first = await receive.receive()
        batch = [first]
        # The delay counts from when the first input was queued, not from when it is taken.
        with trio.move_on_at(first.queued_at + self.max_queue_delay):
            while len(batch) < self.max_batch_size:
                pending = await receive.receive()
                if self._still_wanted(pending):
                    batch.append(pending)
        while len(batch) < self.max_batch_size:
            try:
                pending = receive.receive_nowait()
            except trio.WouldBlock:
                break
            if self._still_wanted(pending):
                batch.append(pending)
        return batch

    def _still_wanted(self, pending: _Pending) -> bool:
        """Whether ``pending`` joins the batch forming; if not, it is answered Skipped."""
        if pending.wanted is None or pending.wanted():
            return True
        self.stats.skipped += 1
        pending.error = Skipped("the input was no longer wanted when its batch formed")
        pending.done.set()
        return False

    def _bucket(self, n: int) -> int:
        return bucket_for(self.buckets, n)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        servable = self._current  # the version this batch runs on, whatever switches meanwhile
        xs = np.stack([p.x for p in batch])
        try:
            bucket = self._bucket(len(batch))
            if bucket in servable.inline:
                predictions, cost = run_cost(servable.run, xs)
                if cost <= 2 * INFERENCE_INLINE_MAX_S:
                    servable.slow_runs[bucket] = 0
                else:  # a pause is not enough; a bucket slow run after run goes to threads
                    servable.slow_runs[bucket] = servable.slow_runs.get(bucket, 0) + 1
                    if servable.slow_runs[bucket] >= INFERENCE_INLINE_SLOW_RUNS:
                        servable.inline -= {bucket}
            else:
                predictions = await trio.to_thread.run_sync(servable.run, xs)
        except Exception as e:  # an execution failure fails this batch, not the executor
            self.stats.failed_batches += 1
            error = InferenceError(f"batch of {len(batch)} failed on {servable.version}: {e!r}")
            for pending in batch:
                pending.error = error
                pending.done.set()
            return
        self.stats.batches += 1
        self.stats.inputs += len(batch)
        self.stats.padded += self._bucket(len(batch)) - len(batch)
        for pending, prediction in zip(batch, predictions, strict=True):
            pending.result = prediction
            pending.done.set()
