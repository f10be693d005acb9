"""Dropbear's Rust consensus core: ed25519, SHA-256, RFC 9162 Merkle trees, a batch's
request entries, quorum tracking.

Errors are ``ValueError`` (bad lengths, invalid or weak keys, bad thresholds, a full
tracker, a batch that breaks a rule, a malformed REPLY) or ``IndexError`` (leaf or node
index out of range); messages name the bad value. Arguments of the wrong Python type raise
``TypeError``.
"""

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

MAX_EVIDENCE: int
"""Equivocation records a QuorumTracker keeps until taken; past it they are counted as dropped."""
KEY_CACHE_ENTRIES: int
"""Public keys :func:`verify`, :func:`batch_verify` and :func:`verify_requests` keep parsed
(each its own cache); emptied when full."""

class SigningKey:
    """An Ed25519 signing key."""

    @staticmethod
    def generate() -> SigningKey:
        """A fresh key from the operating system's randomness."""
    @staticmethod
    def from_seed(seed: bytes) -> SigningKey:
        """The key of a 32-byte seed (RFC 8032 secret key)."""
    def seed(self) -> bytes:
        """The 32-byte seed, for storing the key."""
    @property
    def public_key(self) -> bytes:
        """The 32-byte public key."""
    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message``."""

class VerifyingKey:
    """An Ed25519 public key; loading refuses wrong lengths, non-points and weak keys."""

    def __init__(self, public_key: bytes) -> None: ...
    def to_bytes(self) -> bytes: ...
    def verify(self, message: bytes, signature: bytes) -> bool:
        """Strict verification; a signature that is not 64 bytes raises ValueError."""

def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Strict verification of one signature; a malformed or weak key raises ValueError.

    Keys that load are kept parsed (at most :data:`KEY_CACHE_ENTRIES`): loading a key
    costs about as much as the rest of a verification.
    """

def batch_verify(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[int]:
    """Verifies ``(message, signature, public_key)`` triples in one call.

    Returns the indices of the bad items in increasing order (empty when all verify).
    Malformed items (bad lengths, invalid or weak keys) are bad items. Each item is checked
    as :func:`verify` checks it, so its verdict never depends on the rest of the batch (a
    random-weight batch equation would pass some signatures :func:`verify` refuses, and
    nodes checking different batches could disagree). Runs with the GIL released, large
    batches on all cores.
    """

def verify_requests(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[int]:
    """Verifies client REQUEST signatures, ``(message, signature, public_key)`` triples.

    Returns the indices of the bad items in increasing order (empty when all verify).
    Malformed items (bad lengths, keys :func:`verify` refuses) are bad items. The rule is
    ZIP-215's (cofactored verification), not the strict one of :func:`verify` and
    :func:`batch_verify`: under it one batch equation gives each signature the verdict it
    would get alone, so a batch is checked at once (and item by item only when it fails).
    It accepts a few signatures the strict rule refuses (R with a torsion component or
    encoded non-canonically, or a key with one), which only the key's holder can make.
    Every check of a client signature must use it, so that nodes agree; no certificate
    carries one. Runs with the GIL released, large batches on all cores.
    """

def sha256(data: bytes) -> bytes: ...
def sha256_many(messages: Sequence[bytes]) -> list[bytes]:
    """SHA-256 of each message, in order (GIL released)."""

def merkle_leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || leaf)``."""

def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 Merkle tree hash of raw leaves; the empty tree is ``SHA-256(b"")``."""

def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The inclusion proof of leaf ``index``, bottom up; IndexError when out of range."""

def merkle_proofs(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """The inclusion proof of every leaf, in order, from one pass over the tree."""

def merkle_verify(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: is ``leaf`` leaf ``index`` of the tree of ``tree_size`` with ``root``?"""

class MerkleTree:
    """A committed batch's tree over its leaves (the entries' canonical bytes), hashed once
    when made: every inclusion proof is read from it, and a node's REPLYs are written from
    it (:meth:`reply`)."""

    def __init__(self, leaves: Sequence[bytes]) -> None: ...
    @property
    def root(self) -> bytes:
        """The tree head (``SHA-256(b"")`` for no leaves)."""
    def __len__(self) -> int: ...
    def leaf(self, index: int) -> bytes:
        """The leaf at ``index``; IndexError past the last, OverflowError below 0."""
    def proof(self, index: int) -> list[bytes]:
        """The inclusion proof of leaf ``index``, bottom up; IndexError past the last leaf,
        OverflowError below 0."""
    def reply(
        self,
        key: SigningKey,
        group_id: bytes,
        node: int,
        view: int,
        seq: int,
        signatures: Sequence[tuple[int, bytes]],
        indices: Sequence[int],
    ) -> bytes:
        """The encoded REPLY of ``node`` with the certificates of leaves ``indices`` (each a
        request entry), signed by ``key``: ``wire.Reply(...).signed(key).encoded``'s bytes.
        ValueError names what does not fit (no or too many items, a leaf that is not an
        entry, an index out of range, a signature of the wrong length); OverflowError for a
        number outside its field's width (``CommittedTree.reply_frame`` makes both
        WireError)."""

def derive_entries(
    group_id: bytes,
    nodes: int,
    quorum: int,
    threshold: int,
    votes: Iterable[Any],
    requests: Iterable[Any],
    entry_type: type[T],
) -> tuple[T, ...]:
    """A batch's request entries (``dropbear.consensus.state.derive``'s rules).

    ``votes``: the batch's VOTES (``group_id``, ``node``, ``model_version``, ``votes`` of
    ``(request, label, score)``); ``requests``: its request headers (``digest``,
    ``group_id``, ``client``, ``request_id``). Each entry is an ``entry_type`` made without
    ``__init__``, holding ``request``, ``client``, ``request_id``, ``label``, ``threshold``,
    ``reached`` and ``encoded`` (its canonical leaf bytes), not ``votes``. Raises ValueError
    naming the rule a batch breaks: VOTES or a request of another group (or of a node at or
    past ``nodes``), two different votes of one node for a request, a request ordered twice,
    fewer than ``quorum`` votes for a request.
    """

REPLY_MAX_ITEMS: int
"""Certificates one REPLY may carry (``wire.MAX_REPLY_ITEMS``)."""
REPLY_MAX_NODES: int
"""Node numbers a REPLY may name are below this (``limits.MAX_NODES``)."""
REPLY_MAX_PROOF_HASHES: int
"""Hashes one inclusion proof may have (``wire.MAX_PROOF_HASHES``)."""
REPLY_MAX_MESSAGE_BYTES: int
"""Largest frame :func:`read_reply` reads (``limits.MAX_MESSAGE_BYTES``)."""
REQUEST_DTYPES: tuple[str, ...]
"""The dtypes a REQUEST may name (``wire.DTYPES``), in the order :func:`read_request`
numbers them."""
REQUEST_MAX_INPUT_RANK: int
"""Most dimensions of a REQUEST's input (``limits.MAX_INPUT_RANK``)."""
REQUEST_MAX_BYTES: int
"""Largest input of one REQUEST (``limits.MAX_REQUEST_BYTES``)."""

def read_request(
    frame: bytes,
) -> tuple[bytes, bytes, int, int, tuple[int, ...], bytes, bytes, bytes, bytes, bytes] | None:
    """A well-formed REQUEST frame read at fixed offsets: ``(group id, client key, request
    id, dtype index in REQUEST_DTYPES, shape, input digest, signature, signed body, encoded
    header, input bytes)``; None for anything else (``wire``'s general reader then names the
    fault). Well-formed: version and kind bytes, a known dtype, a rank within the limit,
    nothing cut off, and an input of exactly the size the shape and dtype call for, within
    REQUEST_MAX_BYTES."""

def read_request_header(
    data: bytes,
) -> tuple[bytes, bytes, int, int, tuple[int, ...], bytes, bytes, bytes, bytes] | None:
    """A well-formed REQUEST header that is all of ``data``: :func:`read_request`'s fields
    without the input bytes; None for anything else."""

REPLY_SIGNING_CONTEXT: bytes
"""What a REPLY's signature signs before its body's SHA-256 (``wire.REPLY_SIGNING_CONTEXT``)."""

def read_reply(
    frame: bytes, group_id: bytes, nodes: int, quorum: int, threshold: int
) -> tuple[
    int,
    int,
    int,
    int,
    bytes,
    tuple[tuple[int, bytes], ...],
    tuple[tuple[int, bytes, bytes, int, bool, tuple[tuple[int, int], ...], str | None], ...],
]:
    """A REPLY frame read in place, with steps 1-3 of each certificate checked (the group,
    the entry's agreement, its inclusion proof; docs/certificates.md).

    Returns ``(node, view, seq, tree_size, root, signatures, items)``: ``signatures`` the
    shared ``(node, commit signature)`` pairs; each item ``(request_id, request digest,
    client key, label, reached, votes, problem)``, ``votes`` its ``(node, label)`` pairs and
    ``problem`` None or why that certificate does not verify. Steps 4-5 (the commit
    signatures) are the caller's. Raises ValueError, naming the fault, for a frame that is
    not a well-formed REPLY (what ``dropbear.wire.decode`` refuses).
    """

Vote = tuple[int, int, bytes, int, bytes]
"""``(view, seq, digest, node, signed message)`` as kept in evidence."""

class QuorumTracker:
    """Counts distinct nodes per ``(view, seq, digest)``; reports each quorum once.

    A second vote by a node for the same ``(view, seq)`` with another digest is not counted;
    both votes are kept as evidence. At most ``max_slots`` ``(view, seq)`` slots are tracked.
    """

    def __init__(self, nodes: int, threshold: int, max_slots: int = 4096) -> None: ...
    @property
    def threshold(self) -> int: ...
    @property
    def evidence_dropped(self) -> int:
        """Equivocations not kept because MAX_EVIDENCE records were waiting."""
    def __len__(self) -> int:
        """The number of ``(view, seq)`` slots tracked."""
    def add_votes(
        self, votes: Sequence[tuple[int, int, bytes, int, bytes | None]]
    ) -> list[tuple[int, int, bytes]]:
        """Adds ``(view, seq, digest, node, signed)`` votes in order.

        Returns the quorums ``(view, seq, digest)`` these votes complete, each exactly once.
        Votes at or below a forgotten sequence number are ignored. On an error the votes
        before the failing one are counted.
        """
    def count(self, view: int, seq: int, digest: bytes) -> int: ...
    def forget_up_to(self, seq: int) -> int:
        """Drops every slot at or below ``seq``; returns how many were dropped."""
    def take_evidence(self) -> list[tuple[Vote, Vote]]:
        """Takes the pairs of conflicting votes gathered so far."""
