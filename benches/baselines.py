"""Pure-Python baselines that the benches measure Dropbear's Rust core against."""

from __future__ import annotations

import hashlib


def merkle_root_hashlib(leaves: list[bytes]) -> bytes:
    """RFC 9162 Merkle tree hash, level by level, with hashlib."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def sha256_loop(messages: list[bytes]) -> list[bytes]:
    return [hashlib.sha256(m).digest() for m in messages]


class DictOfSetsTracker:
    """Quorum tracking with a dict of sets: the obvious pure-Python version."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.voters: dict[tuple[int, int, bytes], set[int]] = {}
        self.first: dict[tuple[int, int, int], bytes] = {}
        self.reported: set[tuple[int, int, bytes]] = set()

    def add_votes(self, votes) -> list[tuple[int, int, bytes]]:
        reached = []
        for view, seq, digest, node, _signed in votes:
            prior = self.first.setdefault((view, seq, node), digest)
            if prior != digest:
                continue
            key = (view, seq, digest)
            voters = self.voters.setdefault(key, set())
            voters.add(node)
            if len(voters) >= self.threshold and key not in self.reported:
                self.reported.add(key)
                reached.append(key)
        return reached
