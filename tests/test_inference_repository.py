"""Canonical parameter bytes, model versions, the repository and the committed digit models."""

import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from dropbear.inference import (
    BadConfig,
    CorruptModel,
    ModelConfig,
    ModelRepository,
    ModelVersion,
    Preprocessing,
    UnknownModel,
    seeded,
)
from dropbear.inference import parameters as fmt
from dropbear.inference.train import MIN_TEST_ACCURACY, load_digits_split, predict_labels
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ModelRepository(ROOT / "models")
TINY = ModelConfig(
    name="tiny-mlp",
    architecture="mlp",
    input_shape=(8, 8, 1),
    labels=tuple("0123456789"),
    options={"hidden": [8]},
    preprocessing=Preprocessing(scale=1 / 16),
)


# --- canonical bytes -----------------------------------------------------------------------


def test_encoding_is_the_documented_layout():
    data = fmt.encode({"b": np.array([1.5], np.float32), "a": np.zeros((2, 1), np.float32)})
    expected = (
        b"DBPARAM1"
        + struct.pack("<I", 2)
        + struct.pack("<H", 1) + b"a" + struct.pack("<BBII", 1, 2, 2, 1) + bytes(8)
        + struct.pack("<H", 1) + b"b" + struct.pack("<BBI", 1, 1, 1) + struct.pack("<f", 1.5)
    )  # fmt: skip
    assert data == expected
    assert ModelVersion.of(data) == hashlib.sha256(expected).hexdigest()


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)
floats = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(names, shapes, max_size=5), st.data())
def test_decode_inverts_encode_and_encoding_is_unique(spec, data):
    params = {
        name: np.array(
            data.draw(st.lists(floats, min_size=int(np.prod(s)), max_size=int(np.prod(s)))),
            dtype=np.float32,
        ).reshape(s)
        for name, s in spec.items()
    }
    encoded = fmt.encode(params)
    decoded = fmt.decode(encoded)
    assert set(decoded) == set(params)
    for name in params:
        assert decoded[name].tobytes() == params[name].tobytes()
    assert fmt.encode(decoded) == encoded


def _tensor(name: bytes, value: float = 0.0, dtype: int = 1) -> bytes:
    return (
        struct.pack("<H", len(name))
        + name
        + struct.pack("<BBI", dtype, 1, 1)
        + struct.pack("<f", value)
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"NOTPARAM" + bytes(4), "does not start with"),
        (b"DBPARAM1" + bytes(2), "ends inside the tensor count"),
        (b"DBPARAM1" + struct.pack("<I", 1), "ends inside tensor 0's name length"),
        (b"DBPARAM1" + struct.pack("<I", 0) + b"x", "1 bytes after the last tensor"),
        (b"DBPARAM1" + struct.pack("<I", 2) + _tensor(b"b") + _tensor(b"a"), "not after"),
        (b"DBPARAM1" + struct.pack("<I", 2) + _tensor(b"a") + _tensor(b"a"), "not after"),
        (b"DBPARAM1" + struct.pack("<I", 1) + _tensor(b"a", dtype=2), "dtype code 2"),
        (b"DBPARAM1" + struct.pack("<I", 1) + _tensor(b"a", float("nan")), "NaN or inf"),
        (b"DBPARAM1" + struct.pack("<I", 1) + _tensor(b"\xff"), "not UTF-8"),
        (b"DBPARAM1" + struct.pack("<I", 10**6), "over 4096"),
    ],
)
def test_non_canonical_bytes_are_refused(data, message):
    with pytest.raises(CorruptModel, match=message):
        fmt.decode(data)


def test_model_version_is_64_lowercase_hex():
    v = ModelVersion("ab" * 32)
    assert v.digest == bytes([0xAB] * 32)
    for bad in ["AB" * 32, "ab" * 31, "zz" * 32, ""]:
        with pytest.raises(ValueError, match="not 64 lowercase hex"):
            ModelVersion(bad)


# --- repository ----------------------------------------------------------------------------


def test_save_then_load_verifies_and_round_trips(tmp_path):
    repo = ModelRepository(tmp_path)
    model = seeded(TINY, seed=4)
    version = repo.save(model, training={"note": "seeded, untrained"})
    assert version == model.version
    assert repo.names() == ["tiny-mlp"]
    assert repo.versions("tiny-mlp") == [version]
    path = tmp_path / "tiny-mlp" / version / "parameters.bin"
    assert ModelVersion.of(path.read_bytes()) == version
    loaded = repo.load("tiny-mlp")
    assert loaded.version == version and loaded.config.current_version == version
    x = np.ones((2, 8, 8, 1), np.float32)
    assert np.array_equal(np.asarray(loaded.module(x)), np.asarray(model.module(x)))


def test_current_version_and_older_versions(tmp_path):
    repo = ModelRepository(tmp_path)
    first = repo.save(seeded(TINY, seed=1))
    second = repo.save(seeded(TINY, seed=2), make_current=False)
    assert repo.load("tiny-mlp").version == first
    assert repo.load("tiny-mlp", second).version == second
    repo.set_current("tiny-mlp", second)
    assert repo.load("tiny-mlp").version == second


def test_tampered_parameter_file_is_refused(tmp_path):
    repo = ModelRepository(tmp_path)
    version = repo.save(seeded(TINY))
    path = tmp_path / "tiny-mlp" / version / "parameters.bin"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptModel, match=f"not to its version {version}"):
        repo.load("tiny-mlp")


def test_parameters_of_another_architecture_are_refused(tmp_path):
    repo = ModelRepository(tmp_path)
    other = seeded(ModelConfig(**{**TINY.__dict__, "options": {"hidden": [9]}}))
    data = fmt.encode(other.parameters)
    version = ModelVersion.of(data)
    repo.save(seeded(TINY))
    (tmp_path / "tiny-mlp" / version).mkdir()
    (tmp_path / "tiny-mlp" / version / "parameters.bin").write_bytes(data)
    with pytest.raises(
        CorruptModel, match="has shape \\[9, 10\\], the architecture needs \\[8, 10\\]"
    ):
        repo.load("tiny-mlp", version)


def test_unknown_model_and_version(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.save(seeded(TINY))
    with pytest.raises(UnknownModel, match="model 'nope' is not in"):
        repo.load("nope")
    with pytest.raises(UnknownModel, match="has no version " + "0" * 64):
        repo.load("tiny-mlp", "0" * 64)
    with pytest.raises(UnknownModel, match="not 64 lowercase hex"):
        repo.load("tiny-mlp", "latest")
    with pytest.raises(UnknownModel, match="is not \\[a-z0-9\\]"):
        repo.load("../etc")


def test_bad_config_is_named(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.save(seeded(TINY))
    config = tmp_path / "tiny-mlp" / "config.toml"
    text = config.read_text()
    config.write_text(text.replace('architecture = "mlp"', 'architecture = "mlp"\ncolour = 1'))
    with pytest.raises(BadConfig, match="unknown fields \\['colour'\\]"):
        repo.load("tiny-mlp")
    config.write_text(text.replace("top_k = 3", "top_k = 11"))
    with pytest.raises(BadConfig, match="top_k 11 is not in 1..10"):
        repo.load("tiny-mlp")
    config.write_text("not toml [")
    with pytest.raises(BadConfig, match="not valid TOML"):
        repo.load("tiny-mlp")


def test_saving_another_architecture_under_a_name_is_refused(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.save(seeded(TINY))
    other = seeded(ModelConfig(**{**TINY.__dict__, "options": {"hidden": [9]}}))
    with pytest.raises(BadConfig, match="stored with another configuration"):
        repo.save(other)


# --- the committed digit models ------------------------------------------------------------


def test_committed_models_are_accurate_small_and_heterogeneous(tmp_path):
    names = COMMITTED.names()
    assert len(names) >= 4
    digits = load_digits_split()
    assert (len(digits.x_train), len(digits.x_test)) == (1347, 450)
    predictions, architectures = [], set()
    for name in names:
        model = COMMITTED.load(name)  # recomputes and checks the SHA-256
        config = model.config
        assert config.input_shape == (8, 8, 1) and config.input_dtype == "float32"
        assert config.labels == tuple(str(d) for d in range(10))
        path = ROOT / "models" / name / model.version / "parameters.bin"
        assert path.stat().st_size < 1_000_000
        architectures.add(config.architecture)
        labels = predict_labels(config, model.module, digits.x_test)
        accuracy = float((labels == digits.y_test).mean())
        assert accuracy >= MIN_TEST_ACCURACY, (name, accuracy)
        predictions.append(labels)
    assert len(architectures) >= 3
    stacked = np.stack(predictions)
    assert (stacked != stacked[0]).any(), "every model predicts the same labels"
    # A copy of the repository loads the same versions (nothing depends on the path).
    shutil.copytree(ROOT / "models", tmp_path / "models")
    copy = ModelRepository(tmp_path / "models")
    assert [copy.load(n).version for n in names] == [COMMITTED.load(n).version for n in names]
