"""A null model for benchmarks: answers at once, runs no JAX.

``dropbear node --null-model`` serves with a :class:`NullExecutor` in place of the batched
:class:`~dropbear.inference.Executor`, so that a group's throughput measures ordering
(signatures, consensus, networking) alone. The vote is still a deterministic function of
the input — label = SHA-256(input bytes) mod the number of classes — so every honest node
votes the same label and agreement is reached as with real models. The model version is
the one the manifest names (the node's genesis version), so votes check out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import trio

from dropbear.inference.errors import InferenceError
from dropbear.inference.executor import ExecutorStats, Prediction, check_input, check_inputs
from dropbear.inference.parameters import ModelVersion
from dropbear.inference.repository import LoadedModel, ModelConfig
from dropbear.limits import INFERENCE_MAX_QUEUE_LENGTH


def null_label(x: np.ndarray, num_classes: int) -> int:
    """The null model's label of one input: SHA-256 of its little-endian bytes mod classes."""
    return null_labels(x[np.newaxis], num_classes)[0]


def null_labels(batch: np.ndarray, num_classes: int) -> list[int]:
    """:func:`null_label` of every input of a stack (inputs on the first axis), from one
    little-endian copy of the whole stack."""
    if batch.ndim == 0:
        raise ValueError("a 0-d array is not a stack of inputs")
    n = batch.shape[0]
    if n == 0:
        return []
    data = memoryview(np.ascontiguousarray(batch, dtype=batch.dtype.newbyteorder("<"))
                      .tobytes())
    size, sha256 = len(data) // n, hashlib.sha256
    return [int.from_bytes(sha256(data[i * size:(i + 1) * size]).digest()[:8], "big")
            % num_classes for i in range(n)]


class NullExecutor:
    """The executor surface a node uses (``start``, ``submit``, ``submit_many``, ``version``,
    ``config``, ``max_queue_length``, ``stats``, ``stage``, ``switch``), without a model."""

    def __init__(self, config: ModelConfig, version: ModelVersion | str,
                 max_queue_length: int = INFERENCE_MAX_QUEUE_LENGTH) -> None:
        self._config = config
        self._version = ModelVersion(str(version))
        self._staged: set[ModelVersion] = set()
        self.max_queue_length = max_queue_length
        self.max_batch_size = 1
        self.stats = ExecutorStats()
        self._answers: dict[int, Prediction] = {}
        """The Prediction of each class under the current version (immutable, so shared)."""

    @property
    def version(self) -> ModelVersion:
        return self._version

    @property
    def config(self) -> ModelConfig:
        return self._config

    async def start(self, nursery: trio.Nursery) -> None:
        """Nothing to run in the background."""

    async def submit(self, x: np.ndarray) -> Prediction:
        """The null vote on ``x``; BadInput (as the real executor) if it is no valid input."""
        return self._answer(check_input(self._config, x))

    def _answer(self, x: np.ndarray) -> Prediction:
        self.stats.batches += 1
        self.stats.inputs += 1
        return self._prediction(null_label(x, len(self._config.labels)))

    def _prediction(self, label: int) -> Prediction:
        answer = self._answers.get(label)
        if answer is None:
            name = self._config.labels[label]
            answer = self._answers[label] = Prediction(
                label=name, class_index=label, probability=1.0, top_k=((name, 1.0),),
                model_version=self._version)
        return answer

    async def submit_many(
        self, xs: Sequence[np.ndarray] | np.ndarray,
        wanted: Sequence[Callable[[], bool]] | None = None
    ) -> list[Prediction | InferenceError]:
        """Answers every input (or every row of a stacked array) at once, or refuses it as
        the real executor does (BadInput; raised for a 0-d array): nothing queues, so
        ``wanted`` is never asked."""
        if wanted is not None and len(wanted) != len(xs):
            raise ValueError(f"{len(wanted)} wanted checks for {len(xs)} inputs")
        if not isinstance(xs, np.ndarray):
            xs = list(xs)
            errors = check_inputs(self._config, xs)
            return [self._answer(x) if error is None else error
                    for x, error in zip(xs, errors, strict=True)]
        errors = check_inputs(self._config, xs)  # (raises BadInput for a 0-d array)
        labels = null_labels(xs, len(self._config.labels))
        answered = errors.count(None)
        self.stats.batches += answered
        self.stats.inputs += answered
        answer = self._prediction
        return [answer(label) if error is None else error
                for label, error in zip(labels, errors, strict=True)]

    async def stage(self, model: LoadedModel) -> ModelVersion:
        self._staged.add(model.version)
        return model.version

    def switch(self, version: str) -> ModelVersion:
        wanted = ModelVersion(version)
        if wanted != self._version and wanted not in self._staged:
            raise InferenceError(f"version {wanted.short()} is not staged")
        previous, self._version = self._version, wanted
        self._answers.clear()
        self._staged.discard(wanted)
        return previous
