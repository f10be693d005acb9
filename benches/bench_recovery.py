"""A node's restart: rebuilding its state from a long ledger, with and without snapshots.

Run: .venv/bin/python -m pytest benches/bench_recovery.py --benchmark-enable

The ledger holds 2,148 committed batches of 16 requests (four nodes' VOTES, three COMMITs,
every signature real), built once per run. The Dropbear side restarts from it as a node
does now: the state snapshot at batch 2,048 (``limits.SNAPSHOT_INTERVAL`` = 1,024), then
the 100 batches after it, each checked again (COMMIT signatures, derived root). The
baseline is the same file with its snapshots removed, which is what every restart did
before snapshots: check the hash chain over every batch and replay all of them. The
baseline grows with the ledger; the Dropbear side does not.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from dropbear import _core, limits
from dropbear.consensus import Replica
from dropbear.consensus.state import GroupState, derive
from dropbear.ledger import SqliteLedger
from dropbear.manifest import Manifest, NodeInfo
from dropbear.wire import Batch, Commit, CommittedBatch, Kind, Request, Statement, Vote, Votes

BATCHES = 2 * limits.SNAPSHOT_INTERVAL + 100
REQUESTS_PER_BATCH = 16
CLIENTS = 8


def _key(label: str) -> _core.SigningKey:
    return _core.SigningKey.from_seed(_core.sha256(f"bench-recovery/{label}".encode()))


NODE_KEYS = [_key(f"node/{i}") for i in range(4)]
MANIFEST = Manifest("bench-recovery", 1, tuple(
    NodeInfo(f"127.0.0.1:{7000 + i}", NODE_KEYS[i].public_key, _key(f"owner/{i}").public_key,
             f"model-{i}", _core.sha256(f"version/{i}".encode()))
    for i in range(4)))


def _committed(seq: int, clients: list[_core.SigningKey]) -> CommittedBatch:
    gid = MANIFEST.group_id
    heads = tuple(
        Request.create(clients[i % CLIENTS], gid, seq * REQUESTS_PER_BATCH + i, "uint8", (1,),
                       bytes([i])).header
        for i in range(REQUESTS_PER_BATCH))
    votes = tuple(
        Votes(gid, n, MANIFEST.nodes[n].model_version,
              tuple(Vote(h.digest, (seq + i) % 10, 0.5) for i, h in enumerate(heads))
              ).signed(NODE_KEYS[n])
        for n in range(4))
    batch = Batch(heads, votes)
    derived = derive(batch, MANIFEST)
    commits = tuple(
        Commit(Statement(Kind.COMMIT, gid, n, 0, seq, derived.size, derived.root)
               ).signed(NODE_KEYS[n])
        for n in range(3))
    return CommittedBatch(0, seq, batch, commits)


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory) -> dict[str, Path]:
    """The ledger (with snapshots every SNAPSHOT_INTERVAL batches, as a node writes them)
    and a copy without any."""
    root = tmp_path_factory.mktemp("recovery")
    path = root / "with-snapshots.db"
    ledger = SqliteLedger(path, group_id=MANIFEST.group_id, node=0, group_commit=True)
    clients = [_key(f"client/{c}") for c in range(CLIENTS)]
    state = GroupState.genesis(MANIFEST)
    for seq in range(1, BATCHES + 1):
        cb = _committed(seq, clients)
        derived = derive(cb.batch, MANIFEST)
        ledger.append_committed(cb)
        state.apply(derived, seq, derived.root)
        if seq % limits.SNAPSHOT_INTERVAL == 0:
            ledger.save_snapshot(seq, state.encode(MANIFEST.group_id))
        if seq % 64 == 0:
            ledger.sync()
    ledger.close()
    plain = root / "without-snapshots.db"
    db = sqlite3.connect(path)
    db.execute("VACUUM INTO ?", (str(plain),))
    db.close()
    db = sqlite3.connect(plain)
    db.execute("DELETE FROM snapshots")
    db.commit()
    db.close()
    return {"dropbear": path, "baseline": plain}


def _restart(path: Path) -> Replica:
    ledger = SqliteLedger(path, group_id=MANIFEST.group_id, node=0)
    try:
        return Replica(MANIFEST, 0, NODE_KEYS[0], ledger)
    finally:
        ledger.close()


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_restart_from_a_long_ledger(benchmark, role, ledgers, side):
    benchmark.group = f"restart from {BATCHES} committed batches"
    role(side)
    replica = benchmark.pedantic(_restart, args=(ledgers[side],), rounds=3, iterations=1)
    assert replica.executed == BATCHES
    reference = _restart(ledgers["baseline"] if side == "dropbear" else ledgers["dropbear"])
    assert replica.state.encode(MANIFEST.group_id) == reference.state.encode(MANIFEST.group_id)
