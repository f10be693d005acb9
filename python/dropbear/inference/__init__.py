"""The inference half of a node: model zoo, versioned model repository, batched jit executor.

repo = ModelRepository("models")
model = repo.load("digits-cnn")            # verified: SHA-256 of the parameter bytes
executor = Executor(model, max_batch_size=32)   # compiles every bucket now
async with trio.open_nursery() as nursery:
    await executor.start(nursery)
    prediction = await executor.submit(image)   # label, probability, top_k, model_version
"""

from dropbear.inference.errors import (
    BadConfig,
    BadInput,
    CorruptModel,
    ExecutorClosed,
    InferenceError,
    QueueFull,
    Skipped,
    UnknownModel,
)
from dropbear.inference.executor import (
    DecodedInputs,
    Executor,
    ExecutorStats,
    Prediction,
    buckets_up_to,
    check_batch,
    check_input,
    check_inputs,
    check_request_input,
    decode_input,
    decode_inputs,
)
from dropbear.inference.parameters import ModelVersion, Parameters
from dropbear.inference.repository import (
    LoadedModel,
    ModelConfig,
    ModelRepository,
    Preprocessing,
    seeded,
)

__all__ = [
    "BadConfig",
    "BadInput",
    "CorruptModel",
    "DecodedInputs",
    "Executor",
    "ExecutorClosed",
    "ExecutorStats",
    "InferenceError",
    "LoadedModel",
    "ModelConfig",
    "ModelRepository",
    "ModelVersion",
    "Parameters",
    "Prediction",
    "Preprocessing",
    "QueueFull",
    "Skipped",
    "UnknownModel",
    "buckets_up_to",
    "check_batch",
    "check_input",
    "check_inputs",
    "check_request_input",
    "decode_input",
    "decode_inputs",
    "seeded",
]
