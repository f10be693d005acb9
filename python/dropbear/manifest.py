"""The group manifest: what a verifier needs, and the group id that names it.

The group id is the SHA-256 of the manifest's canonical encoding (docs/certificates.md):
``01 | 20 | name | f u16 | threshold u16 | node count u16 | nodes``, each node
``address | node key (32) | owner key (32) | model name | genesis model version (32)``;
texts are a u16 length and UTF-8.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from dropbear import _core
from dropbear.agreement import default_threshold
from dropbear.cached import cached_property
from dropbear.limits import MAX_ADDRESS_BYTES, MAX_NODES
from dropbear.wire import DIGEST_BYTES, KEY_BYTES, VERSION, Kind, Reader, WireError, Writer


class ManifestError(ValueError):
    """A manifest that is malformed or describes an impossible group."""


@dataclass(frozen=True)
class NodeInfo:
    """One node of the group: where it listens, its keys and the name of its model."""

    address: str
    node_key: bytes
    owner_key: bytes
    model: str
    model_version: bytes = bytes(32)
    """SHA-256 of the model's parameters at genesis; updates are ordered MODEL-UPDATEs."""


@dataclass(frozen=True)
class Manifest:
    """A model group: ``n >= 3f + 1`` nodes and the agreement threshold ``q``."""

    name: str
    f: int
    nodes: tuple[NodeInfo, ...]
    threshold: int = 0
    """q; 0 in the constructor means the default 2f+1."""

    def __post_init__(self) -> None:
        if self.threshold == 0:
            object.__setattr__(self, "threshold", default_threshold(self.f))
        n = len(self.nodes)
        if self.f < 0 or n < 3 * self.f + 1 or n > MAX_NODES:
            raise ManifestError(f"{n} nodes cannot tolerate f={self.f} (need 3f+1..{MAX_NODES})")
        if not 1 <= self.threshold <= n:
            raise ManifestError(f"threshold {self.threshold} outside 1..{n}")
        keys = [node.node_key for node in self.nodes]
        if len(set(keys)) != n:
            raise ManifestError("two nodes share a node key")
        for i, node in enumerate(self.nodes):
            host, _, port = node.address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ManifestError(f"node {i} address {node.address!r} is not host:port")
            for what, key in (("node", node.node_key), ("owner", node.owner_key)):
                try:
                    _core.VerifyingKey(key)
                except ValueError as error:
                    raise ManifestError(f"node {i} {what} key: {error}") from None
        try:
            self.encoded  # noqa: B018 - checks every length limit
        except WireError as error:
            raise ManifestError(str(error)) from None

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def quorum(self) -> int:
        """2f+1: signatures a certificate needs, votes an entry needs."""
        return 2 * self.f + 1

    def node_key(self, node: int) -> bytes:
        return self.nodes[node].node_key

    def owner_key(self, node: int) -> bytes:
        return self.nodes[node].owner_key

    def primary(self, view: int) -> int:
        """The primary of ``view``: ``view mod n``."""
        return view % self.n

    @cached_property
    def encoded(self) -> bytes:
        w = Writer()
        w.u8(VERSION)
        w.u8(Kind.MANIFEST)
        w.text(self.name)
        w.u16(self.f)
        w.u16(self.threshold)
        w.u16(self.n)
        for node in self.nodes:
            w.text(node.address, MAX_ADDRESS_BYTES)
            w.fixed(node.node_key, KEY_BYTES, "node key")
            w.fixed(node.owner_key, KEY_BYTES, "owner key")
            w.text(node.model)
            w.fixed(node.model_version, DIGEST_BYTES, "model version")
        return w.getvalue()

    @cached_property
    def group_id(self) -> bytes:
        """SHA-256 of the canonical encoding."""
        return _core.sha256(self.encoded)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """The manifest of a canonical encoding; WireError or ManifestError otherwise."""
        r = Reader(data)
        if r.u8("version") != VERSION or r.u8("kind") != Kind.MANIFEST:
            raise WireError("not a version-1 manifest")
        name, f, threshold = r.text("name"), r.u16("f"), r.u16("threshold")
        nodes = tuple(
            NodeInfo(
                r.text("address", MAX_ADDRESS_BYTES),
                r.fixed(KEY_BYTES, "node key"),
                r.fixed(KEY_BYTES, "owner key"),
                r.text("model"),
                r.fixed(DIGEST_BYTES, "model version"),
            )
            for _ in range(r.count("node count", MAX_NODES, width=2))
        )
        r.end("manifest")
        if threshold == 0:
            raise ManifestError("threshold 0 in an encoded manifest")
        return cls(name, f, nodes, threshold)

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form: keys as hex."""
        return {
            "name": self.name,
            "f": self.f,
            "threshold": self.threshold,
            "group_id": self.group_id.hex(),
            "nodes": [
                {
                    "address": n.address,
                    "node_key": n.node_key.hex(),
                    "owner_key": n.owner_key.hex(),
                    "model": n.model,
                    "model_version": n.model_version.hex(),
                }
                for n in self.nodes
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parses :meth:`to_dict`'s form; a ``group_id`` present must match."""
        try:
            nodes = tuple(
                NodeInfo(
                    str(n["address"]),
                    bytes.fromhex(n["node_key"]),
                    bytes.fromhex(n["owner_key"]),
                    str(n["model"]),
                    bytes.fromhex(n.get("model_version", "00" * 32)),
                )
                for n in data["nodes"]
            )
            manifest = cls(str(data["name"]), int(data["f"]), nodes, int(data.get("threshold", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"bad manifest: {error!r}") from None
        if "group_id" in data and data["group_id"] != manifest.group_id.hex():
            raise ManifestError(
                f"group_id {data['group_id']} does not match the manifest "
                f"({manifest.group_id.hex()})"
            )
        return manifest

    def save(self, path: str | Path) -> None:
        """Writes the manifest as TOML."""
        Path(path).write_text(tomli_w.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Reads a TOML manifest written by :meth:`save`."""
        try:
            return cls.from_dict(tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as error:
            raise ManifestError(f"{path}: {error}") from None
