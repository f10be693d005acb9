"""The replica's per-batch data path against its reference, side by side in one run.

``derive`` runs for every batch on every node (the primary when it proposes, each backup
when it checks a PRE-PREPARE): it must give exactly ``agreement.make_entry``'s entries and
encodings (tests/test_consensus_state.py); the Rust core builds them
(``_core.derive_entries``, since the twenty-second round; before, a Python loop in line),
where the reference makes and encodes one entry per request. Executing the batch on the
group state (``GroupState.apply``, and ``after`` when a node projects it) is measured the
same way, beside ``entry_problem`` and ``apply_entry`` per entry. And what the reply cache
keeps alive per executed request, beside what it kept until the twenty-first round; and a
client reading a REPLY (``_core.read_reply``) beside the Python reader.

    .venv/bin/python -m pytest benches/bench_replica.py --benchmark-enable -q -s
"""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
from dropbear import _core
from dropbear.agreement import make_entry
from dropbear.certificate import KeptBatch, commit_tree
from dropbear.consensus.state import GroupState, derive
from dropbear.limits import MAX_REPLY_CACHE
from dropbear.manifest import Manifest, NodeInfo
from dropbear.wire import Batch, Commit, EntryVote, Kind, Request, Statement, Vote, Votes

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


# --- a client reading a REPLY: the Rust core against the Python reader --------------------

REPLY_ITEMS = 128
"""Certificates in the REPLY (one client's half of a saturated batch of 256)."""


@pytest.fixture(scope="module")
def reply_frame(saturated_batch):
    manifest, batch, _ = saturated_batch
    derived = derive(batch, manifest)
    tree = commit_tree(manifest.group_id, 0, 1, derived.leaves, _commits(manifest, 1, derived))
    items = [(i, e) for i, e in enumerate(derived.entries) if i % 2 == 0][:REPLY_ITEMS]
    key = _core.SigningKey.from_seed(bytes([1]) * 32)
    return manifest, tree.reply(0, items).signed(key).encoded


def test_read_reply_dropbear(benchmark, role, reply_frame):
    """What the client does with each REPLY it waits on: parse it, and check steps 1-3 of
    every certificate (group, agreement, inclusion proof), in one core call."""
    role("dropbear")
    benchmark.group = f"read a REPLY of {REPLY_ITEMS} certificates and check steps 1-3"
    m, frame = reply_frame
    read = benchmark(_core.read_reply, frame, m.group_id, m.n, m.quorum, m.threshold)
    assert all(item[-1] is None for item in read[-1]) and len(read[-1]) == REPLY_ITEMS


def test_read_reply_reference(benchmark, role, reply_frame):
    """Baseline: the Python reader (``wire.decode``) and ``certificate.verify_entry`` per
    certificate, what the client did until the twenty-second round."""
    from dropbear.certificate import verify_entry
    from dropbear.wire import decode

    role("baseline")
    benchmark.group = f"read a REPLY of {REPLY_ITEMS} certificates and check steps 1-3"
    m, frame = reply_frame

    def reference():
        certs = decode(frame).certificates
        for cert in certs:
            verify_entry(cert, m)
        return certs

    assert len(benchmark(reference)) == REPLY_ITEMS


# --- a node writing its REPLYs for a committed batch: the Rust core against Python ---------

REPLY_CLIENTS = 2
"""Clients whose requests share the batch (the null-model suite's closed loop at 512)."""


@pytest.fixture(scope="module")
def executed_batch(saturated_batch):
    """A committed batch as a node has it once executed: the manifest, the derived batch,
    its 2f+1 COMMITs, each client's ``(leaf index, entry)`` items, and the node's key."""
    manifest, batch, _ = saturated_batch
    derived = derive(batch, manifest)
    by_client: dict[bytes, list] = {}
    for i, entry in enumerate(derived.entries):
        by_client.setdefault(bytes([i % REPLY_CLIENTS]), []).append((i, entry))
    return (manifest, derived, _commits(manifest, 1, derived), list(by_client.values()),
            _core.SigningKey.from_seed(bytes([1]) * 32))


def test_write_replies_dropbear(benchmark, role, executed_batch):
    """What a node does for each committed batch once it executed it: the batch's tree,
    hashed once, and each client's signed REPLY written from it by the core
    (``CommittedTree.reply_frame``, since the twenty-third round)."""
    role("dropbear")
    benchmark.group = (f"a node's signed REPLYs for a committed batch of {N_REQUESTS}, "
                       f"{REPLY_CLIENTS} clients")
    manifest, derived, commits, parts, key = executed_batch

    def replies():
        tree = commit_tree(manifest.group_id, 0, 1, derived.leaves, commits)
        return [tree.reply_frame(0, [i for i, _ in part], key) for part in parts]

    assert sum(map(len, benchmark(replies))) > N_REQUESTS * 300


def test_write_replies_reference(benchmark, role, executed_batch):
    """Baseline: what a node did until the twenty-second round: the root and every proof
    as lists of hashes (two passes over the tree), and each REPLY as objects written and
    signed by ``wire.Reply``. The same bytes (tests/test_certificate.py)."""
    from dropbear.wire import Reply, ReplyItem

    role("baseline")
    benchmark.group = (f"a node's signed REPLYs for a committed batch of {N_REQUESTS}, "
                       f"{REPLY_CLIENTS} clients")
    manifest, derived, commits, parts, key = executed_batch
    signatures = tuple(sorted((c.node, c.signature) for c in commits))

    def replies():
        leaves = list(derived.leaves)
        root, proofs = _core.merkle_root(leaves), _core.merkle_proofs(leaves)
        return [Reply(manifest.group_id, 0, 0, 1, len(leaves), root, signatures,
                      tuple(ReplyItem(i, e, tuple(proofs[i])) for i, e in part))
                .signed(key).encoded for part in parts]

    expected = commit_tree(manifest.group_id, 0, 1, derived.leaves, commits)
    frames = benchmark(replies)
    assert frames == [expected.reply_frame(0, [i for i, _ in part], key) for part in parts]


# --- what the reply cache keeps: a batch's leaves, or its tree and entries ------------------

CACHED_BATCHES = MAX_REPLY_CACHE // N_REQUESTS
"""Batches of N_REQUESTS whose requests fill the reply cache (MAX_REPLY_CACHE)."""


def _commits(manifest, seq, derived):
    keys = [_core.SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(N_NODES)]
    return [Commit(Statement(Kind.COMMIT, manifest.group_id, node, 0, seq, derived.size,
                             derived.root)).signed(keys[node])
            for node in range(manifest.quorum)]


def _fill(cache, manifest, seq, derived, commits, kept):
    """One executed batch's entries in ``cache``, as the replica stores them (``kept``) or as
    it did until the twenty-first round (the tree with every proof, and each entry)."""
    tree = commit_tree(manifest.group_id, 0, seq, derived.leaves, commits)
    shift = seq * N_REQUESTS  # the same requests in every batch here: keep the keys apart
    if kept:
        batch = KeptBatch.of(tree, derived.leaves)
        for i, entry in enumerate(derived.entries):
            cache[(entry.client, entry.request_id + shift)] = (batch, i)
    else:  # the tree as it was then: every proof a list of hashes (now it is in the core)
        old_tree = (tree, _core.merkle_proofs(list(derived.leaves)))
        for item in enumerate(derived.entries):
            cache[(item[1].client, item[1].request_id + shift)] = (old_tree, item)


def _retained(manifest, batch, kept):
    """Bytes and collector-tracked objects that a full reply cache holds once the batches
    themselves are gone, per cached request."""
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = {}
    for seq in range(1, CACHED_BATCHES + 1):
        derived = derive(batch, manifest)  # new entry objects for every batch, as in a node
        _fill(cache, manifest, seq, derived, _commits(manifest, seq, derived), kept)
        del derived
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    held = len(gc.get_objects()) - objects
    assert len(cache) == CACHED_BATCHES * N_REQUESTS
    return size / len(cache), held / len(cache)


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_reply_cache_keeps(benchmark, role, saturated_batch, side):
    """Time: filling the cache from one executed batch. extra_info: what a full cache
    (MAX_REPLY_CACHE requests) keeps alive per request, bytes and tracked objects, after the
    batches are gone. The baseline keeps each batch's CommittedTree (every proof as a list of
    hashes) and each request's entry; Dropbear keeps the batch's leaves (KeptBatch)."""
    role(side)
    kept = side == "dropbear"
    benchmark.group = (f"reply cache, {CACHED_BATCHES} batches of {N_REQUESTS}: fill one "
                       "batch (time), memory kept per request (extra_info)")
    manifest, batch, _ = saturated_batch
    derived = derive(batch, manifest)
    commits = _commits(manifest, 1, derived)
    benchmark(lambda: _fill({}, manifest, 1, derived, commits, kept))
    size, held = _retained(manifest, batch, kept)
    benchmark.extra_info.update(bytes_per_request=round(size), objects_per_request=held)
    print(f"\n  {side:<8} reply cache keeps {size:,.0f} bytes and {held:.1f} tracked objects "
          "per request")
    if kept:  # what the change is for: far fewer objects alive per cached request
        assert held < 4
