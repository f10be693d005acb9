"""A test model group: deterministic keys and a manifest."""

from __future__ import annotations

from dataclasses import dataclass

from dropbear import _core
from dropbear.manifest import Manifest, NodeInfo


@dataclass(frozen=True)
class Group:
    manifest: Manifest
    node_keys: tuple[_core.SigningKey, ...]
    owner_keys: tuple[_core.SigningKey, ...]

    @property
    def group_id(self) -> bytes:
        return self.manifest.group_id


def seed(label: str) -> bytes:
    """The seed of the key named ``label``."""
    return _core.sha256(label.encode())


def key(label: str) -> _core.SigningKey:
    return _core.SigningKey.from_seed(seed(label))


def genesis_version(node: int) -> bytes:
    return _core.sha256(f"genesis model of node {node}".encode())


def make_group(n: int = 4, f: int | None = None, threshold: int = 0, name: str = "test") -> Group:
    f = (n - 1) // 3 if f is None else f
    node_keys = tuple(key(f"{name}/node/{i}") for i in range(n))
    owner_keys = tuple(key(f"{name}/owner/{i}") for i in range(n))
    nodes = tuple(
        NodeInfo(
            f"127.0.0.1:{7000 + i}",
            node_keys[i].public_key,
            owner_keys[i].public_key,
            f"model-{i}",
            genesis_version(i),
        )
        for i in range(n)
    )
    return Group(Manifest(name, f, nodes, threshold), node_keys, owner_keys)
