"""Crash recovery with the durable ledger (issue 6, DESIGN.md properties 1 and 7), with real
node processes over loopback.

Nodes run ``--null-model`` (votes are a hash of the input, no JAX compile) so that a
restart takes a second and the run is about ordering and storage. Seeded: the victims,
the moments and the inputs come from one ``random.Random``.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio
from dropbear import certificate
from dropbear.cli_group import fetch_certificate
from dropbear.client import Client, ClientError
from dropbear.deploy import MANIFEST_FILE, init_group, key_path, read_key
from dropbear.launcher import GroupProcesses
from dropbear.ledger import SqliteLedger, audit
from dropbear.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
NODE_ARGS = ["--null-model", "--log-level", "INFO"]
SEED = 6

pytestmark = pytest.mark.skipif(not (MODELS / "digits-mlp").is_dir(),
                                reason="the digit models are not in models/")


def _tails(group_dir: Path, lines: int = 12) -> str:
    out = []
    for path in sorted((group_dir / "logs").glob("node-*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


def _ledgers(group_dir: Path, manifest: Manifest) -> list[SqliteLedger]:
    return [SqliteLedger(group_dir / "data" / f"node-{i}.db", group_id=manifest.group_id,
                         node=i) for i in range(manifest.n)]


async def _wait_converged(client: Client, n: int, timeout: float) -> list[int]:
    """Waits until every node has executed the same sequence number."""
    seqs: list[int] = []
    with trio.move_on_after(timeout):
        while True:
            seqs = []
            for i in range(n):
                try:
                    seqs.append((await client.status(i, timeout=2.0))["executed_seq"])
                except ClientError:
                    seqs.append(-1)
            if len(set(seqs)) == 1 and seqs[0] > 0:
                return seqs
            await trio.sleep(0.5)
    return seqs


def _dropbear(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropbear", *args], capture_output=True,
                          text=True, timeout=60)


async def test_kill_9_under_load_then_restart(tmp_path):
    """Random nodes are killed with SIGKILL at random moments while clients stream
    requests, and restarted from their ledgers. Afterwards every node holds the same batch
    at every sequence number, every ledger audits clean, and every certificate a client
    received can be fetched again (from any node, and it is in every node's ledger)."""
    rng = random.Random(SEED)
    group_dir = tmp_path / "group"
    manifest = init_group(group_dir, base_port=0, models_dir=MODELS)
    group = GroupProcesses(group_dir, models_dir=MODELS, extra_args=NODE_ARGS)
    key = read_key(key_path(group_dir, "client"))
    received: list[certificate.Certificate] = []
    kills: list[tuple[float, int]] = []

    async def load(client: Client, stream: int, stop: trio.Event) -> None:
        data = np.random.default_rng(SEED * 100 + stream)
        while not stop.is_set():
            x = data.uniform(0, 16, size=(8, 8, 1)).astype(np.float32)
            result = await client.infer(x)
            received.append(result.certificate)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            async with Client.connect(manifest, key, request_timeout=0.5) as client:
                await group.wait_ready(client, timeout=90)
                stop = trio.Event()
                async with trio.open_nursery() as clients:
                    for stream in range(4):
                        clients.start_soon(load, client, stream, stop)
                    start = trio.current_time()
                    for _ in range(5):
                        await trio.sleep(rng.uniform(0.5, 2.5))
                        victim = rng.randrange(manifest.n)
                        kills.append((round(trio.current_time() - start, 2), victim))
                        await group.kill(victim, signal.SIGKILL)
                        await trio.sleep(rng.uniform(0.2, 2.0))
                        await group.start_node(victim)
                        await group.wait_ready(client, [victim], timeout=60)
                    await trio.sleep(2.0)
                    stop.set()
                seqs = await _wait_converged(client, manifest.n, timeout=30)
                assert len(set(seqs)) == 1, f"nodes did not converge: {seqs}\n" \
                                            f"{_tails(group_dir)}"
                assert len(received) >= 20, (len(received), kills)
                sample = rng.sample(received, min(40, len(received)))
                for cert in sample:  # fetch again, each from a random node
                    node, again = await fetch_certificate(
                        client, manifest, key.public_key, cert.entry.request_id,
                        [rng.randrange(manifest.n)])
                    assert again.entry == cert.entry and again.seq == cert.seq
            # the CLI, while the group still runs
            rid = received[-1].entry.request_id
            out = await trio.to_thread.run_sync(
                lambda: _dropbear("certificate", "--dir", str(group_dir), "--request",
                                  str(rid)))
            assert out.returncode == 0, out.stderr
            assert certificate.from_json(out.stdout).entry.request_id == rid
            assert "VALID" in out.stderr
            nursery.cancel_scope.cancel()
    finally:
        pass
    assert all(codes and codes[-1] == 0 for codes in (n.exit_codes for n in group.nodes)), \
        [n.exit_codes for n in group.nodes]
    ledgers = _ledgers(group_dir, manifest)
    tops = {lg.last_seq() for lg in ledgers}
    assert len(tops) == 1, f"ledgers end at {tops}"
    top = tops.pop()
    reference = [b.batch.encoded for b in ledgers[0].committed(1, top + 1)]
    for lg in ledgers[1:]:
        assert [b.batch.encoded for b in lg.committed(1, top + 1)] == reference
    for lg in ledgers:
        report = audit(lg, manifest)
        assert report.ok, report.problems
        assert report.batches == top
        for cert in received:
            stored = lg.certificate(key.public_key, cert.entry.request_id, manifest)
            assert stored is not None, (lg.path, cert.entry.request_id)
            assert stored.entry == cert.entry and stored.seq == cert.seq
        lg.db.close()
    out = _dropbear("audit", "--dir", str(group_dir), "--node", "0")
    assert out.returncode == 0 and "OK:" in out.stdout, out.stdout + out.stderr


async def test_full_disk_node_stops_then_catches_up(tmp_path):
    """A node whose ledger fills (SQLite max_page_count stands in for a full disk) stops
    with a clear error instead of replying without durability; the group goes on; restarted
    with room, it fetches what it lacks from its peers and loses nothing."""
    group_dir = tmp_path / "group"
    manifest = init_group(group_dir, base_port=0, models_dir=MODELS)
    group = GroupProcesses(group_dir, models_dir=MODELS, extra_args=NODE_ARGS,
                           node_args={3: ["--ledger-max-pages", "40"]})
    key = read_key(key_path(group_dir, "client"))
    rng = np.random.default_rng(SEED)
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        async with Client.connect(manifest, key, request_timeout=0.5) as client:
            await group.wait_ready(client, timeout=90)
            with trio.fail_after(60):
                while group.nodes[3].running:
                    await client.infer(rng.uniform(0, 16, (8, 8, 1)).astype(np.float32))
            assert group.nodes[3].exit_codes == [1]
            log = group.nodes[3].log_path.read_text()
            assert "database or disk is full" in log and "stops" in log, log[-2000:]
            for _ in range(5):  # the other three carry on
                await client.infer(rng.uniform(0, 16, (8, 8, 1)).astype(np.float32))
            group.node_args = {}
            await group.start_node(3)
            await group.wait_ready(client, [3], timeout=60)
            await client.infer(rng.uniform(0, 16, (8, 8, 1)).astype(np.float32))
            seqs = await _wait_converged(client, manifest.n, timeout=30)
            assert len(set(seqs)) == 1, f"{seqs}\n{_tails(group_dir)}"
        nursery.cancel_scope.cancel()
    ledgers = _ledgers(group_dir, manifest)
    assert len({lg.last_seq() for lg in ledgers}) == 1
    assert audit(ledgers[3], manifest).ok


def test_corrupted_ledger_stops_the_node_with_a_clear_error(tmp_path):
    group_dir = tmp_path / "group"
    manifest = init_group(group_dir, base_port=0, models_dir=MODELS)
    data = group_dir / "data"
    SqliteLedger(data / "node-0.db", group_id=manifest.group_id, node=0).close()
    db = sqlite3.connect(data / "node-0.db")
    db.execute("INSERT INTO batches VALUES (2, 0, x'', 0, 0, 0, zeroblob(32), x'00')")
    db.commit()
    db.close()
    out = _dropbear("node", "--id", "0", "--manifest", str(group_dir / MANIFEST_FILE),
                    "--models-dir", str(MODELS), "--null-model")
    assert out.returncode == 1
    assert "committed batch 1 is missing" in out.stderr and "refusing" in out.stderr
    out = _dropbear("audit", "--dir", str(group_dir), "--node", "0")
    assert out.returncode == 1 and "CORRUPT" in out.stdout
    (data / "node-1.db").write_bytes(b"\x00" * 5000)
    out = _dropbear("node", "--id", "1", "--manifest", str(group_dir / MANIFEST_FILE),
                    "--models-dir", str(MODELS), "--null-model")
    assert out.returncode == 1 and "corrupted or truncated" in out.stderr, out.stderr
