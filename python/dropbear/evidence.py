"""Accountability (DESIGN.md property 6): proof that one node signed two conflicting things.

Two kinds of conflict:

- *statements*: two signed statements (PRE-PREPARE, PREPARE, COMMIT or CHECKPOINT) of the
  same kind, node, view and seq with different roots or sizes. Each side is the 88-byte
  statement followed by its 64-byte signature.
- *votes*: two signed VOTES messages of one node and one model version that give one
  request different (label, score). Each side is the VOTES message's encoding.

An :class:`EvidenceBundle` (JSON, hex bytes) verifies on its own with the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from dropbear import _core
from dropbear.manifest import Manifest
from dropbear.wire import SIGNATURE_BYTES, Statement, Votes, WireError

ConflictKind = Literal["statements", "votes"]


class EvidenceError(ValueError):
    """Evidence that does not prove a conflict; the message says why."""


@dataclass(frozen=True)
class Evidence:
    """Two signed items by one node that cannot both be honest."""

    kind: ConflictKind
    first: bytes
    second: bytes

    @staticmethod
    def of_statements(a: Statement, sig_a: bytes, b: Statement, sig_b: bytes) -> Evidence:
        return Evidence("statements", a.encoded + sig_a, b.encoded + sig_b)

    @staticmethod
    def of_votes(a: Votes, b: Votes) -> Evidence:
        return Evidence("votes", a.encoded, b.encoded)

    def culprit(self, manifest: Manifest) -> int:
        """The node this evidence convicts; raises EvidenceError when it proves nothing."""
        try:
            if self.kind == "statements":
                return _statement_conflict(self.first, self.second, manifest)
            if self.kind == "votes":
                return _votes_conflict(self.first, self.second, manifest)
        except WireError as error:
            raise EvidenceError(f"undecodable evidence: {error}") from None
        raise EvidenceError(f"unknown evidence kind {self.kind!r}")

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "first": self.first.hex(), "second": self.second.hex()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Evidence:
        try:
            kind = data["kind"]
            if kind not in ("statements", "votes"):
                raise EvidenceError(f"unknown evidence kind {kind!r}")
            return Evidence(kind, bytes.fromhex(data["first"]), bytes.fromhex(data["second"]))
        except (KeyError, TypeError, ValueError) as error:
            raise EvidenceError(f"malformed evidence: {error!r}") from None


def _check_signature(manifest: Manifest, node: int, body: bytes, signature: bytes) -> None:
    if not 0 <= node < manifest.n:
        raise EvidenceError(f"node {node} is not in the group of {manifest.n}")
    if not _core.verify(manifest.node_key(node), body, signature):
        raise EvidenceError(f"signature of node {node} does not verify")


def _statement_conflict(first: bytes, second: bytes, manifest: Manifest) -> int:
    size = Statement.SIZE + SIGNATURE_BYTES
    if len(first) != size or len(second) != size:
        raise EvidenceError(f"statement evidence items must be {size} bytes")
    a, b = Statement.decode(first[: Statement.SIZE]), Statement.decode(second[: Statement.SIZE])
    for s in (a, b):
        if s.group_id != manifest.group_id:
            raise EvidenceError("statement of another group")
    if (a.kind, a.node, a.view, a.seq) != (b.kind, b.node, b.view, b.seq):
        raise EvidenceError("statements are about different slots or nodes")
    if (a.digest, a.size) == (b.digest, b.size):
        raise EvidenceError("statements agree")
    _check_signature(manifest, a.node, a.encoded, first[Statement.SIZE :])
    _check_signature(manifest, b.node, b.encoded, second[Statement.SIZE :])
    return a.node


def _votes_conflict(first: bytes, second: bytes, manifest: Manifest) -> int:
    a, b = Votes.decode(first), Votes.decode(second)
    if a.group_id != manifest.group_id or b.group_id != manifest.group_id:
        raise EvidenceError("VOTES of another group")
    if a.node != b.node or a.model_version != b.model_version:
        raise EvidenceError("VOTES of different nodes or model versions")
    outputs = {v.request: (v.label, v.score) for v in a.votes}
    if not any(v.request in outputs and outputs[v.request] != (v.label, v.score) for v in b.votes):
        raise EvidenceError("VOTES do not disagree on any request")
    _check_signature(manifest, a.node, a.body, a.signature)
    _check_signature(manifest, b.node, b.body, b.signature)
    return a.node


@dataclass(frozen=True)
class EvidenceBundle:
    """Evidence items of one group, exportable as JSON."""

    group_id: bytes
    items: tuple[Evidence, ...]

    def culprits(self, manifest: Manifest) -> set[int]:
        """The nodes convicted; raises EvidenceError if any item does not verify."""
        if self.group_id != manifest.group_id:
            raise EvidenceError("bundle of another group")
        return {item.culprit(manifest) for item in self.items}

    def to_json(self) -> str:
        return json.dumps(
            {"group_id": self.group_id.hex(), "items": [i.to_dict() for i in self.items]},
            indent=2,
        )

    @staticmethod
    def from_json(text: str) -> EvidenceBundle:
        try:
            data = json.loads(text)
            return EvidenceBundle(
                bytes.fromhex(data["group_id"]),
                tuple(Evidence.from_dict(i) for i in data["items"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EvidenceError(f"malformed evidence bundle: {error!r}") from None
