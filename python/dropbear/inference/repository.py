"""The model repository: ``<root>/<name>/config.toml`` and ``<root>/<name>/<version>/``.

``config.toml`` says what the model is (architecture, input, labels, preprocessing) and which
version is current; each version folder is named by its model version (the SHA-256 of its
canonical parameter bytes) and holds ``parameters.bin``. Loading recomputes the hash and
refuses a mismatch.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import tomli_w
from flax import nnx

from dropbear.inference import parameters as params_format
from dropbear.inference import zoo
from dropbear.inference.errors import BadConfig, CorruptModel, UnknownModel
from dropbear.inference.parameters import ModelVersion, Parameters
from dropbear.limits import INFERENCE_MAX_CONFIG_BYTES, INFERENCE_MAX_TOP_K

CONFIG_FILE = "config.toml"
PARAMETERS_FILE = "parameters.bin"
TRAINING_FILE = "training.toml"
INPUT_DTYPES = ("float32",)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Preprocessing:
    """Applied inside the compiled model: ``(x * scale - mean) / std``, per channel."""

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class ModelConfig:
    """What ``config.toml`` says of a model; the same for every version of it."""

    name: str
    architecture: str
    input_shape: tuple[int, int, int]
    labels: tuple[str, ...]
    input_dtype: str = "float32"
    options: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing = Preprocessing()
    top_k: int = 3
    current_version: ModelVersion | None = None
    description: str = ""

    def __post_init__(self) -> None:
        # One spelling of the options (TOML arrays are lists), so that configs compare equal.
        object.__setattr__(self, "options", _plain(dict(self.options)))
        if not _NAME.fullmatch(self.name):
            raise BadConfig(f"model name {self.name!r} is not [a-z0-9][a-z0-9._-]{{0,63}}")
        if self.input_dtype not in INPUT_DTYPES:
            raise BadConfig(f"input_dtype {self.input_dtype!r} is not one of {INPUT_DTYPES}")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise BadConfig(
                f"input_shape {list(self.input_shape)} is not [height, width, channels]"
            )
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise BadConfig(f"labels {list(self.labels)[:10]} are not 2 or more distinct labels")
        if not 1 <= self.top_k <= min(INFERENCE_MAX_TOP_K, len(self.labels)):
            raise BadConfig(
                f"top_k {self.top_k} is not in 1..{min(INFERENCE_MAX_TOP_K, len(self.labels))}"
            )
        channels = self.input_shape[2]
        for what, values in (("mean", self.preprocessing.mean), ("std", self.preprocessing.std)):
            if len(values) not in (1, channels):
                raise BadConfig(
                    f"preprocessing {what} has {len(values)} values, not 1 or {channels}"
                )
        if any(s <= 0 for s in self.preprocessing.std):
            raise BadConfig(f"preprocessing std {list(self.preprocessing.std)} is not all > 0")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def preprocess(self, x: jax.Array) -> jax.Array:
        """Raw inputs (as clients send them) -> what the network takes."""
        pre = self.preprocessing
        mean = jnp.asarray(pre.mean, dtype=jnp.float32)
        std = jnp.asarray(pre.std, dtype=jnp.float32)
        return (x.astype(jnp.float32) * pre.scale - mean) / std

    def skeleton(self) -> nnx.Module:
        """The architecture with shapes only, to load parameters into."""
        return zoo.abstract(
            self.architecture, self.input_shape, self.num_classes, dict(self.options)
        )

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "labels": list(self.labels),
            "top_k": self.top_k,
        }
        if self.current_version is not None:
            out["current_version"] = str(self.current_version)
        out["options"] = dict(self.options)
        out["preprocessing"] = {
            "scale": self.preprocessing.scale,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
        }
        return out

    @classmethod
    def from_toml(cls, doc: Mapping[str, Any]) -> ModelConfig:
        known = {
            "name",
            "description",
            "architecture",
            "input_shape",
            "input_dtype",
            "labels",
            "top_k",
            "current_version",
            "options",
            "preprocessing",
        }
        unknown = sorted(set(doc) - known)
        if unknown:
            raise BadConfig(f"config.toml has unknown fields {unknown}")
        try:
            pre = doc.get("preprocessing", {})
            version = doc.get("current_version")
            return cls(
                name=doc["name"],
                description=doc.get("description", ""),
                architecture=doc["architecture"],
                input_shape=tuple(int(d) for d in doc["input_shape"]),  # type: ignore[arg-type]
                input_dtype=doc.get("input_dtype", "float32"),
                labels=tuple(str(label) for label in doc["labels"]),
                top_k=int(doc.get("top_k", 3)),
                current_version=None if version is None else ModelVersion(version),
                options=dict(doc.get("options", {})),
                preprocessing=Preprocessing(
                    scale=float(pre.get("scale", 1.0)),
                    mean=tuple(float(v) for v in pre.get("mean", [0.0])),
                    std=tuple(float(v) for v in pre.get("std", [1.0])),
                ),
            )
        except KeyError as e:
            raise BadConfig(f"config.toml lacks the field {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            if isinstance(e, BadConfig):
                raise
            raise BadConfig(f"config.toml has a bad value: {e}") from e


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One verified version of a model: its config, its parameters and the built module."""

    config: ModelConfig
    version: ModelVersion
    parameters: Parameters
    module: nnx.Module

    @classmethod
    def from_parameters(cls, config: ModelConfig, parameters: Parameters) -> LoadedModel:
        """Builds the model of ``parameters``; its version is the hash of their canonical bytes."""
        canonical = params_format.encode(parameters)
        module = params_format.into_model(config.skeleton(), parameters)
        return cls(config, ModelVersion.of(canonical), dict(parameters), module)

    @classmethod
    def from_module(cls, config: ModelConfig, module: nnx.Module) -> LoadedModel:
        """Wraps a built module (trained or seeded), computing its version."""
        parameters = params_format.of_model(module)
        version = ModelVersion.of(params_format.encode(parameters))
        module.eval()
        return cls(config, version, parameters, module)


class ModelRepository:
    """A folder of models, laid out as Triton / TF Serving users know it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def names(self) -> list[str]:
        """The models in the repository, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file())

    def config(self, name: str) -> ModelConfig:
        path = self._model_dir(name) / CONFIG_FILE
        if not path.is_file():
            raise UnknownModel(f"model {name!r} is not in {self.root} (known: {self.names()})")
        size = path.stat().st_size
        if size > INFERENCE_MAX_CONFIG_BYTES:
            raise BadConfig(
                f"{path} is {size} bytes, over the limit of {INFERENCE_MAX_CONFIG_BYTES}"
            )
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise BadConfig(f"{path} is not valid TOML: {e}") from e
        config = ModelConfig.from_toml(doc)
        if config.name != name:
            raise BadConfig(f"{path} names the model {config.name!r}, its folder is {name!r}")
        return config

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions stored for ``name`` (folder names; verified only on load)."""
        model_dir = self._model_dir(name)
        self.config(name)
        out = []
        for p in sorted(model_dir.iterdir()):
            if (p / PARAMETERS_FILE).is_file():
                try:
                    out.append(ModelVersion(p.name))
                except ValueError:
                    continue
        return out

    def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Loads and verifies one version (default: the config's ``current_version``)."""
        config = self.config(name)
        if version is None:
            if config.current_version is None:
                raise UnknownModel(f"model {name!r} has no current_version in its config.toml")
            version = config.current_version
        try:
            wanted = ModelVersion(version)
        except ValueError as e:
            raise UnknownModel(str(e)) from e
        path = self._model_dir(name) / wanted / PARAMETERS_FILE
        if not path.is_file():
            raise UnknownModel(
                f"model {name!r} has no version {wanted} (stored: {self.versions(name)})"
            )
        data = path.read_bytes()
        actual = ModelVersion.of(data)
        if actual != wanted:
            raise CorruptModel(
                f"{path} hashes to {actual}, not to its version {wanted}: the file was altered"
            )
        parameters = params_format.decode(data)
        module = params_format.into_model(config.skeleton(), parameters)
        return LoadedModel(replace(config, current_version=wanted), wanted, parameters, module)

    def save(
        self,
        model: LoadedModel,
        *,
        make_current: bool = True,
        training: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Writes a version (and the config, which must otherwise match the stored one).

        Files are written to a temporary name and renamed, so a reader never sees half a file.
        """
        name = model.config.name
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        config = model.config
        if (model_dir / CONFIG_FILE).is_file():
            stored = self.config(name)
            if replace(stored, current_version=None, description="") != replace(
                config, current_version=None, description=""
            ):
                raise BadConfig(
                    f"model {name!r} is stored with another configuration; use a new name"
                )
            config = replace(config, current_version=stored.current_version)
        version_dir = model_dir / model.version
        version_dir.mkdir(exist_ok=True)
        _atomic_write(version_dir / PARAMETERS_FILE, params_format.encode(model.parameters))
        if training is not None:
            _atomic_write(version_dir / TRAINING_FILE, tomli_w.dumps(dict(training)).encode())
        if make_current or config.current_version is None:
            config = replace(config, current_version=model.version)
        _atomic_write(model_dir / CONFIG_FILE, tomli_w.dumps(config.to_toml()).encode())
        return model.version

    def set_current(self, name: str, version: str) -> None:
        """Makes ``version`` (already stored) the one :meth:`load` returns by default."""
        wanted = ModelVersion(version)
        if wanted not in self.versions(name):
            raise UnknownModel(f"model {name!r} has no version {wanted}")
        config = replace(self.config(name), current_version=wanted)
        _atomic_write(self._model_dir(name) / CONFIG_FILE, tomli_w.dumps(config.to_toml()).encode())

    def _model_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UnknownModel(f"model name {name!r} is not [a-z0-9][a-z0-9._-]{{0,63}}")
        return self.root / name


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def seeded(config: ModelConfig, seed: int = 0) -> LoadedModel:
    """A model with seeded random weights (benchmarks, tests): not trained, and said so."""
    module = zoo.build(
        config.architecture, config.input_shape, config.num_classes, dict(config.options), seed=seed
    )
    return LoadedModel.from_module(config, module)
