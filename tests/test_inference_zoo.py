"""The model zoo: standard ResNet shapes (traced, not compiled) and every architecture runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dropbear.inference import BadConfig, zoo
from flax import nnx


def _count(model: nnx.Module, kind: type) -> int:
    _, state, _ = nnx.split(model, kind, ...)
    return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(state))


@pytest.mark.parametrize(
    ("architecture", "params"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)]
)
def test_resnet_imagenet_configuration(architecture, params):
    # The torchvision parameter counts of ResNet-18 / ResNet-50 at 224x224x3 -> 1000 classes.
    model = zoo.abstract(architecture, (224, 224, 3), 1000)
    assert _count(model, nnx.Param) == params
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x), state, x)
    assert out.shape == (2, 1000)


@pytest.mark.parametrize(
    ("architecture", "options"),
    [
        ("mlp", {"hidden": [16, 8]}),
        ("cnn", {"widths": [4, 8], "dense": 8}),
        ("resnet", {"stage_sizes": [1, 1], "width": 4, "stem": "small"}),
        ("resnet", {"stage_sizes": [1, 1], "block": "bottleneck", "width": 4}),
        ("vit", {"patch": 2, "dim": 8, "depth": 1, "heads": 2}),
    ],
)
def test_every_architecture_runs_with_configurable_shape(architecture, options):
    input_shape = (12, 16, 3)  # not square, not the digits shape
    model = zoo.build(architecture, input_shape, 7, options, seed=1)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))  # one compilation
    logits = forward(state, jnp.ones((3, *input_shape)))
    assert logits.shape == (3, 7)
    assert np.isfinite(np.asarray(logits)).all()


def test_seed_decides_the_weights():
    a = zoo.build("mlp", (8, 8, 1), 10, {"hidden": [8]}, seed=0)
    b = zoo.build("mlp", (8, 8, 1), 10, {"hidden": [8]}, seed=0)
    c = zoo.build("mlp", (8, 8, 1), 10, {"hidden": [8]}, seed=1)
    x = jnp.ones((1, 8, 8, 1))
    assert np.array_equal(a(x), b(x))
    assert not np.array_equal(a(x), c(x))


@pytest.mark.parametrize(
    ("architecture", "shape", "options", "message"),
    [
        ("transformer-xl", (8, 8, 1), {}, "architecture 'transformer-xl'"),
        ("mlp", (8, 8), {}, "input_shape [8, 8]"),
        ("mlp", (8, 8, 1), {"depth": 3}, "options {'depth': 3}"),
        ("vit", (7, 7, 1), {"patch": 2}, "vit patch 2"),
        ("resnet", (8, 8, 1), {"block": "huge"}, "resnet block 'huge'"),
    ],
)
def test_bad_architecture_config_is_named(architecture, shape, options, message):
    with pytest.raises(BadConfig, match=message.replace("[", r"\[").replace("{", r"\{")):
        zoo.build(architecture, shape, 10, options)
