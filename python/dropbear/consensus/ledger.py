"""The replica's durable-storage seam: what must survive a crash, and an in-memory ledger.

The replica calls the ledger synchronously, *before* it emits the actions that depend on
it: its view before a VIEW-CHANGE, each statement before it is sent signed (so a restarted
node never signs a conflicting one), each prepared proof before its COMMIT, and each
committed batch before the replies. A SQLite ledger implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dropbear.wire import Checkpoint, CommittedBatch, Kind, PreparedProof, Statement

DEFERRED_SYNC_KINDS = frozenset({Kind.PRE_PREPARE, Kind.PREPARE})
"""Signed statements a ledger may make durable with its next fsync instead of at once: a
crash of the node's process keeps them (they are written), only one of its machine can lose
them, and then the replica signs no statement of these kinds again in the views concerned
(``DurableState.lost_unsynced``). A ledger may defer the fsync of committed batches too: each
was prepared, and its prepared proof fsynced, at the 2f+1 nodes whose COMMITs certify it, so
a view change or a catch-up brings it back. Every other write (prepared proofs before a
COMMIT, views, checkpoints) is fsynced before what depends on it is sent."""


@dataclass
class DurableState:
    """What a restarting replica reloads besides the committed batches."""

    view: int = 0
    signed: list[Statement] = field(default_factory=list)
    prepared: list[PreparedProof] = field(default_factory=list)
    stable_proof: tuple[Checkpoint, ...] = ()
    """The latest stable checkpoint's 2f+1 CHECKPOINTs (empty: none yet)."""
    lost_unsynced: bool = False
    """Signed PRE-PREPAREs and PREPAREs whose fsync was deferred may be missing from
    ``signed``, and the last committed batches from the ledger (the machine went down): the
    replica signs none of those statements again in those views."""


class Ledger(Protocol):
    def append_committed(self, batch: CommittedBatch) -> None:
        """Stores committed batch ``batch.seq``; batches arrive in sequence order."""

    def committed(self, start: int, stop: int) -> list[CommittedBatch]:
        """The committed batches with ``start <= seq < stop`` that are stored, in order."""

    def last_seq(self) -> int:
        """The highest committed sequence number stored (0 when none)."""

    def save_view(self, view: int) -> None: ...

    def save_signed(self, statement: Statement) -> None:
        """Remembers a statement this node is about to sign."""

    def save_prepared(self, proof: PreparedProof) -> None: ...

    def save_checkpoint(self, proof: tuple[Checkpoint, ...]) -> None:
        """Remembers a stable checkpoint (its 2f+1 matching CHECKPOINTs)."""

    def truncate(self, stable_seq: int) -> None:
        """Forgets signed statements and prepared proofs at or below ``stable_seq``."""

    def save_snapshot(self, seq: int, state: bytes) -> None:
        """Stores the encoded group state after committed batch ``seq``, written with that
        batch (as durable as it); the replica restarts from the latest one."""

    def snapshot(self) -> tuple[int, bytes] | None:
        """The latest stored ``(seq, encoded state)``, or None (none, or not intact)."""

    def load(self) -> DurableState: ...


class MemoryLedger:
    """A :class:`Ledger` in memory: survives a simulated crash (a new Replica), not a real
    one. Keeps every committed batch (the simulator's runs are short)."""

    def __init__(self) -> None:
        self._batches: dict[int, CommittedBatch] = {}
        self._state = DurableState()
        self._snapshot: tuple[int, bytes] | None = None

    def append_committed(self, batch: CommittedBatch) -> None:
        assert batch.seq == self.last_seq() + 1, (batch.seq, self.last_seq())
        self._batches[batch.seq] = batch

    def committed(self, start: int, stop: int) -> list[CommittedBatch]:
        return [self._batches[s] for s in range(max(start, 1), stop) if s in self._batches]

    def last_seq(self) -> int:
        return len(self._batches)

    def save_view(self, view: int) -> None:
        self._state.view = max(self._state.view, view)

    def save_signed(self, statement: Statement) -> None:
        self._state.signed.append(statement)

    def save_prepared(self, proof: PreparedProof) -> None:
        self._state.prepared.append(proof)

    def save_checkpoint(self, proof: tuple[Checkpoint, ...]) -> None:
        self._state.stable_proof = tuple(proof)

    def truncate(self, stable_seq: int) -> None:
        self._state.signed = [s for s in self._state.signed if s.seq > stable_seq]
        self._state.prepared = [p for p in self._state.prepared if p.seq > stable_seq]

    def save_snapshot(self, seq: int, state: bytes) -> None:
        self._snapshot = (seq, state)

    def snapshot(self) -> tuple[int, bytes] | None:
        return self._snapshot

    def load(self) -> DurableState:
        return DurableState(
            self._state.view,
            list(self._state.signed),
            list(self._state.prepared),
            self._state.stable_proof,
        )
