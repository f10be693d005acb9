"""dropbear._core digests and RFC 9162 Merkle trees, against an independent reference."""

from __future__ import annotations

import hashlib

import pytest
from dropbear import _core
from hypothesis import given, settings
from hypothesis import strategies as st


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, recursively: split at the largest power of two below n."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(
        b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])
    ).digest()


def path_shape(index: int, size: int) -> list[bool]:
    """For each proof element: does the sibling sit on the left? (RFC 9162 PATH(m, D[n]))."""
    if size <= 1:
        return []
    k = 1
    while k * 2 < size:
        k *= 2
    if index < k:
        return path_shape(index, k) + [False]
    return path_shape(index - k, size - k) + [True]


def unique_leaves(n: int, salt: int) -> list[bytes]:
    return [f"{salt}:{i}".encode() * (1 + i % 3) for i in range(n)]


def test_sha256() -> None:
    assert _core.sha256(b"abc").hex() == hashlib.sha256(b"abc").hexdigest()
    messages = [bytes([i % 256]) * i for i in range(300)]
    assert _core.sha256_many(messages) == [hashlib.sha256(m).digest() for m in messages]
    assert _core.sha256_many([]) == []


def test_empty_tree_and_single_leaf() -> None:
    assert _core.merkle_root([]) == hashlib.sha256(b"").digest()
    assert _core.merkle_root([b"only"]) == hashlib.sha256(b"\x00only").digest()
    assert _core.merkle_leaf_hash(b"only") == hashlib.sha256(b"\x00only").digest()
    assert _core.merkle_proof([b"only"], 0) == []
    assert _core.merkle_proofs([b"only"]) == [[]]
    assert _core.merkle_proofs([]) == []
    assert _core.merkle_verify(b"only", 0, 1, [], _core.merkle_root([b"only"]))
    with pytest.raises(IndexError, match="leaf index 0 is out of range for a tree of 0"):
        _core.merkle_proof([], 0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), salt=st.integers(0, 10**6))
def test_every_proof_of_every_leaf_verifies(n: int, salt: int) -> None:
    leaves = unique_leaves(n, salt)
    root = _core.merkle_root(leaves)
    assert root == reference_root(leaves)
    all_proofs = _core.merkle_proofs(leaves)
    assert len(all_proofs) == n
    for i in range(n):
        proof = _core.merkle_proof(leaves, i)
        assert all_proofs[i] == proof
        assert len(proof) == len(path_shape(i, n))
        assert _core.merkle_verify(leaves[i], i, n, proof, root)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), salt=st.integers(0, 10**6))
def test_a_merkle_tree_gives_the_root_and_proofs_of_its_leaves(n: int, salt: int) -> None:
    """The tree a node keeps per committed batch (hashed once) against the one-shot
    functions and the RFC 9162 reference."""
    leaves = unique_leaves(n, salt)
    tree = _core.MerkleTree(leaves)
    assert len(tree) == n
    assert tree.root == _core.merkle_root(leaves) == reference_root(leaves)
    assert [tree.proof(i) for i in range(n)] == _core.merkle_proofs(leaves)
    assert [tree.leaf(i) for i in range(n)] == leaves
    with pytest.raises(IndexError, match=f"leaf index {n} is out of range for a tree of {n}"):
        tree.proof(n)
    with pytest.raises(IndexError, match=f"leaf index {n} is out of range for a tree of {n}"):
        tree.leaf(n)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 300), salt=st.integers(0, 10**6))
def test_tampered_proofs_fail(data: st.DataObject, n: int, salt: int) -> None:
    leaves = unique_leaves(n, salt)
    root = _core.merkle_root(leaves)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = _core.merkle_proof(leaves, i)

    def flip(b: bytes, pos: int) -> bytes:
        return b[:pos] + bytes([b[pos] ^ 1]) + b[pos + 1 :]

    leaf = leaves[i]
    assert not _core.merkle_verify(flip(leaf, data.draw(st.integers(0, len(leaf) - 1))), i, n,
                                   proof, root)
    assert not _core.merkle_verify(leaf, i, n, proof, flip(root, data.draw(st.integers(0, 31))))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="proof element")
        bad = list(proof)
        bad[k] = flip(bad[k], data.draw(st.integers(0, 31)))
        assert not _core.merkle_verify(leaf, i, n, bad, root)
        assert not _core.merkle_verify(leaf, i, n, proof[:-1], root)
    if n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="wrong index")
        assert not _core.merkle_verify(leaf, j, n, proof, root)
    # A wrong size fails unless it gives the leaf exactly the same audit path (RFC 9162 binds
    # the size only through the path); the certificate's signed statement binds the size too.
    m = data.draw(st.integers(0, 2 * n + 2).filter(lambda m: m != n), label="wrong size")
    same_path = i < m and path_shape(i, m) == path_shape(i, n)
    assert _core.merkle_verify(leaf, i, m, proof, root) == same_path


def test_verify_refuses_malformed_hashes() -> None:
    with pytest.raises(ValueError, match="root must be 32 bytes, got 31"):
        _core.merkle_verify(b"a", 0, 1, [], bytes(31))
    with pytest.raises(ValueError, match="proof hash must be 32 bytes, got 5"):
        _core.merkle_verify(b"a", 0, 2, [bytes(5)], bytes(32))
