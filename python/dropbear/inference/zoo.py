"""The model zoo: heterogeneous Flax NNX image classifiers.

Every model takes NHWC float32 images of a configurable ``input_shape`` (H, W, C) and returns
logits over ``num_classes``. Models hold only ``nnx.Param`` and ``nnx.BatchStat`` state (no
dropout, no stored RNG streams), so their parameters are exactly what the repository stores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dropbear.inference.errors import BadConfig

Shape = tuple[int, int, int]


class MLP(nnx.Module):
    """Flattened pixels through ReLU hidden layers."""

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        hidden: Sequence[int] = (128,),
    ):
        sizes = [math.prod(input_shape), *hidden]
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:], strict=False)]
        )
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return self.head(x)


class SmallCNN(nnx.Module):
    """3x3 convolutions (each block doubles the width and halves the resolution), then a head."""

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        widths: Sequence[int] = (16, 32),
        dense: int = 64,
    ):
        h, w, c = input_shape
        chans = [c, *widths]
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(3, 3), padding="SAME", rngs=rngs)
                for a, b in zip(chans, chans[1:], strict=False)
            ]
        )
        for _ in widths:
            h, w = (h + 1) // 2, (w + 1) // 2
        self.dense = nnx.Linear(h * w * chans[-1], dense, rngs=rngs)
        self.head = nnx.Linear(dense, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = nnx.relu(conv(x))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.dense(x)))


class BasicBlock(nnx.Module):
    """ResNet-18/34 block: two 3x3 convolutions."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1 = nnx.Conv(
            cin, width, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs
        )
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, cout, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, scale_init=nnx.initializers.zeros, rngs=rngs)
        self.shortcut = _projection(cin, cout, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class BottleneckBlock(nnx.Module):
    """ResNet-50/101/152 block: 1x1 reduce, 3x3 (strided, as in torchvision v1.5), 1x1 expand."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1 = nnx.Conv(cin, width, (1, 1), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.conv2 = nnx.Conv(
            width, width, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs
        )
        self.bn2 = nnx.BatchNorm(width, rngs=rngs)
        self.conv3 = nnx.Conv(width, cout, (1, 1), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(cout, scale_init=nnx.initializers.zeros, rngs=rngs)
        self.shortcut = _projection(cin, cout, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Projection(nnx.Module):
    """The 1x1 strided convolution + batch norm of a shortcut that changes shape."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


def _projection(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> Projection | None:
    return Projection(cin, cout, stride, rngs) if stride != 1 or cin != cout else None


_BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nnx.Module):
    """ResNet v1.5. ``stem="imagenet"`` is the standard 7x7/2 convolution + 3x3/2 max pool;
    ``stem="small"`` is one 3x3/1 convolution, for tiny images such as 8x8 digits."""

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        stage_sizes: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        width: int = 64,
        stem: str = "imagenet",
    ):
        if block not in _BLOCKS:
            raise BadConfig(f"resnet block {block!r} is not one of {sorted(_BLOCKS)}")
        if stem not in ("imagenet", "small"):
            raise BadConfig(f"resnet stem {stem!r} is not 'imagenet' or 'small'")
        block_cls = _BLOCKS[block]
        self.imagenet_stem = stem == "imagenet"
        cin = input_shape[2]
        if self.imagenet_stem:
            self.stem = nnx.Conv(
                cin, width, (7, 7), strides=2, padding=3, use_bias=False, rngs=rngs
            )
        else:
            self.stem = nnx.Conv(cin, width, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, rngs=rngs)
        blocks = []
        cin = width
        for i, size in enumerate(stage_sizes):
            for j in range(size):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(cin, width * 2**i, stride, rngs=rngs))
                cin = width * 2**i * block_cls.expansion
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        if self.imagenet_stem:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


class Attention(nnx.Module):
    """Multi-head self-attention, no dropout."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        if dim % heads:
            raise BadConfig(f"vit dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.out = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        att = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d // self.heads)
        y = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(att, axis=-1), v)
        return self.out(y.reshape(b, t, d))


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = Attention(dim, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, dim * mlp_ratio, rngs=rngs)
        self.fc2 = nnx.Linear(dim * mlp_ratio, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class ViT(nnx.Module):
    """A small Vision Transformer: patch embedding, learned positions, mean-pooled tokens."""

    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        patch: int = 2,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
    ):
        h, w, c = input_shape
        if h % patch or w % patch:
            raise BadConfig(f"vit patch {patch} does not divide the input {h}x{w}")
        tokens = (h // patch) * (w // patch)
        self.embed = nnx.Conv(c, dim, (patch, patch), strides=patch, padding="VALID", rngs=rngs)
        self.positions = nnx.Param(jax.random.normal(rngs.params(), (1, tokens, dim)) * 0.02)
        self.blocks = nnx.List(
            [EncoderBlock(dim, heads, mlp_ratio, rngs=rngs) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.embed(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.positions[...]
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(self.norm(x), axis=1))


def resnet18(input_shape: Shape, num_classes: int, *, rngs: nnx.Rngs, **options: Any) -> ResNet:
    """ResNet-18 in the standard ImageNet configuration (11.7M parameters at 1000 classes)."""
    return ResNet(
        input_shape, num_classes, rngs=rngs, stage_sizes=(2, 2, 2, 2), block="basic", **options
    )


def resnet50(input_shape: Shape, num_classes: int, *, rngs: nnx.Rngs, **options: Any) -> ResNet:
    """ResNet-50 in the standard ImageNet configuration (25.6M parameters at 1000 classes)."""
    return ResNet(
        input_shape, num_classes, rngs=rngs, stage_sizes=(3, 4, 6, 3), block="bottleneck", **options
    )


ARCHITECTURES: dict[str, Callable[..., nnx.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet": ResNet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit": ViT,
}
"""Architecture names as written in ``config.toml``; each takes
``(input_shape, num_classes, *, rngs, **options)``."""


def build(
    architecture: str,
    input_shape: Sequence[int],
    num_classes: int,
    options: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> nnx.Module:
    """A freshly initialised model (seeded), in evaluation mode."""
    model = _construct(architecture, input_shape, num_classes, options, nnx.Rngs(seed))
    model.eval()
    return model


def abstract(
    architecture: str,
    input_shape: Sequence[int],
    num_classes: int,
    options: dict[str, Any] | None = None,
) -> nnx.Module:
    """The model's structure with shapes only (no initialisation cost), in evaluation mode."""
    model = nnx.eval_shape(
        lambda: _construct(architecture, input_shape, num_classes, options, nnx.Rngs(0))
    )
    model.eval()
    return model


def _construct(
    architecture: str,
    input_shape: Sequence[int],
    num_classes: int,
    options: dict[str, Any] | None,
    rngs: nnx.Rngs,
) -> nnx.Module:
    if architecture not in ARCHITECTURES:
        raise BadConfig(f"architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}")
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise BadConfig(f"input_shape {list(input_shape)} is not [height, width, channels] >= 1")
    if num_classes < 2:
        raise BadConfig(f"num_classes {num_classes} is below 2")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    try:
        return ARCHITECTURES[architecture](shape, num_classes, rngs=rngs, **(options or {}))
    except TypeError as e:
        raise BadConfig(f"options {options} do not fit architecture {architecture!r}: {e}") from e
