"""`make demo`: a short tour of Dropbear's consensus core doing real work.

Four nodes sign their votes for a batch of requests; one signature is forged; batch
verification finds exactly that one; the honest votes go into a Merkle tree whose
inclusion proof for one entry is checked; a quorum tracker certifies the batch root.
"""

from __future__ import annotations

import time

from dropbear import _core

NODES = 4
F = 1
REQUESTS = 256


def main() -> None:
    print(f"Dropbear core demo: a group of n = {NODES} nodes (f = {F})")
    keys = [_core.SigningKey.generate() for _ in range(NODES)]
    for i, key in enumerate(keys):
        print(f"  node {i}: public key {key.public_key.hex()[:16]}...")

    requests = [f"request {r}: digit image bytes".encode() for r in range(REQUESTS)]
    digests = _core.sha256_many(requests)
    votes = []
    for node, key in enumerate(keys):
        for r, digest in enumerate(digests):
            label = r % 10
            message = digest + bytes([node, label])
            votes.append((message, key.sign(message), key.public_key))
    forged_index = 2 * REQUESTS + 17
    message, signature, public_key = votes[forged_index]
    votes[forged_index] = (message, bytes([signature[0] ^ 1]) + signature[1:], public_key)
    print(f"\nSigned {len(votes)} votes ({REQUESTS} requests x {NODES} nodes); "
          f"forged the signature of vote {forged_index}.")

    start = time.perf_counter()
    bad = _core.batch_verify(votes)
    elapsed = time.perf_counter() - start
    print(f"Batch verification of {len(votes)} signatures took {elapsed * 1e3:.1f} ms "
          f"and found bad items {bad}.")
    assert bad == [forged_index], bad

    leaves = [m for i, (m, _, _) in enumerate(votes) if i not in bad]
    root = _core.merkle_root(leaves)
    i = 123
    proof = _core.merkle_proof(leaves, i)
    ok = _core.merkle_verify(leaves[i], i, len(leaves), proof, root)
    tampered = _core.merkle_verify(leaves[i] + b"x", i, len(leaves), proof, root)
    print(f"\nMerkle root of {len(leaves)} honest votes: {root.hex()[:32]}...")
    print(f"Inclusion proof of leaf {i}: {len(proof)} hashes; verifies: {ok}; "
          f"a tampered leaf verifies: {tampered}.")
    assert ok and not tampered

    tracker = _core.QuorumTracker(NODES, 2 * F + 1)
    commits = [(0, 1, root, node, None) for node in range(NODES)]
    reached = tracker.add_votes(commits)
    print(f"\nCOMMIT votes from {NODES} nodes for (view 0, seq 1): quorum of "
          f"{tracker.threshold} reached {len(reached)} time(s), root {reached[0][2].hex()[:16]}...")
    assert len(reached) == 1
    print("\nAll checks passed.")


if __name__ == "__main__":
    main()
