"""The null model used by the ordering benchmarks: no JAX, deterministic votes."""

from pathlib import Path

import numpy as np
import pytest
import trio
from dropbear.inference import InferenceError, ModelRepository
from dropbear.inference.null import NullExecutor, null_label

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_null_votes_are_a_function_of_the_input_alone() -> None:
    config = ModelRepository(MODELS).config("digits-cnn")
    a = NullExecutor(config, config.current_version)
    b = NullExecutor(config, config.current_version)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 16, (50, 8, 8, 1)).astype(np.float32)

    async def labels(executor):
        return [(await executor.submit(x)).class_index for x in inputs]

    first, second = trio.run(labels, a), trio.run(labels, b)
    assert first == second == [null_label(x, 10) for x in inputs]
    assert len(set(first)) > 3  # spread over the classes, not one constant
    assert a.stats.inputs == 50


def test_null_switch_needs_a_staged_version() -> None:
    config = ModelRepository(MODELS).config("digits-cnn")
    executor = NullExecutor(config, config.current_version)
    with pytest.raises(InferenceError, match="is not staged"):
        executor.switch("ab" * 32)
    assert executor.switch(config.current_version) == config.current_version
