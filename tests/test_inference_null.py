"""The null model used by the ordering benchmarks: no JAX, deterministic votes."""

from pathlib import Path

import numpy as np
import pytest
import trio
from dropbear.inference import BadInput, InferenceError, ModelRepository, Prediction
from dropbear.inference.null import NullExecutor, null_label, null_labels

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


def test_null_answers_a_stacked_batch_as_its_rows_one_by_one() -> None:
    config = ModelRepository(MODELS).config("digits-cnn")
    executor = NullExecutor(config, config.current_version)
    inputs = np.random.default_rng(1).uniform(0, 16, (20, 8, 8, 1)).astype(np.float32)
    stacked = trio.run(executor.submit_many, inputs)
    assert [p.class_index for p in stacked] == [null_label(x, 10) for x in list(inputs)]


def test_null_refuses_what_the_real_executor_refuses() -> None:
    config = ModelRepository(MODELS).config("digits-cnn")
    executor = NullExecutor(config, config.current_version)
    inputs = np.ones((3, 8, 8, 1), np.float32)
    inputs[1, 2, 2, 0] = np.nan
    for answers in (trio.run(executor.submit_many, inputs),
                    trio.run(executor.submit_many, list(inputs))):
        assert isinstance(answers[0], Prediction) and isinstance(answers[2], Prediction)
        assert isinstance(answers[1], BadInput)
        assert "holds 1 NaN or inf values" in str(answers[1])
    with pytest.raises(BadInput, match="input shape \\[4, 4, 1\\] is not the model's"):
        trio.run(executor.submit, np.ones((4, 4, 1), np.float32))


def test_null_switch_needs_a_staged_version() -> None:
    config = ModelRepository(MODELS).config("digits-cnn")
    executor = NullExecutor(config, config.current_version)
    with pytest.raises(InferenceError, match="is not staged"):
        executor.switch("ab" * 32)
    assert executor.switch(config.current_version) == config.current_version


def test_null_labels_of_a_stack_are_its_rows_labels_whatever_its_layout() -> None:
    rng = np.random.default_rng(2)
    stack = rng.uniform(0, 16, (30, 8, 8, 1)).astype(np.float32)
    rows = [null_label(x, 10) for x in stack]
    assert null_labels(stack, 10) == rows
    assert null_labels(stack.astype(">f4"), 10) == rows  # byte order does not change a label
    strided = rng.uniform(0, 16, (30, 8, 16, 1)).astype(np.float32)[:, :, ::2]
    assert null_labels(strided, 10) == [null_label(x, 10) for x in strided]
    assert null_labels(stack[:0], 10) == []
    with pytest.raises(ValueError, match="0-d"):
        null_labels(np.float32(1.0), 10)


def test_null_answers_carry_the_version_in_force() -> None:
    config = ModelRepository(MODELS).config("digits-cnn")
    executor = NullExecutor(config, config.current_version)
    inputs = np.random.default_rng(3).uniform(0, 16, (8, 8, 8, 1)).astype(np.float32)
    before = trio.run(executor.submit_many, inputs)
    assert {p.model_version for p in before} == {config.current_version}
    other = "cd" * 32
    trio.run(executor.stage, type("Staged", (), {"version": other})())
    executor.switch(other)
    after = trio.run(executor.submit_many, inputs)
    assert {p.model_version for p in after} == {other}
    assert [p.class_index for p in after] == [p.class_index for p in before]
    assert executor.stats.inputs == 16
