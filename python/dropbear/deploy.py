"""A model group on disk: the manifest, the keys, and how ``dropbear init`` makes them.

Layout of a group directory (``dropbear init`` writes it, every other command reads it)::

    group.toml            the manifest (public: addresses, keys, models, f, threshold)
    keys/node-K.key       node K's signing key (hex seed; signs protocol messages)
    keys/owner-K.key      the key of node K's model owner (signs its model updates)
    keys/client.key       a client key for `dropbear infer`

Key files are created with mode 0600. In a real deployment each owner keeps its own
``node-K.key`` and ``owner-K.key`` on its own host; on loopback they share a directory.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from dropbear import _core
from dropbear.inference import ModelRepository
from dropbear.manifest import Manifest, NodeInfo

DEFAULT_GROUP_DIR = Path("dropbear-group")
DEFAULT_BASE_PORT = 7470
MANIFEST_FILE = "group.toml"


def key_path(group_dir: Path, role: str, index: int | None = None) -> Path:
    name = role if index is None else f"{role}-{index}"
    return Path(group_dir) / "keys" / f"{name}.key"


def write_key(path: Path, key: _core.SigningKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.seed().hex() + "\n")


def read_key(path: Path) -> _core.SigningKey:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"key file {path} does not exist (run `dropbear init`)") from None
    try:
        return _core.SigningKey.from_seed(bytes.fromhex(text))
    except ValueError as error:
        raise ValueError(f"key file {path} does not hold a 32-byte hex seed: {error}") from None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now on ``host`` (for tests and --base-port 0)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def init_group(
    group_dir: Path = DEFAULT_GROUP_DIR,
    *,
    f: int = 1,
    nodes: int | None = None,
    models_dir: Path = Path("models"),
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    base_port: int = DEFAULT_BASE_PORT,
    threshold: int = 0,
    name: str = "dropbear-local",
) -> Manifest:
    """Creates keys and a manifest for ``nodes`` (default 3f+1) nodes on ``host``.

    Models are taken from the repository in name order (cycled when there are more nodes
    than models); each node's genesis version is its model's current version.
    ``base_port`` 0 picks free ports.
    """
    n = nodes if nodes is not None else 3 * f + 1
    repository = ModelRepository(models_dir)
    names = models or repository.names()
    if not names:
        raise ValueError(f"no models in {models_dir}; train one with `dropbear train`")
    ports = free_ports(n, host) if base_port == 0 else [base_port + i for i in range(n)]
    infos = []
    for i in range(n):
        node_key, owner_key = _core.SigningKey.generate(), _core.SigningKey.generate()
        write_key(key_path(group_dir, "node", i), node_key)
        write_key(key_path(group_dir, "owner", i), owner_key)
        model = names[i % len(names)]
        version = repository.config(model).current_version
        if version is None:
            raise ValueError(f"model {model!r} has no current version in {models_dir}")
        infos.append(NodeInfo(f"{host}:{ports[i]}", node_key.public_key, owner_key.public_key,
                              model, bytes.fromhex(version)))
    write_key(key_path(group_dir, "client"), _core.SigningKey.generate())
    manifest = Manifest(name, f, tuple(infos), threshold)
    manifest.save(Path(group_dir) / MANIFEST_FILE)
    return manifest
