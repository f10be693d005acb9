"""The durable ledger: one SQLite database (WAL mode) per node; see docs/ledger.md.

:class:`SqliteLedger` implements the replica's :class:`~dropbear.consensus.Ledger` seam
(committed batches, the node's own signed statements, prepared proofs, view, stable
checkpoints) and what the node adds from the replica's actions (where each certified request
sits in the log, by client and request id; the model-version history; evidence). A past
certificate is rebuilt from its committed batch when asked for (:meth:`SqliteLedger.certificate`),
not stored: the batch holds everything it is made of.

Durability: with ``synchronous="FULL"`` (the default) a commit fsyncs the WAL unless all it
wrote is signed PRE-PREPAREs and PREPAREs (:data:`DEFERRED_SYNC_KINDS`) or what executing a
batch writes (the committed batch, its answers and model versions). Those are written at
once (so they survive the node's process crashing: the OS has them) and fsynced with the next
commit that fsyncs: a prepared proof before its COMMIT, a view, a checkpoint. Only a crash of
the machine can lose them. A lost executed batch comes back from the prepared proofs that
2f+1 nodes fsynced before their COMMITs (and from the peers); a node whose machine went down
without a clean stop (:attr:`SqliteLedger.lost_unsynced`: another boot id, no clean close)
signs no PRE-PREPARE or PREPARE again in the views it may have signed them in (see
docs/ledger.md). With ``group_commit`` the writes of one replica event share one transaction
that the node commits with :meth:`sync` *before* it carries out any of that event's actions
(messages, replies); without it every write commits at once. A write that fails (full disk,
read-only file) raises :class:`LedgerError`; the node stops rather than send anything that
depends on it.

At open the file is checked (``PRAGMA quick_check``, schema version, group and node, the
hash chain over the committed batches after the latest state snapshot and their sequence
continuity); a corrupted or truncated file raises :class:`LedgerCorrupt` and is never used.
State snapshots (every ``limits.SNAPSHOT_INTERVAL`` batches) are where a restarted replica
starts from, so neither the open nor the restart reads the whole log; :func:`audit` does.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dropbear import _core
from dropbear.consensus.events import Deliver
from dropbear.consensus.ledger import DEFERRED_SYNC_KINDS, DurableState
from dropbear.evidence import Evidence
from dropbear.manifest import Manifest
from dropbear.wire import (
    Certificate,
    Checkpoint,
    CommittedBatch,
    PreparedProof,
    Reader,
    Statement,
    WireError,
    Writer,
    decode,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""Version 2 added the ``snapshots`` table; version 3 replaced the stored certificates by
the ``answers`` index (a certificate is rebuilt from its batch). Older ledgers are upgraded
at open, one way."""
UPGRADABLE_VERSIONS = (1, 2)
KEPT_SNAPSHOTS = 2
"""State snapshots a ledger keeps (the latest and the one before it)."""
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
GENESIS_CHAIN = bytes(32)
"""The hash chain's value before batch 1."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    view INTEGER NOT NULL,
    commit_root BLOB NOT NULL,
    tree_size INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    updates INTEGER NOT NULL,
    chain BLOB NOT NULL,
    encoded BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    client BLOB NOT NULL,
    request_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    leaf_index INTEGER NOT NULL,
    PRIMARY KEY (client, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS model_versions (
    seq INTEGER NOT NULL,
    node INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    version BLOB NOT NULL,
    PRIMARY KEY (node, counter)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    proof BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    first BLOB NOT NULL,
    second BLOB NOT NULL,
    UNIQUE (kind, first, second)
);
CREATE TABLE IF NOT EXISTS signed (
    kind INTEGER NOT NULL,
    view INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    statement BLOB NOT NULL,
    PRIMARY KEY (kind, view, seq)
);
CREATE TABLE IF NOT EXISTS prepared (
    seq INTEGER NOT NULL,
    view INTEGER NOT NULL,
    encoded BLOB NOT NULL,
    PRIMARY KEY (seq, view)
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY,
    chain BLOB NOT NULL,
    state BLOB NOT NULL,
    checksum BLOB NOT NULL
);
"""


class LedgerError(RuntimeError):
    """The ledger cannot be used or written (the message says why); a node stops on it."""

    fatal = True
    """Not just the connection whose frame caused it: the node stops (see dropbear.net)."""


class LedgerCorrupt(LedgerError):
    """The database file fails an integrity check; it is never used."""


def _boot_id() -> bytes:
    """This boot of the machine (Linux's random boot id); elsewhere a value that never
    matches, so that every restart counts as one after a machine crash unless closed cleanly."""
    try:
        return BOOT_ID_PATH.read_bytes().strip()
    except OSError:
        return os.urandom(16)


def chain_next(previous: bytes, seq: int, encoded: bytes) -> bytes:
    """The hash chain over committed batches: SHA-256(previous | seq u64 | SHA-256(batch))."""
    return _core.sha256(previous + struct.pack(">Q", seq) + _core.sha256(encoded))


def _encode_list(items: Sequence[bytes]) -> bytes:
    w = Writer()
    w.u32(len(items))
    for item in items:
        w.blob(item)
    return w.getvalue()


def _decode_list(data: bytes) -> list[bytes]:
    r = Reader(data)
    out = [r.blob("item") for _ in range(r.count("items", 1 << 20))]
    r.end("list")
    return out


def encode_prepared(proof: PreparedProof) -> bytes:
    w = Writer()
    proof.write(w)
    return w.getvalue()


def decode_prepared(data: bytes) -> PreparedProof:
    r = Reader(data)
    proof = PreparedProof.read(r)
    r.end("prepared proof")
    return proof


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    view: int
    chain: bytes
    encoded: bytes


class SqliteLedger:
    """A node's durable ledger in one SQLite file; see the module docstring."""

    def __init__(self, path: Path | str, *, group_id: bytes | None = None,
                 node: int | None = None, group_commit: bool = False,
                 max_pages: int | None = None, check: bool = True,
                 synchronous: str = "FULL", deferred_sync: bool = False) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise LedgerError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.path = Path(path)
        self.group_commit = group_commit
        self.deferred_sync = deferred_sync and group_commit
        """Whether DEFERRED_SYNC_KINDS statements and executed batches wait for the next
        fsync (a node's ledger: it records the boot and a clean close to tell when they may
        be lost)."""
        self._in_tx = False
        self._must_sync = False
        """The open transaction wrote something that its commit must fsync."""
        self._unsynced = False
        """Commits since the last fsync of the WAL (deferred ones)."""
        self._wal_fd: int | None = None
        self.lost_unsynced = False
        """Whether the machine went down since this ledger was last used without a clean
        close: signed statements whose fsync was deferred may be lost (see the module
        docstring); read at open."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        if new:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise LedgerError(f"ledger {self.path}: cannot create its directory: "
                                  f"{error}") from None
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None,
                                      check_same_thread=False)
        except sqlite3.Error as error:
            raise LedgerError(f"ledger {self.path}: cannot open: {error}") from None
        try:
            self._open(new, group_id, node, max_pages, check)
        except sqlite3.DatabaseError as error:
            self.db.close()
            text = str(error)
            if "readonly" in text or "unable to open" in text or "disk I/O" in text:
                raise LedgerError(f"ledger {self.path}: cannot write: {text}") from None
            raise LedgerCorrupt(f"ledger {self.path} is corrupted or truncated: {text}; "
                                "refusing to use it (restore it or remove it to resync "
                                "from the peers)") from None
        except LedgerError:
            self.db.close()
            raise

    # --- open and checks ---------------------------------------------------------------------

    def _open(self, new: bool, group_id: bytes | None, node: int | None,
              max_pages: int | None, check: bool) -> None:
        db = self.db
        if not new:
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise LedgerCorrupt(f"ledger {self.path} fails PRAGMA quick_check: "
                                    f"{row[0] if row else 'no answer'}; refusing to use it")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise LedgerError(f"ledger {self.path}: cannot switch to WAL mode (got {mode})")
        # In WAL mode NORMAL commits survive a crash of the process; the fsyncs that make
        # them survive the machine's are this class's (see _commit), not SQLite's.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        if max_pages is not None:
            db.execute(f"PRAGMA max_page_count={int(max_pages)}")
        if new:
            db.execute("BEGIN IMMEDIATE")
            for statement in _statements(SCHEMA):
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT INTO meta VALUES ('view', 0)")
            if group_id is not None:
                db.execute("INSERT INTO meta VALUES ('group_id', ?)", (group_id,))
            if node is not None:
                db.execute("INSERT INTO meta VALUES ('node', ?)", (node,))
            db.execute("COMMIT")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version not in (*UPGRADABLE_VERSIONS, SCHEMA_VERSION):
            raise LedgerCorrupt(f"ledger {self.path} has schema version {version!r}; this "
                                f"dropbear reads version {SCHEMA_VERSION} (and upgrades "
                                f"{', '.join(map(str, UPGRADABLE_VERSIONS))})")
        if group_id is not None and meta.get("group_id", group_id) != group_id:
            raise LedgerError(f"ledger {self.path} belongs to group "
                              f"{bytes(meta['group_id']).hex()[:16]}, not {group_id.hex()[:16]}")
        if node is not None and meta.get("node", node) != node:
            raise LedgerError(f"ledger {self.path} belongs to node {meta['node']}, not {node}")
        if version in UPGRADABLE_VERSIONS:
            self._upgrade()
        self._last, self._chain = self._check_chain() if check else self._tail()
        if self.deferred_sync:
            self._mark_open(meta)

    def _upgrade(self) -> None:
        """Brings a version 1 or 2 ledger to the current schema in one transaction: the
        tables it lacks (``snapshots``, ``answers``), and each stored certificate's place in
        the log copied into ``answers`` before the ``certificates`` table is dropped. One
        way: an older dropbear refuses the file afterwards."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        for statement in _statements(SCHEMA):
            db.execute(statement)
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                      "name = 'certificates'").fetchone():
            db.execute("INSERT OR IGNORE INTO answers SELECT client, request_id, seq, "
                       "leaf_index FROM certificates")
            db.execute("DROP TABLE certificates")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        db.execute("COMMIT")

    def _mark_open(self, meta: dict) -> None:
        """Reads whether deferred statements may have been lost (another boot, no clean
        close), then records this boot and an open (unclean) ledger, fsynced."""
        boot = _boot_id()
        stored = meta.get("boot_id")
        self.lost_unsynced = (stored is not None and bytes(stored) != boot
                              and meta.get("clean") != 1)
        with self._write("the open marker") as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_id', ?)", (boot,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', 0)")
        self.sync()

    def _tail(self) -> tuple[int, bytes]:
        row = self.db.execute("SELECT seq, chain FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS_CHAIN) if row is None else (row[0], bytes(row[1]))

    def _check_chain(self) -> tuple[int, bytes]:
        """Recomputes the hash chain and checks sequence continuity: from the latest intact
        state snapshot (whose row holds the chain value at its batch, see
        :meth:`save_snapshot`), or from 1. ``dropbear audit`` checks the whole chain."""
        expected_seq, chain = 1, GENESIS_CHAIN
        latest = self._latest_snapshot()
        if latest is not None:
            row = self.db.execute("SELECT chain FROM batches WHERE seq = ?",
                                  (latest[0],)).fetchone()
            if row is None or bytes(row[0]) != latest[1]:
                raise LedgerCorrupt(f"ledger {self.path}: the state snapshot at batch "
                                    f"{latest[0]} does not match the batch stored there; "
                                    "refusing to use it")
            expected_seq, chain = latest[0] + 1, latest[1]
        for seq, stored, encoded in self.db.execute(
                "SELECT seq, chain, encoded FROM batches WHERE seq >= ? ORDER BY seq",
                (expected_seq,)):
            if seq != expected_seq:
                raise LedgerCorrupt(f"ledger {self.path}: committed batch {expected_seq} is "
                                    f"missing (next stored is {seq}); refusing to use it")
            chain = chain_next(chain, seq, bytes(encoded))
            if chain != bytes(stored):
                raise LedgerCorrupt(f"ledger {self.path}: the hash chain breaks at batch {seq} "
                                    "(its bytes were altered); refusing to use it")
            expected_seq += 1
        return expected_seq - 1, chain

    # --- transactions ------------------------------------------------------------------------

    @contextmanager
    def _write(self, what: str, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write, in the open group-commit transaction; ``sync``: its commit must
        fsync (every write but the DEFERRED_SYNC_KINDS statements and the execution step's
        rows)."""
        try:
            if not self._in_tx:
                self.db.execute("BEGIN IMMEDIATE")
                self._in_tx = True
            self._must_sync |= sync or not self.deferred_sync
            yield self.db
            if not self.group_commit:
                self._commit()
        except sqlite3.Error as error:
            self._rollback()
            raise LedgerError(f"ledger {self.path}: cannot store {what}: {error} (the node "
                              "stops: nothing that depends on it was sent)") from None

    def _commit(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False
            self._unsynced = True
        if self._unsynced and self._must_sync:  # (always set without deferred_sync)
            self._fsync_wal()
        self._must_sync = False

    def _fsync_wal(self) -> None:
        """Makes every commit so far durable against a crash of the machine."""
        if self.synchronous == "FULL":
            wal = f"{self.path}-wal"
            if self._wal_fd is None or os.fstat(self._wal_fd).st_ino != os.stat(wal).st_ino:
                if self._wal_fd is not None:
                    os.close(self._wal_fd)
                    self._wal_fd = None
                self._wal_fd = os.open(wal, os.O_RDONLY)
            os.fdatasync(self._wal_fd)
        self._unsynced = False

    def _rollback(self) -> None:
        self._must_sync = False
        if self._in_tx:
            self._in_tx = False
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._last, self._chain = self._tail()

    @property
    def pending(self) -> bool:
        """Whether writes wait for :meth:`sync` (an open group-commit transaction)."""
        return self._in_tx

    def sync(self) -> None:
        """Commits the open group-commit transaction, if any, and fsyncs the WAL unless
        everything written since the last fsync may wait (see ``_write``)."""
        try:
            self._commit()
        except sqlite3.Error as error:
            self._rollback()
            raise LedgerError(f"ledger {self.path}: cannot commit: {error} (the node stops: "
                              "nothing that depends on it was sent)") from None

    def close(self, *, commit: bool = True) -> None:
        """Commits (``commit``) or rolls back the open group-commit transaction, fsyncs
        every commit, records a clean close (with deferred_sync) and closes the file. A node
        that stops rolls back: the actions of that transaction were never carried out."""
        try:
            if not commit:
                self._rollback()
            if self.deferred_sync:
                with self._write("the clean close marker") as db:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', 1)")
            self.sync()
        finally:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self.db.close()

    # --- the replica's Ledger protocol --------------------------------------------------------

    def append_committed(self, batch: CommittedBatch) -> None:
        if batch.seq != self._last + 1:
            raise LedgerError(f"ledger {self.path}: batch {batch.seq} out of order "
                              f"(last stored is {self._last})")
        encoded = batch.encoded
        chain = chain_next(self._chain, batch.seq, encoded)
        first = batch.commits[0].statement if batch.commits else None
        with self._write(f"committed batch {batch.seq}", sync=False) as db:
            db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch.seq, batch.view, first.digest if first else b"",
                 first.size if first else 0, len(batch.batch.requests),
                 len(batch.batch.updates), chain, encoded))
            self._last, self._chain = batch.seq, chain

    def committed(self, start: int, stop: int) -> list[CommittedBatch]:
        """The stored batches in ``start..stop``, each checked against the hash chain (the
        open checks only those after the latest snapshot); they end before the first that
        fails, which is logged (``dropbear audit`` then names it)."""
        start = max(start, 1)
        rows = self.db.execute("SELECT seq, chain, encoded FROM batches WHERE seq >= ? AND "
                               "seq < ? ORDER BY seq", (start - 1, stop)).fetchall()
        chain = GENESIS_CHAIN if start == 1 else None
        out = []
        for seq, stored, encoded in rows:
            if seq == start - 1:
                chain = bytes(stored)
                continue
            encoded = bytes(encoded)
            if chain is None or chain_next(chain, seq, encoded) != bytes(stored):
                log.error("ledger %s: the hash chain breaks at batch %d; serving the batches "
                          "before it only (run dropbear audit)", self.path, seq)
                break
            try:
                out.append(CommittedBatch.decode(encoded))
            except WireError as error:
                log.error("ledger %s: batch %d does not decode: %s", self.path, seq, error)
                break
            chain = bytes(stored)
        return out

    def last_seq(self) -> int:
        return self._last

    def save_view(self, view: int) -> None:
        with self._write(f"view {view}") as db:
            db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'view'", (view,))

    def save_signed(self, statement: Statement) -> None:
        with self._write(f"signed {statement.kind.name} {statement.view}/{statement.seq}",
                         sync=statement.kind not in DEFERRED_SYNC_KINDS) as db:
            db.execute("INSERT OR IGNORE INTO signed VALUES (?, ?, ?, ?)",
                       (int(statement.kind), statement.view, statement.seq, statement.encoded))

    def save_prepared(self, proof: PreparedProof) -> None:
        with self._write(f"prepared proof {proof.view}/{proof.seq}") as db:
            db.execute("INSERT OR REPLACE INTO prepared VALUES (?, ?, ?)",
                       (proof.seq, proof.view, encode_prepared(proof)))

    def save_checkpoint(self, proof: Sequence[Checkpoint]) -> None:
        seq, digest = proof[0].seq, proof[0].root
        with self._write(f"stable checkpoint {seq}") as db:
            db.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?)",
                       (seq, digest, _encode_list([c.encoded for c in proof])))

    def save_snapshot(self, seq: int, state: bytes) -> None:
        """Stores the state after batch ``seq``, the last one appended, with the hash chain
        at that batch and a checksum over both; keeps the latest KEPT_SNAPSHOTS. Deferred
        like the batch itself (written in the same transaction)."""
        if seq != self._last:
            raise LedgerError(f"ledger {self.path}: snapshot of batch {seq}, but the last "
                              f"stored batch is {self._last}")
        chain = self._chain
        with self._write(f"state snapshot {seq}", sync=False) as db:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                       (seq, chain, state, _snapshot_checksum(seq, chain, state)))
            db.execute("DELETE FROM snapshots WHERE seq NOT IN (SELECT seq FROM snapshots "
                       "ORDER BY seq DESC LIMIT ?)", (KEPT_SNAPSHOTS,))

    def snapshot(self) -> tuple[int, bytes] | None:
        latest = self._latest_snapshot()
        return None if latest is None else (latest[0], latest[2])

    def snapshots(self) -> dict[int, tuple[bytes, bytes] | None]:
        """Every stored snapshot: ``seq -> (chain, state)``, or None where its checksum
        fails (for :func:`audit`)."""
        return {
            seq: ((bytes(chain), bytes(state))
                  if _snapshot_checksum(seq, bytes(chain), bytes(state)) == bytes(checksum)
                  else None)
            for seq, chain, state, checksum in self.db.execute(
                "SELECT seq, chain, state, checksum FROM snapshots")}

    def _latest_snapshot(self) -> tuple[int, bytes, bytes] | None:
        """``(seq, chain, state)`` of the latest snapshot whose checksum holds (a damaged
        one is passed over: the batches before it are all still stored)."""
        for seq, intact in sorted(self.snapshots().items(), reverse=True):
            if intact is not None:
                return seq, *intact
            log.warning("ledger %s: the state snapshot at batch %d fails its checksum; "
                        "passing it over", self.path, seq)
        return None

    def truncate(self, stable_seq: int) -> None:
        with self._write(f"truncation at {stable_seq}") as db:
            db.execute("DELETE FROM signed WHERE seq <= ?", (stable_seq,))
            db.execute("DELETE FROM prepared WHERE seq <= ?", (stable_seq,))

    def load(self) -> DurableState:
        db = self.db
        view = db.execute("SELECT value FROM meta WHERE key = 'view'").fetchone()[0]
        signed = [Statement.decode(bytes(r[0])) for r in
                  db.execute("SELECT statement FROM signed ORDER BY seq, view, kind")]
        prepared = [decode_prepared(bytes(r[0])) for r in
                    db.execute("SELECT encoded FROM prepared ORDER BY seq, view")]
        stable = self.stable_checkpoint()
        return DurableState(int(view), signed, prepared, stable, self.lost_unsynced)

    # --- what the node adds from the replica's actions ----------------------------------------

    def record_delivery(self, deliver: Deliver) -> None:
        """The model updates that took effect at batch ``deliver.seq``."""
        if not deliver.updates:
            return
        with self._write(f"model versions of batch {deliver.seq}", sync=False) as db:
            for u in deliver.updates:
                db.execute("INSERT OR IGNORE INTO model_versions VALUES (?, ?, ?, ?)",
                           (deliver.seq, u.node, u.counter, u.model_version))

    def save_answers(self, answers: Sequence[tuple[bytes, int, int, int]]) -> None:
        """Records where each certified request sits in the log, ``(client, request id, seq,
        leaf index)``, for :meth:`certificate` (one statement for all of them); a request's
        first stays. The certificates themselves are not stored: their batch is."""
        if not answers:
            return
        with self._write(f"{len(answers)} answers", sync=False) as db:
            db.executemany("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?)", answers)

    def save_evidence(self, evidence: Evidence) -> None:
        with self._write("evidence") as db:
            db.execute("INSERT OR IGNORE INTO evidence (kind, first, second) VALUES (?, ?, ?)",
                       (evidence.kind, evidence.first, evidence.second))

    # --- reading -------------------------------------------------------------------------------

    def answer(self, client: bytes, request_id: int) -> tuple[int, int] | None:
        """``(seq, leaf index)`` of a certified request, or None."""
        row = self.db.execute("SELECT seq, leaf_index FROM answers WHERE client = ? AND "
                              "request_id = ?", (client, request_id)).fetchone()
        return None if row is None else (row[0], row[1])

    def answers(self) -> Iterator[tuple[bytes, int, int, int]]:
        """``(client, request id, seq, leaf index)`` of every certified request, in log
        order."""
        for client, request_id, seq, leaf_index in self.db.execute(
                "SELECT client, request_id, seq, leaf_index FROM answers "
                "ORDER BY seq, leaf_index"):
            yield bytes(client), request_id, seq, leaf_index

    def answer_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def certificate(self, client: bytes, request_id: int,
                    manifest: Manifest) -> Certificate | None:
        """The certificate of a certified request, rebuilt from its committed batch (read
        against the hash chain, its COMMITs checked, its entries derived again): the one
        the node sent, up to which 2f+1 COMMITs it carries. None if the request is not in
        the log, or if its batch fails a check (logged; ``dropbear audit`` names it)."""
        from dropbear.certificate import build_many
        from dropbear.consensus.proofs import valid_committed

        where = self.answer(client, request_id)
        if where is None:
            return None
        seq, leaf_index = where
        batches = self.committed(seq, seq + 1)
        derived = valid_committed(manifest, batches[0]) if batches else None
        entry = (derived.entries[leaf_index]
                 if derived is not None and 0 <= leaf_index < len(derived.entries) else None)
        if entry is None or (entry.client, entry.request_id) != (client, request_id):
            log.error("ledger %s: request %d of client %s is recorded at batch %d leaf %d, "
                      "which does not hold it (run dropbear audit)", self.path, request_id,
                      client.hex()[:12], seq, leaf_index)
            return None
        cb = batches[0]
        return build_many(manifest.group_id, cb.view, cb.seq, derived.leaves,
                          [(leaf_index, entry)], cb.commits)[0]

    def stored_batches(self) -> Iterator[StoredBatch]:
        for seq, view, chain, encoded in self.db.execute(
                "SELECT seq, view, chain, encoded FROM batches ORDER BY seq"):
            yield StoredBatch(seq, view, bytes(chain), bytes(encoded))

    def chain_head(self) -> bytes:
        return self._chain

    def model_versions(self) -> list[tuple[int, int, int, bytes]]:
        """``(seq, node, counter, version)`` of every ordered model update, in order."""
        return [(s, n, c, bytes(v)) for s, n, c, v in self.db.execute(
            "SELECT seq, node, counter, version FROM model_versions ORDER BY seq, node")]

    def stable_checkpoint(self) -> tuple[Checkpoint, ...]:
        row = self.db.execute("SELECT proof FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return ()
        out = []
        for item in _decode_list(bytes(row[0])):
            message = decode(item)
            if not isinstance(message, Checkpoint):
                raise LedgerCorrupt(f"ledger {self.path}: a stored checkpoint proof holds a "
                                    f"{message.KIND.name}")
            out.append(message)
        return tuple(out)

    def checkpoints(self) -> list[tuple[int, tuple[Checkpoint, ...]]]:
        out = []
        for seq, proof in self.db.execute("SELECT seq, proof FROM checkpoints ORDER BY seq"):
            try:
                items = tuple(decode(i) for i in _decode_list(bytes(proof)))
            except WireError as error:
                raise LedgerCorrupt(f"ledger {self.path}: checkpoint {seq}: {error}") from None
            out.append((seq, items))  # type: ignore[arg-type]
        return out

    def evidence(self) -> list[Evidence]:
        return [Evidence(kind, bytes(a), bytes(b)) for kind, a, b in self.db.execute(
            "SELECT kind, first, second FROM evidence ORDER BY id")]

    def meta(self) -> dict[str, object]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())


def _snapshot_checksum(seq: int, chain: bytes, state: bytes) -> bytes:
    return _core.sha256(struct.pack(">Q", seq) + chain + state)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# --- audit -----------------------------------------------------------------------------------


@dataclass
class AuditReport:
    """What :func:`audit` found: counts, problems (the ledger is bad) and evidence."""

    batches: int = 0
    entries: int = 0
    answers: int = 0
    checkpoints: int = 0
    model_updates: int = 0
    problems: list[str] | None = None
    evidence: list[tuple[int | None, str, str]] | None = None
    """``(culprit node or None when the item proves nothing, kind, detail)``."""

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(ledger: SqliteLedger, manifest: Manifest) -> AuditReport:
    """Checks a ledger end to end against ``manifest``: every committed batch's 2f+1 COMMIT
    signatures and derived root, the sequence (re-executed from genesis), the hash chain
    (checked at open), each recorded answer (its batch and leaf certify that client's
    request, so the certificate rebuilt from them is the one sent), each stable checkpoint
    (signatures, and the state digest re-computed), the model-version history; and lists
    the evidence of misbehaving nodes."""
    from dropbear.consensus import proofs
    from dropbear.consensus.state import GroupState
    from dropbear.evidence import EvidenceError

    report = AuditReport(problems=[], evidence=[])
    problems = report.problems
    assert problems is not None and report.evidence is not None
    state = GroupState.genesis(manifest)
    certified: dict[tuple[bytes, int], tuple[int, int]] = {}
    """(client, request id) -> (seq, leaf index) of each entry the re-execution certifies."""
    digests: dict[int, bytes] = {}
    updates: list[tuple[int, int, int, bytes]] = []
    expected, chain = 1, GENESIS_CHAIN
    snapshots = ledger.snapshots()
    for stored in ledger.stored_batches():
        if stored.seq != expected:
            problems.append(f"batch {expected} missing (next is {stored.seq})")
            break
        expected += 1
        chain = chain_next(chain, stored.seq, stored.encoded)
        if chain != stored.chain:
            problems.append(f"batch {stored.seq}: the hash chain breaks (its bytes or its "
                            "chain value were altered)")
            break
        try:
            cb = CommittedBatch.decode(stored.encoded)
        except WireError as error:
            problems.append(f"batch {stored.seq}: undecodable: {error}")
            break
        if (cb.seq, cb.view) != (stored.seq, stored.view):
            problems.append(f"batch {stored.seq}: its bytes say seq {cb.seq} view {cb.view}")
            break
        derived = proofs.valid_committed(manifest, cb)
        if derived is None:
            problems.append(f"batch {stored.seq}: not proven by 2f+1 valid matching COMMITs "
                            "of this group")
            break
        valid_entries, valid_updates = state.apply(derived, cb.seq, derived.root)
        for i in valid_entries:
            entry = derived.entries[i]
            certified.setdefault((entry.client, entry.request_id), (cb.seq, i))
        for i in valid_updates:
            u = derived.updates[i]
            updates.append((cb.seq, u.node, u.counter, u.model_version))
        digests[cb.seq] = state.digest
        snapshot = snapshots.pop(cb.seq, None)
        if snapshot is not None and snapshot != (chain, state.encode(manifest.group_id)):
            problems.append(f"state snapshot {cb.seq}: differs from the re-executed state or "
                            "the hash chain there")
        report.batches += 1
        report.entries += len(valid_entries)
    for seq in sorted(snapshots):
        problems.append(f"state snapshot {seq}: its checksum fails or its batch was not "
                        "re-executed")
    for client, request_id, seq, leaf_index in ledger.answers():
        report.answers += 1
        if certified.get((client, request_id)) != (seq, leaf_index):
            problems.append(f"answer of request {request_id} of client {client.hex()[:12]}: "
                            f"recorded at batch {seq} leaf {leaf_index}, which does not "
                            "certify it")
    for seq, proof in ledger.checkpoints():
        report.checkpoints += 1
        checks = proofs.checkpoint_checks(manifest, seq, proof)  # type: ignore[arg-type]
        if checks is None or _core.batch_verify(checks):
            problems.append(f"checkpoint {seq}: not 2f+1 valid matching CHECKPOINTs")
        elif seq in digests and proof[0].root != digests[seq]:
            problems.append(f"checkpoint {seq}: state digest differs from the re-executed one")
    history = ledger.model_versions()
    report.model_updates = len(history)
    if history != updates:
        problems.append(f"model-version history ({len(history)} updates) differs from the "
                        f"updates re-executed from the batches ({len(updates)})")
    for item in ledger.evidence():
        try:
            culprit = item.culprit(manifest)
            report.evidence.append((culprit, item.kind, "verifies"))
        except EvidenceError as error:
            report.evidence.append((None, item.kind, f"proves nothing: {error}"))
    return report
