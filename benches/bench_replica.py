"""The replica's per-batch data path against its reference, side by side in one run.

``derive`` runs for every batch on every node (the primary when it proposes, each backup
when it checks a PRE-PREPARE): it must give exactly ``agreement.make_entry``'s entries and
encodings (tests/test_consensus_state.py), built in line instead of one reference call per
request. Executing the batch on the group state (``GroupState.apply``, and ``after`` when a
node projects it) is measured the same way, beside ``entry_problem`` and ``apply_entry``
per entry.

    .venv/bin/python -m pytest benches/bench_replica.py --benchmark-enable -q
"""

from __future__ import annotations

import random

import pytest
from dropbear import _core
from dropbear.agreement import make_entry
from dropbear.consensus.state import GroupState, derive
from dropbear.manifest import Manifest, NodeInfo
from dropbear.wire import Batch, EntryVote, Request, Vote, Votes

N_NODES = 4
N_REQUESTS = 256
INFERENCE_BATCH = 32
"""Requests per VOTES message (one per inference batch and node)."""


@pytest.fixture(scope="module")
def saturated_batch():
    """A PRE-PREPARE's batch as the null-model group orders it at saturation: 256 requests of
    8 clients, each node's votes in VOTES messages of 32, every node agreeing but one."""
    rng = random.Random(7)
    node_keys = [_core.SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(N_NODES)]
    manifest = Manifest(
        name="bench", f=1, threshold=3,
        nodes=tuple(NodeInfo(f"127.0.0.1:{9000 + i}", k.public_key, k.public_key, "null",
                             bytes([i]) * 32) for i, k in enumerate(node_keys)))
    clients = [_core.SigningKey.from_seed(bytes([100 + i]) * 32) for i in range(8)]
    heads = [Request.create(clients[i % 8], manifest.group_id, 1000 + i, "float32", (64,),
                            rng.randbytes(256)).header for i in range(N_REQUESTS)]
    messages, casts = [], {h.digest: [] for h in heads}
    for node in range(N_NODES):
        version = manifest.nodes[node].model_version
        for start in range(0, N_REQUESTS, INFERENCE_BATCH):
            votes = []
            for head in heads[start:start + INFERENCE_BATCH]:
                label = (head.request_id + (node == 3)) % 10
                votes.append(Vote(head.digest, label, 0.5))
                casts[head.digest].append(EntryVote(node, version, label, 0.5))
            messages.append(Votes(manifest.group_id, node, version, tuple(votes))
                            .signed(node_keys[node]))
    return manifest, Batch(tuple(heads), tuple(messages)), casts


def test_derive_dropbear(benchmark, role, saturated_batch):
    role("dropbear")
    benchmark.group = f"derive a batch of {N_REQUESTS} requests, n={N_NODES}"
    manifest, batch, casts = saturated_batch
    derived = benchmark(derive, batch, manifest)
    assert len(derived.leaves) == N_REQUESTS


def test_derive_reference_make_entry(benchmark, role, saturated_batch):
    """Baseline: agreement.make_entry per request and its checked encoding."""
    role("baseline")
    benchmark.group = f"derive a batch of {N_REQUESTS} requests, n={N_NODES}"
    manifest, batch, casts = saturated_batch

    def reference():
        return [make_entry(h, casts[h.digest], manifest.threshold).encoded
                for h in batch.requests]

    leaves = benchmark(reference)
    assert leaves == derive(batch, manifest).leaves


def test_apply_dropbear(benchmark, role, saturated_batch):
    """Executing the batch on the group state (and, as ``after``, projecting it): one loop
    over the entries. Each run starts from a copy of the same state."""
    role("dropbear")
    benchmark.group = f"apply a batch of {N_REQUESTS} entries to the group state"
    manifest, batch, _ = saturated_batch
    derived, base = derive(batch, manifest), GroupState.genesis(manifest)
    valid, _ = benchmark(lambda: base.copy().apply(derived, 1, bytes(32)))
    assert len(valid) == N_REQUESTS


def test_apply_reference_one_by_one(benchmark, role, saturated_batch):
    """Baseline: GroupState.entry_problem and apply_entry per entry."""
    role("baseline")
    benchmark.group = f"apply a batch of {N_REQUESTS} entries to the group state"
    manifest, batch, _ = saturated_batch
    derived, base = derive(batch, manifest), GroupState.genesis(manifest)

    def reference():
        state, valid = base.copy(), []
        for i, entry in enumerate(derived.entries):
            if state.entry_problem(entry) is None:
                state.apply_entry(entry)
                valid.append(i)
        return valid

    assert len(benchmark(reference)) == N_REQUESTS
