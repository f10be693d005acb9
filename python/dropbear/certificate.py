"""Inference certificates: built on commit, verified offline with the manifest alone.

A certificate proves that at least 2f+1 nodes of the group signed the COMMIT statement
``(group id, view, seq, tree size, root)`` and that the entry is leaf ``leaf_index`` of
that root (RFC 9162). The verification steps are those of docs/certificates.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dropbear import _core
from dropbear.agreement import check_entry
from dropbear.cached import cached_property
from dropbear.manifest import Manifest
from dropbear.wire import (
    MAX_REPLY_ITEMS,
    Certificate,
    Commit,
    EntryVote,
    Kind,
    Reply,
    ReplyItem,
    RequestEntry,
    Statement,
    WireError,
)

__all__ = [
    "Certificate",
    "CertificateError",
    "CommittedTree",
    "KeptBatch",
    "commit_tree",
    "build",
    "verify",
    "is_valid",
    "to_json",
    "from_json",
]


class CertificateError(ValueError):
    """A certificate that does not verify; the message names the failed step."""


@dataclass(frozen=True, eq=False)
class CommittedTree:
    """What every certificate of one committed batch shares (the COMMIT statement's fields
    and 2f+1 signatures of it), and the batch's Merkle tree, hashed once. A node keeps one per
    executed batch instead of one :class:`Certificate` per request: certificates and REPLYs
    are made from it when sent."""

    group_id: bytes
    view: int
    seq: int
    signatures: tuple[tuple[int, bytes], ...]
    merkle: _core.MerkleTree
    """The tree over the batch's leaves (the entries' encodings, in order)."""

    @property
    def tree_size(self) -> int:
        """The number of leaves."""
        return len(self.merkle)

    @cached_property
    def root(self) -> bytes:
        """The tree head, which the COMMIT statement names."""
        return self.merkle.root

    def proof(self, leaf_index: int) -> tuple[bytes, ...]:
        """The inclusion proof of leaf ``leaf_index``; IndexError outside the tree."""
        if leaf_index < 0:
            raise IndexError(f"leaf index {leaf_index} is out of range for a tree of "
                             f"{self.tree_size}")
        return tuple(self.merkle.proof(leaf_index))

    def certificate(self, leaf_index: int, entry: RequestEntry) -> Certificate:
        """The certificate of ``entry``, leaf ``leaf_index`` of this tree."""
        return Certificate(self.group_id, self.view, self.seq, self.tree_size, leaf_index,
                           self.root, entry, self.proof(leaf_index), self.signatures)

    def reply(self, node: int, items: Sequence[tuple[int, RequestEntry]]) -> Reply:
        """The (unsigned) REPLY of ``node`` carrying the certificates of ``items``, ``(leaf
        index, entry)`` of this tree: what :meth:`Reply.of` makes of :meth:`certificate`'s,
        without making them."""
        if not 0 < len(items) <= MAX_REPLY_ITEMS:
            raise WireError(f"{len(items)} certificates in one reply")
        proof, new_item = self.merkle.proof, tuple.__new__
        return Reply(self.group_id, node, self.view, self.seq, self.tree_size, self.root,
                     self.signatures,
                     tuple([new_item(ReplyItem, (index, entry, tuple(proof(index))))
                            for index, entry in items]))

    def reply_frame(self, node: int, leaf_indices: Sequence[int],
                    key: _core.SigningKey) -> bytes:
        """The encoded REPLY of ``node`` carrying the certificates of leaves
        ``leaf_indices``, signed with ``key``: the bytes of ``reply(node, items).signed(key)
        .encoded``, written by the Rust core from the tree and its leaves without an object
        per field (a node sends one per client and committed batch). WireError if they do
        not fit (no leaves, too many, a leaf that is not a request entry)."""
        try:
            return self.merkle.reply(key, self.group_id, node, self.view, self.seq,
                                     list(self.signatures), list(leaf_indices))
        except ValueError as error:
            raise WireError(str(error)) from None
        except (OverflowError, TypeError) as error:  # a field out of its width, or no int
            raise WireError(f"reply fields do not fit their widths (node {node!r}, leaf "
                            f"indices {list(leaf_indices)[:8]!r}): {error}") from None


@dataclass(frozen=True, eq=False)
class KeptBatch:
    """What a node keeps of an executed batch for clients that ask again: the COMMIT
    statement's fields, its signatures and the leaves (the entries' encodings). Entries and
    inclusion proofs are made again from the leaves when asked for.

    Until the twenty-first round the cache kept each batch's tree with every leaf's proof as a
    list of hashes, and the replies with every entry as objects: kept for MAX_REPLY_CACHE
    requests (a second of load), that was a few dozen objects per request alive at a time,
    and a node's heap churning through them made its Python about a tenth slower after half
    a minute of load (benches/HISTORY.md, "Twenty-first round"). A :class:`CommittedTree`
    now holds its tree in the Rust core, but the entries a REPLY action carries are still
    objects; what is kept is the leaves alone.
    """

    group_id: bytes
    view: int
    seq: int
    root: bytes
    signatures: tuple[tuple[int, bytes], ...]
    leaves: Sequence[bytes]

    @classmethod
    def of(cls, tree: CommittedTree, leaves: Sequence[bytes]) -> KeptBatch:
        """What to keep of ``tree``, whose leaves are ``leaves``."""
        if len(leaves) != tree.tree_size:
            raise ValueError(f"{len(leaves)} leaves for a tree of {tree.tree_size}")
        return cls(tree.group_id, tree.view, tree.seq, tree.root, tree.signatures, leaves)

    def entry(self, leaf_index: int) -> RequestEntry:
        """The entry at ``leaf_index``, decoded from its leaf."""
        return RequestEntry.decode(self.leaves[leaf_index])

    def entry_of(self, leaf_index: int, request: bytes) -> RequestEntry | None:
        """:meth:`entry`, if it orders the request of digest ``request`` (else None, and
        nothing is decoded: a client that reuses an id costs a comparison)."""
        leaf = self.leaves[leaf_index]
        return RequestEntry.decode(leaf) if RequestEntry.request_of(leaf) == request else None

    @cached_property
    def tree(self) -> CommittedTree:
        """The batch's tree, its proofs computed again (once, on the first re-send: a
        client that re-sends one request of a batch is likely to re-send others; they are
        kept while any of the batch's requests is in the reply cache)."""
        return CommittedTree(self.group_id, self.view, self.seq, self.signatures,
                             _core.MerkleTree(list(self.leaves)))


def commit_tree(
    group_id: bytes,
    view: int,
    seq: int,
    leaves: Sequence[bytes],
    commits: Sequence[Commit],
) -> CommittedTree:
    """The tree of the committed batch ``leaves`` (the entries' encodings, in order) and the
    matching COMMITs of distinct nodes (at least 2f+1) that certify it."""
    return CommittedTree(group_id, view, seq,
                         tuple(sorted((c.node, c.signature) for c in commits)),
                         _core.MerkleTree(list(leaves)))


def build(
    group_id: bytes,
    view: int,
    seq: int,
    leaves: Sequence[bytes],
    leaf_index: int,
    entry: RequestEntry,
    commits: Sequence[Commit],
) -> Certificate:
    """The certificate of ``entry``, leaf ``leaf_index`` of the committed batch ``leaves``.

    ``commits`` are the matching COMMITs of distinct nodes (at least 2f+1).
    """
    return build_many(group_id, view, seq, leaves, [(leaf_index, entry)], commits)[0]


def build_many(
    group_id: bytes,
    view: int,
    seq: int,
    leaves: Sequence[bytes],
    entries: Sequence[tuple[int, RequestEntry]],
    commits: Sequence[Commit],
) -> list[Certificate]:
    """The certificates of several entries ``(leaf index, entry)`` of one committed batch,
    from one pass over its Merkle tree."""
    for index, entry in entries:
        if not 0 <= index < len(leaves) or leaves[index] != entry.encoded:
            raise ValueError(f"leaf {index} is not the entry's encoding")
    if not entries:
        return []
    tree = commit_tree(group_id, view, seq, leaves, commits)
    return [tree.certificate(index, entry) for index, entry in entries]


def verify(cert: Certificate, manifest: Manifest) -> None:
    """Raises CertificateError unless ``cert`` verifies against ``manifest`` (steps 1-5)."""
    verify_entry(cert, manifest)
    verify_signatures(cert, manifest)


def signed_part(cert: Certificate) -> tuple:
    """What steps 4-5 check: equal for every certificate of one committed batch. (The client
    keys its once-per-batch check by the REPLY's fields instead, without the group id, which
    steps 1-3 check against the manifest for every item.)"""
    return (cert.group_id, cert.view, cert.seq, cert.tree_size, cert.root, cert.signatures)


def verify_entry(cert: Certificate, manifest: Manifest) -> None:
    """Steps 1-3: the group, the entry, and its inclusion proof under the root."""
    # 1. The group.
    if cert.group_id != manifest.group_id:
        raise CertificateError(
            f"group id {cert.group_id.hex()} is not the manifest's {manifest.group_id.hex()}"
        )
    # 2. The entry is a well-formed agreement of this group.
    problem = check_entry(cert.entry, manifest.quorum, manifest.threshold, manifest.n)
    if problem:
        raise CertificateError(problem)
    # 3. The entry is in the committed tree.
    if not 0 <= cert.leaf_index < cert.tree_size:
        raise CertificateError(f"leaf index {cert.leaf_index} outside tree of {cert.tree_size}")
    if not _core.merkle_verify(
        cert.entry.encoded, cert.leaf_index, cert.tree_size, list(cert.proof), cert.root
    ):
        raise CertificateError("inclusion proof does not lead to the root")


def verify_signatures(cert: Certificate, manifest: Manifest) -> None:
    """Steps 4-5: 2f+1 distinct nodes of the group signed the commit statement of the root."""
    verify_commit_signatures(manifest, cert.view, cert.seq, cert.tree_size, cert.root,
                             cert.signatures)


def verify_commit_signatures(manifest: Manifest, view: int, seq: int, tree_size: int,
                             root: bytes, signatures: Sequence[tuple[int, bytes]]) -> None:
    """Steps 4-5 for the batch ``(view, seq, tree_size, root)`` of the manifest's group,
    whose certificates all carry ``signatures``."""
    # 4. 2f+1 distinct nodes of the group signed.
    nodes = [node for node, _ in signatures]
    if len(set(nodes)) != len(nodes) or any(not 0 <= i < manifest.n for i in nodes):
        raise CertificateError(f"signers {nodes} are not distinct nodes below {manifest.n}")
    if len(nodes) < manifest.quorum:
        raise CertificateError(f"{len(nodes)} signatures, need {manifest.quorum}")
    # 5. Every signature verifies over the node's COMMIT statement.
    items = [
        (Statement(Kind.COMMIT, manifest.group_id, node, view, seq, tree_size, root).encoded,
         signature, manifest.node_key(node))
        for node, signature in signatures
    ]
    bad = _core.batch_verify(items)
    if bad:
        raise CertificateError(f"bad commit signatures of nodes {[nodes[i] for i in bad]}")


def is_valid(cert: Certificate, manifest: Manifest) -> bool:
    """Whether ``cert`` verifies against ``manifest``."""
    try:
        verify(cert, manifest)
    except CertificateError:
        return False
    return True


def to_dict(cert: Certificate) -> dict[str, Any]:
    """The JSON form: bytes as lowercase hex, scores as JSON numbers."""
    e = cert.entry
    return {
        "version": 1,
        "group_id": cert.group_id.hex(),
        "view": cert.view,
        "seq": cert.seq,
        "tree_size": cert.tree_size,
        "leaf_index": cert.leaf_index,
        "root": cert.root.hex(),
        "entry": {
            "request": e.request.hex(),
            "client": e.client.hex(),
            "request_id": e.request_id,
            "votes": [
                {
                    "node": v.node,
                    "model_version": v.model_version.hex(),
                    "label": v.label,
                    "score": v.score,
                }
                for v in e.votes
            ],
            "label": e.label,
            "threshold": e.threshold,
            "reached": e.reached,
        },
        "proof": [h.hex() for h in cert.proof],
        "signatures": [{"node": n, "signature": s.hex()} for n, s in cert.signatures],
    }


def from_dict(data: dict[str, Any]) -> Certificate:
    """Parses :func:`to_dict`'s form; WireError on anything malformed."""
    try:
        if data["version"] != 1:
            raise WireError(f"unknown certificate version {data['version']}")
        e = data["entry"]
        entry = RequestEntry(
            request=bytes.fromhex(e["request"]),
            client=bytes.fromhex(e["client"]),
            request_id=int(e["request_id"]),
            votes=tuple(
                EntryVote(
                    int(v["node"]),
                    bytes.fromhex(v["model_version"]),
                    int(v["label"]),
                    float(v["score"]),
                )
                for v in e["votes"]
            ),
            label=int(e["label"]),
            threshold=int(e["threshold"]),
            reached=bool(e["reached"]),
        )
        cert = Certificate(
            group_id=bytes.fromhex(data["group_id"]),
            view=int(data["view"]),
            seq=int(data["seq"]),
            tree_size=int(data["tree_size"]),
            leaf_index=int(data["leaf_index"]),
            root=bytes.fromhex(data["root"]),
            entry=entry,
            proof=tuple(bytes.fromhex(h) for h in data["proof"]),
            signatures=tuple(
                (int(s["node"]), bytes.fromhex(s["signature"])) for s in data["signatures"]
            ),
        )
        return Certificate.decode(cert.encoded)  # enforces every field's range and size
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
        raise WireError(f"malformed certificate JSON: {error!r}") from None


def to_json(cert: Certificate) -> str:
    return json.dumps(to_dict(cert), indent=2)


def from_json(text: str) -> Certificate:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise WireError(f"certificate is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise WireError("certificate JSON is not an object")
    return from_dict(data)
