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
    data = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % num_classes


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
        label = null_label(x, len(self._config.labels))
        self.stats.batches += 1
        self.stats.inputs += 1
        return Prediction(label=self._config.labels[label], class_index=label, probability=1.0,
                          top_k=((self._config.labels[label], 1.0),),
                          model_version=self._version)

    async def submit_many(
        self, xs: Sequence[np.ndarray] | np.ndarray,
        wanted: Sequence[Callable[[], bool]] | None = None
    ) -> list[Prediction | InferenceError]:
        """Answers every input (or every row of a stacked array) at once, or refuses it as
        the real executor does (BadInput; raised for a 0-d array): nothing queues, so
        ``wanted`` is never asked."""
        if wanted is not None and len(wanted) != len(xs):
            raise ValueError(f"{len(wanted)} wanted checks for {len(xs)} inputs")
        errors = check_inputs(self._config, xs if isinstance(xs, np.ndarray) else list(xs))
        return [self._answer(x) if error is None else error
                for x, error in zip(xs, errors, strict=True)]

    async def stage(self, model: LoadedModel) -> ModelVersion:
        self._staged.add(model.version)
        return model.version

    def switch(self, version: str) -> ModelVersion:
        wanted = ModelVersion(version)
        if wanted != self._version and wanted not in self._staged:
            raise InferenceError(f"version {wanted.short()} is not staged")
        previous, self._version = self._version, wanted
        self._staged.discard(wanted)
        return previous
