"""Training on scikit-learn's digits data set (8x8 grey images of 0..9, pixel values 0..16).

The split is fixed and documented: ``train_test_split(X, y, test_size=0.25, random_state=0,
stratify=y)`` gives 1347 training and 450 test images; every model reports its accuracy on
those same 450 test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dropbear.inference import zoo
from dropbear.inference.repository import LoadedModel, ModelConfig, Preprocessing

DIGITS_INPUT_SHAPE = (8, 8, 1)
DIGITS_LABELS = tuple(str(d) for d in range(10))
DIGITS_PREPROCESSING = Preprocessing(scale=1 / 16)
DIGITS_SPLIT = "train_test_split(test_size=0.25, random_state=0, stratify=y)"
MIN_TEST_ACCURACY = 0.95


@dataclass(frozen=True)
class Recipe:
    """How one committed digits model is made: ``dropbear train <name>`` replays it."""

    architecture: str
    options: dict[str, Any]
    seed: int = 0
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 2e-3
    shift: int = 0
    """Random translation of training images by up to this many pixels (augmentation)."""
    description: str = ""


RECIPES: dict[str, Recipe] = {
    "digits-mlp": Recipe(
        "mlp",
        {"hidden": [128, 64]},
        seed=0,
        epochs=40,
        description="Two-layer ReLU MLP on the 64 pixels.",
    ),
    "digits-cnn": Recipe(
        "cnn",
        {"widths": [16, 32], "dense": 64},
        seed=1,
        epochs=40,
        description="Two 3x3 conv + max-pool blocks, a dense layer.",
    ),
    "digits-resnet": Recipe(
        "resnet",
        {"stage_sizes": [1, 1, 1], "block": "basic", "width": 16, "stem": "small"},
        seed=2,
        epochs=40,
        description="A narrow 3-stage ResNet (basic blocks, batch norm).",
    ),
    "digits-vit": Recipe(
        "vit",
        {"patch": 2, "dim": 64, "depth": 3, "heads": 4, "mlp_ratio": 2},
        seed=3,
        epochs=100,
        learning_rate=2e-3,
        shift=1,
        description="A 3-layer Vision Transformer over 2x2 patches.",
    ),
}
"""The committed digits models (models/<name>), each with its training recipe."""


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split() -> Digits:
    """The fixed split of the digits data set, images as (n, 8, 8, 1) float32 in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return Digits(x_train, y_train, x_test, y_test)


@dataclass(frozen=True)
class TrainingResult:
    model: LoadedModel
    train_accuracy: float
    test_accuracy: float
    test_predictions: np.ndarray
    record: dict[str, Any]
    """What goes into ``<version>/training.toml``: recipe, split, accuracies."""


def digits_config(
    name: str,
    architecture: str,
    options: dict[str, Any],
    description: str = "",
) -> ModelConfig:
    return ModelConfig(
        name=name,
        architecture=architecture,
        input_shape=DIGITS_INPUT_SHAPE,
        labels=DIGITS_LABELS,
        options=options,
        preprocessing=DIGITS_PREPROCESSING,
        top_k=3,
        description=description,
    )


def train_digits(
    config: ModelConfig,
    recipe: Recipe,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Trains ``config``'s architecture with AdamW and a cosine schedule on the fixed split."""
    data = load_digits_split()
    module = zoo.build(
        config.architecture,
        config.input_shape,
        config.num_classes,
        dict(config.options),
        seed=recipe.seed,
    )
    module.train()
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    steps_per_epoch = -(-len(data.x_train) // recipe.batch_size)
    schedule = optax.cosine_decay_schedule(recipe.learning_rate, recipe.epochs * steps_per_epoch)
    tx = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state, x, y):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            logits = model(config.preprocess(x))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    rng = np.random.default_rng(recipe.seed)
    n = len(data.x_train)
    for epoch in range(recipe.epochs):
        order = rng.permutation(n)
        # Full batches only, so that every step has one shape (one compilation).
        losses = []
        for i in range(0, n - recipe.batch_size + 1, recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            x = _shifted(data.x_train[idx], recipe.shift, rng)
            params, rest, opt_state, loss = step(params, rest, opt_state, x, data.y_train[idx])
            losses.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, float(jnp.mean(jnp.stack(losses))))

    module = nnx.merge(graphdef, params, rest)
    module.eval()
    model = LoadedModel.from_module(config, module)
    train_pred = predict_labels(config, module, data.x_train)
    test_pred = predict_labels(config, module, data.x_test)
    train_acc = float((train_pred == data.y_train).mean())
    test_acc = float((test_pred == data.y_test).mean())
    record = {
        "version": str(model.version),
        "dataset": "sklearn.datasets.load_digits",
        "split": DIGITS_SPLIT,
        "train_images": int(len(data.x_train)),
        "test_images": int(len(data.x_test)),
        "train_accuracy": round(train_acc, 6),
        "test_accuracy": round(test_acc, 6),
        "recipe": {
            "architecture": recipe.architecture,
            "options": dict(recipe.options),
            "seed": recipe.seed,
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "learning_rate": recipe.learning_rate,
            "shift": recipe.shift,
            "optimizer": "adamw(cosine_decay_schedule, weight_decay=1e-4)",
        },
        "jax_version": jax.__version__,
    }
    return TrainingResult(model, train_acc, test_acc, test_pred, record)


def _shifted(x: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by a random (dy, dx) in -shift..shift, zero-filled (blank paper)."""
    if shift == 0:
        return x
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * shift + 1, size=(len(x), 2))):
        out[i] = padded[i, dy : dy + h, dx : dx + w]
    return out


def predict_labels(config: ModelConfig, module: nnx.Module, x: np.ndarray) -> np.ndarray:
    """Top-1 class indices of ``x`` (a plain jit forward; serving uses the executor)."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def forward(state, x):
        return jnp.argmax(nnx.merge(graphdef, state)(config.preprocess(x)), axis=-1)

    return np.asarray(forward(state, x))
