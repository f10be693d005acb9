"""SqliteLedger: the replica's durable seam on SQLite (issue 6), checked in-process.

The deterministic simulator drives real replicas whose ledgers are SQLite files; a crash
throws the replica and the connection away and reopens the file. Then: corruption and
truncation are detected at open, a full database refuses the write with a clear error and
loses nothing already stored, and a restarted node does not sign a conflicting PREPARE.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3
from pathlib import Path

import pytest
from dropbear import certificate
from dropbear.consensus import Broadcast, Replica, ReplicaConfig, Reply
from dropbear.consensus.events import Receive, Send
from dropbear.consensus.ledger import MemoryLedger
from dropbear.consensus.state import GroupState, derive
from dropbear.ledger import LedgerCorrupt, LedgerError, SqliteLedger, audit
from dropbear.wire import (
    Batch,
    CatchupRequest,
    Kind,
    Prepare,
    PrePrepare,
    Request,
    Statement,
    Vote,
    Votes,
)
from sim.group import key, make_group
from sim.world import SIM_CONFIG, World


def _sqlite_world(tmp_path: Path, seed: int, ledger: type[SqliteLedger] = SqliteLedger,
                  config: ReplicaConfig = SIM_CONFIG, **options) -> tuple[World, list[Path]]:
    """A simulated group whose nodes keep their ledgers in SQLite files; a restart reopens
    the file (a crash loses the replica and the connection, not the file). With
    ``group_commit`` in ``options`` a node commits after each event and before carrying out
    its actions, as ``dropbear node`` does."""
    world = World(seed, 4, clients=2, config=config)
    paths = [tmp_path / f"node-{i}.db" for i in range(4)]

    def open_ledger(index: int) -> SqliteLedger:
        return ledger(paths[index], group_id=world.manifest.group_id, node=index, **options)

    for node in world.nodes:
        node.ledger = open_ledger(node.index)
        node.replica = Replica(world.manifest, node.index, world.group.node_keys[node.index],
                               node.ledger, config)
    restart, run = world.restart, world._run

    def reopen_and_restart(index: int) -> None:
        node = world.nodes[index]
        node.ledger.db.close()  # the process died: its connection goes, the file stays
        node.ledger = open_ledger(index)
        restart(index)

    def commit_then_run(node, actions: list) -> None:
        node.ledger.sync()
        run(node, actions)

    world.restart = reopen_and_restart  # type: ignore[method-assign]
    if options.get("group_commit"):
        world._run = commit_then_run  # type: ignore[method-assign]
    return world, paths


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_crashes_with_sqlite_ledgers(tmp_path, seed):
    world, paths = _sqlite_world(tmp_path, seed)
    rng = random.Random(seed)
    for _ in range(3):
        victim = rng.randrange(4)
        world.at(rng.uniform(0.1, 2.5), lambda v=victim: world.crash(v, rng.uniform(0.2, 1.0)))
    for _ in range(24):
        client = rng.randrange(2)
        world.at(rng.uniform(0, 3.0), lambda c=client: world.submit(c))
    world.run_until(3.5)
    for node in world.nodes:
        if not node.up:
            world.restart(node.index)
    world.run_until(40.0, stop=world.all_certified)
    assert world.all_certified()
    world.run_until(world.now + 5.0)  # let stragglers catch up
    for node in world.nodes:
        node.ledger.close()
    ledgers = [SqliteLedger(p, group_id=world.manifest.group_id) for p in paths]
    top = min(lg.last_seq() for lg in ledgers)
    assert top >= 1
    # the same batch at every sequence number (the 2f+1 COMMITs proving it may differ)
    reference = [b.batch.encoded for b in ledgers[0].committed(1, top + 1)]
    for lg in ledgers[1:]:
        assert [b.batch.encoded for b in lg.committed(1, top + 1)] == reference
    heads = {lg.last_seq(): lg.chain_head() for lg in ledgers}
    assert len(heads) >= 1
    # Every certificate a client got is stored on some node... and verifies.
    for client in world.clients:
        for rid, cert in client.certified.items():
            assert cert.entry.request_id == rid
            certificate.verify(cert, world.manifest)


def _answer(cert):
    """What a node records of a certificate it sent: ``(client, request id, seq, leaf)``."""
    return (cert.entry.client, cert.entry.request_id, cert.seq, cert.leaf_index)


def test_a_certificate_is_rebuilt_from_its_batch_and_a_requests_first_answer_stays(tmp_path):
    world, paths = _sqlite_world(tmp_path, 6)
    for _ in range(5):
        world.at(0.1, lambda: world.submit(0))
    world.run_until(10.0, stop=world.all_certified)
    certs = list(world.clients[0].certified.values())
    assert len(certs) == 5
    world.run_until(world.now + 2.0)
    ledger = world.nodes[0].ledger
    ledger.save_answers([_answer(c) for c in certs])
    ledger.save_answers([])
    first = certs[0].entry
    assert ledger.answer(first.client, first.request_id) == (certs[0].seq, certs[0].leaf_index)
    later = dataclasses.replace(certs[0], seq=certs[0].seq + 7)
    ledger.save_answers([_answer(later)])
    ledger.sync()
    assert ledger.answer_count() == 5
    assert ledger.answer(first.client, first.request_id) == (certs[0].seq, certs[0].leaf_index)
    assert sorted(rid for _, rid, _, _ in ledger.answers()) == sorted(
        c.entry.request_id for c in certs)
    for cert in certs:
        rebuilt = ledger.certificate(cert.entry.client, cert.entry.request_id, world.manifest)
        assert rebuilt is not None
        certificate.verify(rebuilt, world.manifest)
        # The same entry at the same place under the same root; the 2f+1 COMMITs are the
        # ones this node stored, which may be another quorum than the replying node's.
        assert (rebuilt.entry, rebuilt.seq, rebuilt.leaf_index, rebuilt.root, rebuilt.proof) \
            == (cert.entry, cert.seq, cert.leaf_index, cert.root, cert.proof)
    assert ledger.certificate(first.client, 10**9, world.manifest) is None


def test_an_answer_that_points_at_another_entry_is_refused_and_audit_names_it(tmp_path):
    world, paths = _sqlite_world(tmp_path, 6)
    for _ in range(3):
        world.at(0.1, lambda: world.submit(0))
    world.run_until(10.0, stop=world.all_certified)
    world.run_until(world.now + 2.0)
    certs = sorted(world.clients[0].certified.values(), key=lambda c: c.entry.request_id)
    ledger = world.nodes[0].ledger
    ledger.save_answers([_answer(c) for c in certs])
    ledger.sync()
    assert audit(ledger, world.manifest).ok
    wrong = next(c for c in certs if (c.seq, c.leaf_index) != (certs[0].seq, certs[0].leaf_index))
    ledger.db.execute("UPDATE answers SET seq = ?, leaf_index = ? WHERE request_id = ?",
                      (wrong.seq, wrong.leaf_index, certs[0].entry.request_id))
    entry = certs[0].entry
    assert ledger.certificate(entry.client, entry.request_id, world.manifest) is None
    report = audit(ledger, world.manifest)
    assert any(f"answer of request {entry.request_id}" in p and "does not certify it" in p
               for p in report.problems), report.problems


def test_reopen_restores_view_signed_prepared_and_chain(tmp_path):
    world, paths = _sqlite_world(tmp_path, 5)
    for _ in range(6):
        world.at(0.1, lambda: world.submit(0))
    world.run_until(10.0, stop=world.all_certified)
    assert world.all_certified()
    ledger = world.nodes[2].ledger
    ledger.save_view(3)
    last, head = ledger.last_seq(), ledger.chain_head()
    state = ledger.load()
    ledger.db.close()
    again = SqliteLedger(paths[2])
    assert (again.last_seq(), again.chain_head()) == (last, head)
    loaded = again.load()
    assert loaded.view == 3
    assert loaded.signed == state.signed and loaded.prepared == state.prepared
    replica = Replica(world.manifest, 2, world.group.node_keys[2], again, SIM_CONFIG)
    assert replica.executed == last and replica.view == 3 and not replica.active


# --- integrity -----------------------------------------------------------------------------


NO_SNAPSHOTS = dataclasses.replace(SIM_CONFIG, snapshot_interval=1024)
"""The open checks the hash chain from the latest state snapshot on: these tests alter
batch 1, so they keep none (see the snapshot tests below)."""


def _filled(tmp_path: Path, config: ReplicaConfig = NO_SNAPSHOTS) -> tuple[World, Path]:
    world, paths = _sqlite_world(tmp_path, 9, config=config)
    for _ in range(10):
        world.at(0.1, lambda: world.submit(1))
    world.run_until(10.0, stop=world.all_certified)
    assert world.all_certified()
    for node in world.nodes:
        node.ledger.close()
    assert SqliteLedger(paths[0]).last_seq() >= 2
    return world, paths[0]


def test_altered_batch_bytes_break_the_hash_chain(tmp_path):
    _, path = _filled(tmp_path)
    db = sqlite3.connect(path)
    (encoded,) = db.execute("SELECT encoded FROM batches WHERE seq = 1").fetchone()
    altered = bytearray(encoded)
    altered[-1] ^= 0x01
    db.execute("UPDATE batches SET encoded = ? WHERE seq = 1", (bytes(altered),))
    db.commit()
    db.close()
    with pytest.raises(LedgerCorrupt, match="hash chain breaks at batch 1"):
        SqliteLedger(path)


def test_missing_batch_breaks_sequence_continuity(tmp_path):
    _, path = _filled(tmp_path)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM batches WHERE seq = 1")
    db.commit()
    db.close()
    with pytest.raises(LedgerCorrupt, match="committed batch 1 is missing"):
        SqliteLedger(path)


def test_truncated_file_is_refused(tmp_path):
    _, path = _filled(tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(LedgerCorrupt, match="corrupted or truncated|quick_check"):
        SqliteLedger(path)


def test_garbage_pages_are_refused(tmp_path):
    _, path = _filled(tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    rng = random.Random(4)
    for i in range(4096, len(data), 997):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerCorrupt):
        SqliteLedger(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "node-0.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(LedgerCorrupt, match="corrupted or truncated"):
        SqliteLedger(path)


def test_another_groups_or_nodes_file_is_refused(tmp_path):
    path = tmp_path / "n.db"
    SqliteLedger(path, group_id=bytes(32), node=1).close()
    with pytest.raises(LedgerError, match="belongs to group"):
        SqliteLedger(path, group_id=b"\x01" * 32, node=1)
    with pytest.raises(LedgerError, match="belongs to node 1"):
        SqliteLedger(path, group_id=bytes(32), node=2)


# --- state snapshots: a restart replays only the batches after the latest one ---------------

SNAPSHOT_EVERY_2 = dataclasses.replace(SIM_CONFIG, snapshot_interval=2)


class CountingLedger(SqliteLedger):
    """A SqliteLedger that records the batch ranges read from it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: list[tuple[int, int]] = []

    def committed(self, start: int, stop: int):
        self.read.append((start, stop))
        return super().committed(start, stop)


def _many_batches(tmp_path: Path) -> tuple[World, Path]:
    """Node 0's closed ledger after 14 requests sent one at a time (about one batch each),
    with a snapshot every 2 batches."""
    world, paths = _sqlite_world(tmp_path, 11, config=SNAPSHOT_EVERY_2)
    for i in range(14):
        world.at(0.15 * i, lambda: world.submit(0))
    world.run_until(2.5)  # all sent (all_certified holds between two of them)
    world.run_until(20.0, stop=world.all_certified)
    assert world.all_certified()
    for node in world.nodes:
        node.ledger.close()
    assert SqliteLedger(paths[0]).last_seq() >= 8
    return world, paths[0]


def _restart(world: World, ledger: SqliteLedger) -> Replica:
    return Replica(world.manifest, 0, world.group.node_keys[0], ledger, SNAPSHOT_EVERY_2)


def _full_replay_state(world: World, path: Path, tmp_path: Path) -> bytes:
    """The state a restart gets by replaying every batch (a copy of the file, no snapshots)."""
    copy = tmp_path / "full.db"
    db = sqlite3.connect(path)
    db.execute("VACUUM INTO ?", (str(copy),))
    db.close()
    db = sqlite3.connect(copy)
    db.execute("DELETE FROM snapshots")
    db.commit()
    db.close()
    ledger = CountingLedger(copy)
    replica = _restart(world, ledger)
    assert ledger.read[0][0] == 1
    return replica.state.encode(world.manifest.group_id)


def test_a_restart_rebuilds_from_the_latest_snapshot_and_replays_only_what_follows(tmp_path):
    world, path = _many_batches(tmp_path)
    ledger = CountingLedger(path)
    last = ledger.last_seq()
    seq, _ = ledger.snapshot()
    assert seq == last - last % 2
    kept = [r[0] for r in ledger.db.execute("SELECT seq FROM snapshots ORDER BY seq")]
    assert kept == [seq - 2, seq]  # KEPT_SNAPSHOTS
    replica = _restart(world, ledger)
    assert ledger.read == ([(seq + 1, last + 1)] if seq < last else [])
    assert replica.executed == last
    assert replica.state.encode(world.manifest.group_id) == _full_replay_state(world, path,
                                                                              tmp_path)


def test_a_snapshot_that_fails_its_checksum_is_passed_over(tmp_path):
    world, path = _many_batches(tmp_path)
    db = sqlite3.connect(path)
    (seq, state), (previous,) = (
        db.execute("SELECT seq, state FROM snapshots ORDER BY seq DESC").fetchone(),
        db.execute("SELECT min(seq) FROM snapshots").fetchone())
    damaged = bytearray(state)
    damaged[40] ^= 0x01
    db.execute("UPDATE snapshots SET state = ? WHERE seq = ?", (bytes(damaged), seq))
    db.commit()
    db.close()
    ledger = CountingLedger(path)
    assert ledger.snapshot()[0] == previous
    replica = _restart(world, ledger)
    assert ledger.read[0][0] == previous + 1
    assert replica.state.encode(world.manifest.group_id) == _full_replay_state(world, path,
                                                                              tmp_path)


def test_a_snapshot_that_does_not_match_its_batch_is_refused(tmp_path):
    from dropbear.ledger import _snapshot_checksum

    _, path = _many_batches(tmp_path)
    db = sqlite3.connect(path)
    seq, state = db.execute("SELECT seq, state FROM snapshots ORDER BY seq DESC").fetchone()
    other = bytes(32)  # a chain value no batch has, with a checksum that holds
    db.execute("UPDATE snapshots SET chain = ?, checksum = ? WHERE seq = ?",
               (other, _snapshot_checksum(seq, other, bytes(state)), seq))
    db.commit()
    db.close()
    with pytest.raises(LedgerCorrupt, match=f"snapshot at batch {seq} does not match"):
        SqliteLedger(path)


def test_with_snapshots_the_open_checks_the_chain_after_the_latest_and_audit_all_of_it(
        tmp_path):
    from dropbear.ledger import audit

    world, path = _many_batches(tmp_path)
    db = sqlite3.connect(path)  # keep the earlier snapshot only: batches follow it
    db.execute("DELETE FROM snapshots WHERE seq = (SELECT max(seq) FROM snapshots)")
    db.commit()
    db.close()
    ledger = SqliteLedger(path)
    last, (seq, _) = ledger.last_seq(), ledger.snapshot()
    ledger.close()
    assert 1 < seq < last

    def alter(at: int) -> None:
        db = sqlite3.connect(path)
        (encoded,) = db.execute("SELECT encoded FROM batches WHERE seq = ?", (at,)).fetchone()
        altered = bytearray(encoded)
        altered[-1] ^= 0x01
        db.execute("UPDATE batches SET encoded = ? WHERE seq = ?", (bytes(altered), at))
        db.commit()
        db.close()

    alter(1)  # before the snapshot: the open no longer reads it; the audit does
    report = audit(SqliteLedger(path), world.manifest)
    assert not report.ok and any("batch 1" in p for p in report.problems)
    alter(last)  # after it: the open refuses the file
    with pytest.raises(LedgerCorrupt, match=f"hash chain breaks at batch {last}"):
        SqliteLedger(path)


def test_catch_up_serves_the_batches_before_the_first_altered_one(tmp_path):
    world, path = _many_batches(tmp_path)
    db = sqlite3.connect(path)
    (encoded,) = db.execute("SELECT encoded FROM batches WHERE seq = 3").fetchone()
    db.execute("UPDATE batches SET encoded = ? WHERE seq = 3", (bytes(encoded)[:-5],))
    db.commit()
    db.close()
    ledger = SqliteLedger(path)  # batch 3 lies before the latest snapshot: the open passes
    assert [cb.seq for cb in ledger.committed(1, 10)] == [1, 2]
    assert ledger.committed(4, 6) != []  # chained from batch 3's stored chain value
    replica = _restart(world, ledger)
    actions = replica.handle(Receive(1, CatchupRequest(world.manifest.group_id, 1, 1).signed(
        world.group.node_keys[1])))  # answered from batches 1-2, not stopped by batch 3
    [answer] = [a.message for a in actions if isinstance(a, Send)]
    assert [cb.seq for cb in answer.batches] == [1, 2]
    report = audit(ledger, world.manifest)
    assert any("batch 3: the hash chain breaks" in p for p in report.problems)


def test_audit_checks_the_chain_values_and_each_snapshot_against_the_replay(tmp_path):
    from dropbear.ledger import _snapshot_checksum

    world, path = _many_batches(tmp_path)
    db = sqlite3.connect(path)
    seq, chain, state = db.execute(
        "SELECT seq, chain, state FROM snapshots ORDER BY seq DESC").fetchone()
    other = GroupState.decode(bytes(state), world.manifest)
    other.clients.move_to_end(next(iter(other.clients)))  # another eviction order
    forged = other.encode(world.manifest.group_id) if len(other.clients) > 1 else (
        bytes(state)[:-1] + bytes([bytes(state)[-1] ^ 1]))
    db.execute("UPDATE snapshots SET state = ?, checksum = ? WHERE seq = ?",
               (forged, _snapshot_checksum(seq, bytes(chain), forged), seq))
    db.commit()
    db.close()
    report = audit(SqliteLedger(path), world.manifest)
    assert any(f"state snapshot {seq}: differs" in p for p in report.problems)
    db = sqlite3.connect(path)
    db.execute("UPDATE batches SET chain = ? WHERE seq = 1", (bytes(32),))
    db.commit()
    db.close()
    report = audit(SqliteLedger(path), world.manifest)
    assert any("batch 1: the hash chain breaks" in p for p in report.problems)


_VERSION_2_CERTIFICATES = """
CREATE TABLE certificates (
    client BLOB NOT NULL, request_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    leaf_index INTEGER NOT NULL, request BLOB NOT NULL, label INTEGER NOT NULL,
    reached INTEGER NOT NULL, encoded BLOB NOT NULL, PRIMARY KEY (client, request_id));
CREATE INDEX certificates_seq ON certificates (seq);
"""


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_ledger_is_upgraded_at_open_and_keeps_its_answers(tmp_path, version):
    """Version 1 lacked the snapshots table; versions 1 and 2 stored whole certificates,
    whose places in the log move to ``answers`` (the certificates are rebuilt from them)."""
    from dropbear.ledger import SCHEMA_VERSION

    world, paths = _sqlite_world(tmp_path, 6)
    for _ in range(3):
        world.at(0.1, lambda: world.submit(0))
    world.run_until(10.0, stop=world.all_certified)
    world.run_until(world.now + 2.0)
    certs = list(world.clients[0].certified.values())
    world.nodes[0].ledger.close()
    db = sqlite3.connect(paths[0])
    db.execute("DROP TABLE answers")
    db.executescript(_VERSION_2_CERTIFICATES)
    db.executemany("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [(c.entry.client, c.entry.request_id, c.seq, c.leaf_index, c.entry.request,
                     c.entry.label, int(c.entry.reached), c.encoded) for c in certs])
    if version == 1:
        db.execute("DROP TABLE snapshots")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.commit()
    db.close()
    ledger = SqliteLedger(paths[0])
    assert ledger.meta()["schema_version"] == SCHEMA_VERSION == 3
    tables = {r[0] for r in ledger.db.execute("SELECT name FROM sqlite_master")}
    assert "certificates" not in tables and {"answers", "snapshots"} <= tables
    assert ledger.answer_count() == len(certs) == 3
    for cert in certs:
        rebuilt = ledger.certificate(cert.entry.client, cert.entry.request_id, world.manifest)
        assert rebuilt is not None and rebuilt.entry == cert.entry
    assert audit(ledger, world.manifest).ok
    assert _restart(world, ledger).executed == ledger.last_seq()


def test_a_newer_ledger_is_refused(tmp_path):
    world, path = _filled(tmp_path)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(LedgerCorrupt, match="schema version 4; this dropbear reads version 3 "
                       r"\(and upgrades 1, 2\)"):
        SqliteLedger(path)


# --- full disk, read-only directory ---------------------------------------------------------


def test_full_database_refuses_the_write_and_loses_nothing(tmp_path):
    world, paths = _sqlite_world(tmp_path, 11)
    for _ in range(4):
        world.at(0.1, lambda: world.submit(0))
    world.run_until(10.0, stop=world.all_certified)
    source = world.nodes[1].ledger
    batches = source.committed(1, source.last_seq() + 1)
    assert len(batches) >= 2
    path = tmp_path / "full.db"
    SqliteLedger(path).close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    ledger = SqliteLedger(path, max_pages=pages + 1)  # room for about one page more
    stored = 0
    with pytest.raises(LedgerError, match="cannot store .*full"):
        for cb in batches:
            ledger.append_committed(cb)
            stored += 1
        for i in range(100_000):
            ledger.save_signed(Statement(Kind.PREPARE, bytes(32), 0, 1, 10**6 + i, 1,
                                         bytes(32)))
    assert ledger.last_seq() == stored
    ledger.db.close()
    again = SqliteLedger(path)
    assert again.last_seq() == stored
    assert [b.encoded for b in again.committed(1, stored + 1)] == \
        [b.encoded for b in batches[:stored]]


def test_replica_stops_before_replying_when_the_ledger_is_full(tmp_path):
    """The replica writes the batch before it emits the replies: a write that fails raises
    out of handle(), so no REPLY for an unstored batch ever leaves."""
    world, paths = _sqlite_world(tmp_path, 12)
    node = world.nodes[3]
    pages = node.ledger.db.execute("PRAGMA page_count").fetchone()[0]
    node.ledger.db.execute(f"PRAGMA max_page_count={pages}")
    errors: list[LedgerError] = []
    replied: list[int] = []
    run = world._run

    def guarded_deliver(target, event, epoch=None):
        if target is node:
            try:
                actions = node.replica.handle(event) if node.up else []
            except LedgerError as error:
                errors.append(error)
                node.up = False  # the node process stops
                return
            for action in actions:
                if isinstance(action, Reply):  # every reply is of a stored batch
                    assert action.tree.seq <= node.ledger.last_seq()
                    replied.append(action.tree.seq)
            run(node, actions)
            return
        original_deliver(target, event, epoch)

    original_deliver = world.deliver
    world.deliver = guarded_deliver  # type: ignore[method-assign]
    for _ in range(3):
        world.at(0.1, lambda: world.submit(0))
    world.run_until(10.0, stop=world.all_certified)
    assert world.all_certified()  # the other three carry on
    assert errors and "full" in str(errors[0])
    stored = node.ledger.last_seq()
    assert all(seq <= stored for seq in replied)
    assert stored < max(n.ledger.last_seq() for n in world.nodes)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_gives_a_clear_error(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(LedgerError, match="cannot"):
            SqliteLedger(directory / "node-0.db")
    finally:
        directory.chmod(0o700)


def test_read_only_database_refuses_writes_and_loses_nothing(tmp_path):
    """A database that turns read-only (as root cannot be kept out of a directory, the
    test uses SQLite's query_only switch): the next write raises LedgerError; what was
    stored stays."""
    path = tmp_path / "node-0.db"
    ledger = SqliteLedger(path)
    ledger.save_view(4)
    ledger.db.execute("PRAGMA query_only=ON")
    with pytest.raises(LedgerError, match="cannot store view 5: attempt to write a readonly"):
        ledger.save_view(5)
    ledger.db.close()
    assert SqliteLedger(path).load().view == 4


# --- no conflicting signature after a restart ---------------------------------------------


class _OneBackup:
    """Node 1 of a group of four, fed PRE-PREPAREs of one-request batches by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.group = make_group(4, name="ledger-prepare")
        self.manifest = self.group.manifest
        self.gid = self.manifest.group_id
        self.client = key("ledger-prepare/client")
        self.path = tmp_path / "node-1.db"

    def batch_for(self, data: bytes) -> Batch:
        manifest, gid = self.manifest, self.gid
        request = Request.create(self.client, gid, 1, "uint8", (1,), data)
        votes = tuple(
            Votes(gid, i, manifest.nodes[i].model_version,
                  (Vote(request.digest, 1, 0.9),)).signed(self.group.node_keys[i])
            for i in range(3))
        return Batch((request.header,), votes, ())

    def pre_prepare(self, batch: Batch) -> PrePrepare:
        derived = derive(batch, self.manifest)
        statement = Statement(Kind.PRE_PREPARE, self.gid, 0, 0, 1, derived.size, derived.root)
        return PrePrepare(statement, self.group.node_keys[0].sign(statement.encoded), batch)

    def open(self, **options) -> tuple[SqliteLedger, Replica]:
        ledger = SqliteLedger(self.path, group_id=self.gid, node=1, group_commit=True,
                              **options)
        replica = Replica(self.manifest, 1, self.group.node_keys[1], ledger)
        replica.start()
        return ledger, replica

    def killed_after_a_prepare(self, **options) -> None:
        """Signs a PREPARE for batch 1, commits it as the node does, then dies (kill -9)."""
        ledger, replica = self.open(**options)
        assert len(self.prepares(replica, b"\x01")) == 1
        ledger.sync()  # the node commits before it sends
        ledger.db.close()  # kill -9: the connection goes, the file stays

    def prepares(self, replica: Replica, data: bytes) -> list[Prepare]:
        from dropbear.consensus import Receive

        actions = replica.handle(Receive(0, self.pre_prepare(self.batch_for(data))))
        return [a.message for a in actions
                if isinstance(a, Broadcast) and isinstance(a.message, Prepare)]


def test_restarted_backup_does_not_sign_a_conflicting_prepare(tmp_path):
    node = _OneBackup(tmp_path)
    node.killed_after_a_prepare()
    ledger, replica = node.open()
    assert node.prepares(replica, b"\x02") == []
    # ... while the same batch again would be re-signed identically (nothing conflicts)
    same = node.prepares(replica, b"\x01")
    assert all(p.root == derive(node.batch_for(b"\x01"), node.manifest).root for p in same)


@pytest.fixture
def fsyncs(monkeypatch) -> list[int]:
    """Counts fdatasync calls (the ledger's fsyncs of its WAL)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def _boot(monkeypatch, tmp_path: Path, boot_id: str) -> None:
    path = tmp_path / "boot_id"
    path.write_text(boot_id + "\n")
    monkeypatch.setattr("dropbear.ledger.BOOT_ID_PATH", path)


def test_deferred_sync_fsyncs_a_prepared_proof_but_not_a_prepare(tmp_path, fsyncs, monkeypatch):
    _boot(monkeypatch, tmp_path, "boot-a")
    node = _OneBackup(tmp_path)
    ledger, replica = node.open(deferred_sync=True)
    assert not ledger.lost_unsynced
    fsyncs.clear()
    assert len(node.prepares(replica, b"\x01")) == 1
    ledger.sync()  # only a signed PREPARE: written, its fsync deferred
    assert fsyncs == []
    ledger.save_view(1)  # anything else is fsynced at its commit, with what came before
    ledger.sync()
    assert len(fsyncs) == 1
    ledger.sync()  # nothing new: no fsync
    assert len(fsyncs) == 1
    # Without deferred_sync (the default) the PREPARE's commit fsyncs as well.
    ledger.close()
    plain = SqliteLedger(tmp_path / "plain.db", group_commit=True)
    plain.save_signed(node.pre_prepare(node.batch_for(b"\x03")).statement)
    plain.sync()
    assert len(fsyncs) == 3  # close() above, and this commit
    plain.close()


def test_a_process_crash_keeps_a_deferred_prepare(tmp_path, monkeypatch):
    _boot(monkeypatch, tmp_path, "boot-a")
    node = _OneBackup(tmp_path)
    node.killed_after_a_prepare(deferred_sync=True)
    # Same boot: the OS kept the written, unsynced commit.
    ledger, replica = node.open(deferred_sync=True)
    assert not ledger.lost_unsynced
    assert node.prepares(replica, b"\x02") == []  # it knows what it signed


def test_after_a_machine_crash_a_backup_signs_no_prepare_in_that_view(tmp_path, monkeypatch):
    _boot(monkeypatch, tmp_path, "boot-a")
    node = _OneBackup(tmp_path)
    node.killed_after_a_prepare(deferred_sync=True)
    # The machine went down before the deferred fsync: the signed PREPARE is gone.
    with sqlite3.connect(node.path) as db:
        db.execute("DELETE FROM signed")
    _boot(monkeypatch, tmp_path, "boot-b")
    ledger, replica = node.open(deferred_sync=True)
    assert ledger.lost_unsynced
    # It cannot know what it signed in view 0, so it signs no PREPARE there at all...
    assert node.prepares(replica, b"\x02") == []
    assert node.prepares(replica, b"\x01") == []
    ledger.close()
    # ... and a clean close followed by another boot loses nothing: no abstention.
    _boot(monkeypatch, tmp_path, "boot-c")
    ledger, replica = node.open(deferred_sync=True)
    assert not ledger.lost_unsynced
    ledger.close()


def test_a_replica_after_a_machine_crash_signs_again_from_the_next_view():
    group = make_group(4, name="ledger-abstain")
    ledger = MemoryLedger()
    ledger.save_view(2)
    ledger.load = lambda: dataclasses.replace(MemoryLedger.load(ledger), lost_unsynced=True)
    replica = Replica(group.manifest, 1, group.node_keys[1], ledger)
    gid = group.manifest.group_id

    def statement(kind: Kind, view: int) -> Statement:
        return Statement(kind, gid, 1, view, 5, 1, bytes(32))

    for view in (0, 2):
        assert not replica._may_sign(statement(Kind.PREPARE, view))
        assert not replica._may_sign(statement(Kind.PRE_PREPARE, view))
    assert replica._may_sign(statement(Kind.COMMIT, 2))  # fsynced: never lost
    assert replica._may_sign(statement(Kind.PREPARE, 3))


def test_group_commit_uncommitted_writes_are_lost_together(tmp_path):
    """With group commit nothing is durable before sync(): a crash before it loses the
    whole event's writes, and nothing of that event was sent."""
    path = tmp_path / "g.db"
    ledger = SqliteLedger(path, group_commit=True)
    ledger.save_view(2)
    ledger.sync()
    ledger.save_view(5)
    ledger.db.close()  # crash before sync
    assert SqliteLedger(path).load().view == 2


# --- a power loss of every machine at once ------------------------------------------------


class _PowerLossLedger(SqliteLedger):
    """A ledger whose files can be put back as a power loss would leave them. SQLite keeps a
    prefix of the commits, at least every one up to the last fsync of the WAL; this keeps a
    copy of the database and its WAL after each commit since that fsync, and
    :meth:`lose_power` puts back the oldest: the most a power loss may take."""

    def _commit(self) -> None:
        super()._commit()
        files = tuple(Path(f"{self.path}{end}").read_bytes() for end in ("", "-wal"))
        if self._unsynced:
            self.since_fsync.append(files)
        else:
            self.since_fsync = [files]

    def lose_power(self) -> int:
        """Closes the file as the machine dies; returns how many commits were lost."""
        self.db.close()
        database, wal = self.since_fsync[0]
        Path(self.path).write_bytes(database)
        Path(f"{self.path}-wal").write_bytes(wal)
        Path(f"{self.path}-shm").unlink(missing_ok=True)
        return len(self.since_fsync) - 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_power_loss_of_every_machine_keeps_every_certified_batch(tmp_path, monkeypatch,
                                                                    seed):
    """Every node fsyncs its prepared proof before its COMMIT, but not what it writes when
    it executes a batch. So a power loss of every machine right after a reply may take the
    executed batches from all of them; the group must commit the same batches at the same
    sequence numbers again (from the prepared proofs) and keep serving."""
    _boot(monkeypatch, tmp_path, "boot-a")
    world, paths = _sqlite_world(tmp_path, seed, _PowerLossLedger, group_commit=True,
                                 deferred_sync=True)
    rng = random.Random(seed)
    for _ in range(16):
        client = rng.randrange(2)
        world.at(rng.uniform(0, 1.0), lambda c=client: world.submit(c))
    wanted = rng.randrange(4, 12)
    world.run_until(5.0, stop=lambda: sum(len(c.certified) for c in world.clients) >= wanted)
    before = [dict(c.certified) for c in world.clients]
    executed = [node.replica.executed for node in world.nodes]
    assert sum(len(c) for c in before) >= wanted

    for node in world.nodes:  # the power goes
        node.up = False
        node.epoch += 1
        node.timers.clear()
    lost = [node.ledger.lose_power() for node in world.nodes]
    _boot(monkeypatch, tmp_path, "boot-b")
    kept = []
    for path in paths:
        ledger = SqliteLedger(path)
        kept.append(ledger.last_seq())
        ledger.db.close()
    # The executed batches this run took away (the test is about something).
    assert sum(lost) and any(k < e for k, e in zip(kept, executed, strict=True)), (lost, kept)
    for node in world.nodes:
        world.restart(node.index)
    assert all(node.ledger.lost_unsynced for node in world.nodes)
    for _ in range(6):
        client = rng.randrange(2)
        world.at(rng.uniform(0, 0.5), lambda c=client: world.submit(c))
    world.run_until(world.now + 60.0, stop=world.all_certified)
    assert world.all_certified()
    world.run_until(world.now + 5.0)

    for node in world.nodes:
        node.ledger.close()
    ledgers = [SqliteLedger(p, group_id=world.manifest.group_id) for p in paths]
    top = min(lg.last_seq() for lg in ledgers)
    reference = ledgers[0].committed(1, top + 1)
    for lg in ledgers[1:]:
        assert [b.batch.encoded for b in lg.committed(1, top + 1)] == [
            b.batch.encoded for b in reference]
    for cert in (cert for client in before for cert in client.values()):
        assert cert.seq <= top
        batch = reference[cert.seq - 1]
        assert derive(batch.batch, world.manifest).root == cert.root
        certificate.verify(cert, world.manifest)
