"""The one canonical byte format of a model's parameters, and the model version it defines.

Format (all integers little-endian; see docs/inference.md):

    magic   8 bytes   b"DBPARAM1"
    count   u32       number of tensors
    count times, in increasing order of the name's UTF-8 bytes, names unique:
      name_len  u16     1..INFERENCE_MAX_TENSOR_NAME_BYTES
      name      UTF-8   the variable's path in the model, components joined by "/"
      dtype     u8      1 = float32 (IEEE 754 binary32, little-endian); no other code is valid
      rank      u8      0..INFERENCE_MAX_TENSOR_RANK
      dims      rank x u32
      data      prod(dims) x 4 bytes, row-major; every value finite
    nothing after the last tensor

A decoder accepts exactly the bytes the encoder produces, so a parameter set has one
encoding, and its SHA-256 is the model version.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping

import numpy as np
from flax import nnx

from dropbear.inference.errors import CorruptModel
from dropbear.limits import (
    INFERENCE_MAX_PARAMETER_BYTES,
    INFERENCE_MAX_TENSOR_NAME_BYTES,
    INFERENCE_MAX_TENSOR_RANK,
    INFERENCE_MAX_TENSORS,
)

MAGIC = b"DBPARAM1"
DTYPE_FLOAT32 = 1
_F32 = np.dtype("<f4")

Parameters = dict[str, np.ndarray]
"""Tensor name -> float32 array: everything a model needs besides its architecture."""


class ModelVersion(str):
    """A model version: the lowercase hex SHA-256 of the canonical parameter bytes."""

    __slots__ = ()

    def __new__(cls, value: str) -> ModelVersion:
        if (
            not isinstance(value, str)
            or len(value) != 64
            or any(c not in "0123456789abcdef" for c in value)
        ):
            raise ValueError(f"model version {value!r} is not 64 lowercase hex digits")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, canonical: bytes) -> ModelVersion:
        """The version of canonical parameter bytes."""
        return cls(hashlib.sha256(canonical).hexdigest())

    @property
    def digest(self) -> bytes:
        """The 32 raw bytes of the SHA-256."""
        return bytes.fromhex(self)

    def short(self) -> str:
        return self[:12]


def encode(parameters: Mapping[str, np.ndarray]) -> bytes:
    """The canonical bytes of ``parameters`` (float32, finite, names within the limits)."""
    if len(parameters) > INFERENCE_MAX_TENSORS:
        raise ValueError(f"{len(parameters)} tensors exceed the limit of {INFERENCE_MAX_TENSORS}")
    named = sorted(((name.encode(), name) for name in parameters), key=lambda t: t[0])
    out = [MAGIC, struct.pack("<I", len(named))]
    for raw, name in named:
        array = np.asarray(parameters[name])
        if array.dtype != np.float32:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, only float32 is stored")
        if not 1 <= len(raw) <= INFERENCE_MAX_TENSOR_NAME_BYTES:
            raise ValueError(
                f"tensor name {name!r} is {len(raw)} bytes, "
                f"not 1..{INFERENCE_MAX_TENSOR_NAME_BYTES}"
            )
        if array.ndim > INFERENCE_MAX_TENSOR_RANK:
            raise ValueError(f"tensor {name!r} has rank {array.ndim} > {INFERENCE_MAX_TENSOR_RANK}")
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} holds NaN or inf")
        out.append(struct.pack("<H", len(raw)) + raw)
        out.append(struct.pack(f"<BB{array.ndim}I", DTYPE_FLOAT32, array.ndim, *array.shape))
        out.append(np.ascontiguousarray(array, dtype=_F32).tobytes())
    data = b"".join(out)
    if len(data) > INFERENCE_MAX_PARAMETER_BYTES:
        raise ValueError(
            f"parameters are {len(data)} bytes, over the limit of {INFERENCE_MAX_PARAMETER_BYTES}"
        )
    return data


def decode(data: bytes) -> Parameters:
    """The parameters of canonical bytes; anything else raises :class:`CorruptModel`."""
    if len(data) > INFERENCE_MAX_PARAMETER_BYTES:
        raise CorruptModel(
            f"parameter file is {len(data)} bytes, "
            f"over the limit of {INFERENCE_MAX_PARAMETER_BYTES}"
        )
    view = memoryview(data)
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise CorruptModel(f"parameter file ends inside {what} at byte {pos} (needs {n} more)")
        chunk = view[pos : pos + n]
        pos += n
        return chunk

    if bytes(take(len(MAGIC), "the magic")) != MAGIC:
        raise CorruptModel(f"parameter file does not start with {MAGIC!r}")
    (count,) = struct.unpack("<I", take(4, "the tensor count"))
    if count > INFERENCE_MAX_TENSORS:
        raise CorruptModel(f"parameter file holds {count} tensors, over {INFERENCE_MAX_TENSORS}")
    parameters: Parameters = {}
    previous = b""
    for i in range(count):
        (name_len,) = struct.unpack("<H", take(2, f"tensor {i}'s name length"))
        if not 1 <= name_len <= INFERENCE_MAX_TENSOR_NAME_BYTES:
            raise CorruptModel(
                f"tensor {i}'s name is {name_len} bytes, not 1..{INFERENCE_MAX_TENSOR_NAME_BYTES}"
            )
        raw = bytes(take(name_len, f"tensor {i}'s name"))
        if i and raw <= previous:
            raise CorruptModel(f"tensor name {raw!r} is not after {previous!r} (sorted, unique)")
        previous = raw
        try:
            name = raw.decode()
        except UnicodeDecodeError as e:
            raise CorruptModel(f"tensor {i}'s name {raw!r} is not UTF-8") from e
        dtype, rank = struct.unpack("<BB", take(2, f"tensor {name!r}'s dtype and rank"))
        if dtype != DTYPE_FLOAT32:
            raise CorruptModel(f"tensor {name!r} has dtype code {dtype}, only 1 (float32) is valid")
        if rank > INFERENCE_MAX_TENSOR_RANK:
            raise CorruptModel(f"tensor {name!r} has rank {rank}, over {INFERENCE_MAX_TENSOR_RANK}")
        dims = struct.unpack(f"<{rank}I", take(4 * rank, f"tensor {name!r}'s dims"))
        size = math.prod(dims) * 4
        array = np.frombuffer(take(size, f"tensor {name!r}'s data"), dtype=_F32).reshape(dims)
        if not np.isfinite(array).all():
            raise CorruptModel(f"tensor {name!r} holds NaN or inf")
        parameters[name] = array.astype(np.float32)
    if pos != len(view):
        raise CorruptModel(f"parameter file has {len(view) - pos} bytes after the last tensor")
    return parameters


def of_model(model: nnx.Module) -> Parameters:
    """The parameters (``nnx.Param`` and ``nnx.BatchStat``) of a model, by path name."""
    _, state, _ = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    return {
        "/".join(str(k) for k in path): np.asarray(variable[...], dtype=np.float32)
        for path, variable in nnx.to_flat_state(state)
    }


def into_model(skeleton: nnx.Module, parameters: Mapping[str, np.ndarray]) -> nnx.Module:
    """``skeleton`` (a built or abstract model) with exactly ``parameters`` as its state.

    Raises :class:`CorruptModel` when a name is missing or extra or a shape differs.
    """
    graphdef, state, rest = nnx.split(skeleton, (nnx.Param, nnx.BatchStat), ...)
    flat = nnx.to_flat_state(state)
    expected = {"/".join(str(k) for k in path): variable for path, variable in flat}
    missing = sorted(set(expected) - set(parameters))
    extra = sorted(set(parameters) - set(expected))
    if missing or extra:
        raise CorruptModel(
            f"parameters do not fit the architecture: missing {missing[:5]}, extra {extra[:5]}"
        )
    for name, variable in expected.items():
        got = tuple(np.shape(parameters[name]))
        if got != tuple(variable.shape):
            raise CorruptModel(
                f"tensor {name!r} has shape {list(got)}, the architecture needs "
                f"{list(variable.shape)}"
            )
        variable.set_value(np.asarray(parameters[name], dtype=np.float32))
    model = nnx.merge(graphdef, nnx.from_flat_state(flat), rest)
    model.eval()
    return model
