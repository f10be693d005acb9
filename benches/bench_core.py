"""dropbear._core against pure-Python / PyNaCl baselines, side by side in one run.

Run: make bench   (or: .venv/bin/pytest benches/bench_core.py --benchmark-enable)
"""

from __future__ import annotations

import os

import nacl.signing
import pytest
from baselines import DictOfSetsTracker, merkle_root_hashlib, sha256_loop
from dropbear import _core

N_SIGNATURES = 1024
N_LEAVES = 4096
N_MESSAGES = 10_000
MESSAGE_BYTES = 256
N_VOTES = 100_000


def signed_items(keys: int, n: int, message_bytes: int, first_seed: int = 0):
    """``n`` ``(message, signature, public key)`` triples by ``keys`` keys in turn, of random
    messages."""
    signers = [_core.SigningKey.from_seed((first_seed + i).to_bytes(32, "little"))
               for i in range(keys)]
    items = []
    for i in range(n):
        key = signers[i % keys]
        message = os.urandom(message_bytes)
        items.append((message, key.sign(message), key.public_key))
    return items


@pytest.fixture(scope="module")
def signed_batch():
    return signed_items(64, N_SIGNATURES, 128)


def test_batch_verify_dropbear(benchmark, role, signed_batch):
    benchmark.group = "batch verify 1024 signatures"
    role("dropbear")
    assert benchmark(_core.batch_verify, signed_batch) == []


def test_batch_verify_pynacl_one_by_one(benchmark, role, signed_batch):
    benchmark.group = "batch verify 1024 signatures"
    role("baseline")
    keys = {pk: nacl.signing.VerifyKey(pk) for _, _, pk in signed_batch}

    def one_by_one():
        for message, signature, pk in signed_batch:
            keys[pk].verify(message, signature)

    benchmark(one_by_one)


@pytest.fixture(scope="module")
def request_batch():
    """What a node checks at intake under load: 96 client REQUEST signatures by 8 keys."""
    return signed_items(8, 96, 150, first_seed=1000)


def test_request_signatures_zip215_batch(benchmark, role, request_batch):
    benchmark.group = "client request signatures, 96 by 8 keys"
    role("dropbear")
    assert benchmark(_core.verify_requests, request_batch) == []


def test_request_signatures_strict_one_by_one(benchmark, role, request_batch):
    benchmark.group = "client request signatures, 96 by 8 keys"
    role("baseline")  # the eleventh and twelfth rounds' check: each alone, strict
    assert benchmark(_core.batch_verify, request_batch) == []


def test_request_signature_zip215_alone(benchmark, role, request_batch):
    benchmark.group = "one client request signature"
    role("dropbear")
    one = request_batch[:1]
    assert benchmark(_core.verify_requests, one) == []


def test_request_signature_strict_alone(benchmark, role, request_batch):
    benchmark.group = "one client request signature"
    role("baseline")
    one = request_batch[:1]
    assert benchmark(_core.batch_verify, one) == []


@pytest.fixture(scope="module")
def group_signatures():
    """What a node checks one by one: 64 signatures by the four node keys, keys as bytes."""
    return [(pk, message, sig) for message, sig, pk in signed_items(4, 64, 120)]


def test_verify_one_by_one_dropbear(benchmark, role, group_signatures):
    benchmark.group = "verify 64 signatures one by one"
    role("dropbear")

    def one_by_one():
        return all(_core.verify(pk, message, sig) for pk, message, sig in group_signatures)

    assert benchmark(one_by_one)


def test_verify_one_by_one_pynacl(benchmark, role, group_signatures):
    benchmark.group = "verify 64 signatures one by one"
    role("baseline")

    def one_by_one():
        for pk, message, sig in group_signatures:
            nacl.signing.VerifyKey(pk).verify(message, sig)

    benchmark(one_by_one)


@pytest.fixture(scope="module")
def leaves():
    return [os.urandom(100) for _ in range(N_LEAVES)]


def test_merkle_root_dropbear(benchmark, role, leaves):
    benchmark.group = "merkle root 4096 leaves"
    role("dropbear")
    assert benchmark(_core.merkle_root, leaves) == merkle_root_hashlib(leaves)


def test_merkle_root_pure_python(benchmark, role, leaves):
    benchmark.group = "merkle root 4096 leaves"
    role("baseline")
    benchmark(merkle_root_hashlib, leaves)


@pytest.fixture(scope="module")
def messages():
    return [os.urandom(MESSAGE_BYTES) for _ in range(N_MESSAGES)]


def test_sha256_many_dropbear(benchmark, role, messages):
    benchmark.group = "sha256 of 10000 x 256 B"
    role("dropbear")
    assert benchmark(_core.sha256_many, messages) == sha256_loop(messages)


def test_sha256_hashlib_loop(benchmark, role, messages):
    benchmark.group = "sha256 of 10000 x 256 B"
    role("baseline")
    benchmark(sha256_loop, messages)


@pytest.fixture(scope="module")
def votes():
    """100,000 votes: 25,000 (view, seq) slots, 4 nodes each, some equivocating."""
    digests = [bytes([d]) * 32 for d in range(4)]
    out = []
    for seq in range(N_VOTES // 4):
        for node in range(4):
            digest = digests[1] if (node == 3 and seq % 10 == 0) else digests[0]
            out.append((0, seq, digest, node, None))
    return out


def test_quorum_tracking_dropbear(benchmark, role, votes):
    benchmark.group = "quorum tracking 100000 votes"
    role("dropbear")

    def track():
        tracker = _core.QuorumTracker(4, 3, max_slots=N_VOTES)
        return tracker.add_votes(votes)

    assert len(benchmark(track)) == N_VOTES // 4


def test_quorum_tracking_dict_of_sets(benchmark, role, votes):
    benchmark.group = "quorum tracking 100000 votes"
    role("baseline")

    def track():
        return DictOfSetsTracker(3).add_votes(votes)

    assert len(benchmark(track)) == N_VOTES // 4
