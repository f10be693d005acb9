"""Checks of the signed proofs replicas exchange: prepared and committed batches,
checkpoints, VIEW-CHANGE, and the NEW-VIEW selection every replica recomputes.

Each check gathers all signatures of a proof into one :func:`_core.batch_verify` call.
"""

from __future__ import annotations

from collections.abc import Sequence

from dropbear import _core
from dropbear.consensus.state import BatchError, Derived, derive
from dropbear.manifest import Manifest
from dropbear.wire import (
    Batch,
    Checkpoint,
    CommittedBatch,
    Kind,
    PreparedProof,
    Statement,
    StatementMessage,
    ViewChange,
)


def _quorum_of(
    manifest: Manifest, messages: Sequence[StatementMessage], expected: Statement
) -> list[tuple[bytes, bytes, bytes]] | None:
    """The signature checks of ``messages`` if they are 2f+1 distinct nodes' copies of
    ``expected`` (node aside), else None."""
    nodes = {m.node for m in messages}
    if len(nodes) != len(messages) or len(nodes) < manifest.quorum:
        return None
    items = []
    for m in messages:
        s = m.statement
        if m.node >= manifest.n or s != Statement(
            expected.kind, expected.group_id, m.node, expected.view, expected.seq,
            expected.size, expected.digest,
        ):  # fmt: skip
            return None
        items.append(m.check_item(manifest.node_key(m.node)))
    return items


def committed_checks(
    manifest: Manifest, cb: CommittedBatch
) -> tuple[Derived, list[tuple[bytes, bytes, bytes]]] | None:
    """The derived batch and signature checks of a committed batch, or None if malformed."""
    try:
        derived = derive(cb.batch, manifest)
    except BatchError:
        return None
    expected = Statement(
        Kind.COMMIT, manifest.group_id, 0, cb.view, cb.seq, derived.size, derived.root
    )
    items = _quorum_of(manifest, cb.commits, expected)
    return None if items is None else (derived, items)


def valid_committed(manifest: Manifest, cb: CommittedBatch) -> Derived | None:
    """The derived batch if ``cb`` carries 2f+1 valid matching COMMITs, else None."""
    checked = committed_checks(manifest, cb)
    if checked is None or _core.batch_verify(checked[1]):
        return None
    return checked[0]


def checkpoint_checks(
    manifest: Manifest, seq: int, proof: Sequence[Checkpoint]
) -> list[tuple[bytes, bytes, bytes]] | None:
    """Signature checks of a stable-checkpoint proof for ``seq`` (empty proof for seq 0)."""
    if seq == 0:
        return [] if not proof else None
    if not proof:
        return None
    first = proof[0].statement
    expected = Statement(Kind.CHECKPOINT, manifest.group_id, 0, 0, seq, 0, first.digest)
    return _quorum_of(manifest, proof, expected)


def prepared_checks(
    manifest: Manifest, proof: PreparedProof
) -> tuple[Derived, list[tuple[bytes, bytes, bytes]]] | None:
    try:
        derived = derive(proof.batch, manifest)
    except BatchError:
        return None
    expected = Statement(
        Kind.PREPARE, manifest.group_id, 0, proof.view, proof.seq, derived.size, derived.root
    )
    items = _quorum_of(manifest, proof.prepares, expected)
    return None if items is None else (derived, items)


def valid_view_change(
    manifest: Manifest, vc: ViewChange, checkpoint_interval: int, window: int
) -> bool:
    """Whether ``vc`` is well formed and every signature in it verifies."""
    if vc.group_id != manifest.group_id or vc.node >= manifest.n:
        return False
    if vc.stable_seq % checkpoint_interval:
        return False
    items = [vc.check_item(manifest.node_key(vc.node))]
    checks = checkpoint_checks(manifest, vc.stable_seq, vc.checkpoint_proof)
    if checks is None:
        return False
    items += checks
    seqs = [p.seq for p in vc.prepared]
    if len(set(seqs)) != len(seqs):
        return False
    for proof in vc.prepared:
        if not vc.stable_seq < proof.seq <= vc.stable_seq + window:
            return False
        if proof.view >= vc.new_view:
            return False
        checked = prepared_checks(manifest, proof)
        if checked is None:
            return False
        items += checked[1]
    return not _core.batch_verify(items)


def select(view_changes: Sequence[ViewChange]) -> tuple[ViewChange, list[tuple[int, Batch]]]:
    """PBFT's NEW-VIEW rule: from the VIEW-CHANGE with the highest stable checkpoint on, each
    sequence number gets the batch prepared in the highest view, or the null batch."""
    base = max(view_changes, key=lambda vc: (vc.stable_seq, -vc.node))
    best: dict[int, PreparedProof] = {}
    for vc in view_changes:
        for proof in vc.prepared:
            if proof.seq > base.stable_seq and (
                proof.seq not in best or proof.view > best[proof.seq].view
            ):
                best[proof.seq] = proof
    top = max(best, default=base.stable_seq)
    return base, [
        (s, best[s].batch if s in best else Batch()) for s in range(base.stable_seq + 1, top + 1)
    ]
