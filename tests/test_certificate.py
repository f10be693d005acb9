"""Certificates, manifests and evidence: verify with the manifest alone; alterations fail."""

import dataclasses
import hashlib

import pytest
from dropbear import _core
from dropbear.agreement import make_entry
from dropbear.certificate import CertificateError, build, from_json, is_valid, to_json, verify
from dropbear.evidence import Evidence, EvidenceBundle, EvidenceError
from dropbear.manifest import Manifest, ManifestError
from dropbear.wire import (
    Certificate,
    Commit,
    EntryVote,
    Kind,
    Request,
    Statement,
    Vote,
    Votes,
    WireError,
    decode,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sim.group import make_group

GROUP = make_group(4)
M = GROUP.manifest


def certificate(n_entries=5, index=3, signers=(0, 1, 2)):
    entries = []
    for i in range(n_entries):
        request = Request.create(GROUP.node_keys[0], M.group_id, i, "uint8", (1,), bytes([i]))
        votes = [EntryVote(node, bytes([node]) * 32, i % 3, 0.25 * node) for node in range(4)]
        entries.append(make_entry(request.header, votes, M.threshold))
    leaves = [e.encoded for e in entries]
    root = _core.merkle_root(leaves)
    commits = [
        Commit(Statement(Kind.COMMIT, M.group_id, i, 2, 9, len(leaves), root)).signed(
            GROUP.node_keys[i]
        )
        for i in signers
    ]
    return build(M.group_id, 2, 9, leaves, index, entries[index], commits)


def test_good_certificate_verifies_and_round_trips():
    cert = certificate()
    verify(cert, M)
    assert Certificate.decode(cert.encoded) == cert
    assert from_json(to_json(cert)) == cert
    for size in (1, 2, 7):
        for index in range(size):
            verify(certificate(size, index), M)


def altered(cert):
    yield "group", dataclasses.replace(cert, group_id=bytes(32))
    yield "view", dataclasses.replace(cert, view=cert.view + 1)
    yield "seq", dataclasses.replace(cert, seq=cert.seq + 1)
    yield "size", dataclasses.replace(cert, tree_size=cert.tree_size + 1)
    yield "index", dataclasses.replace(cert, leaf_index=cert.leaf_index - 1)
    yield "root", dataclasses.replace(cert, root=bytes(32))
    yield "proof", dataclasses.replace(cert, proof=cert.proof[:-1])
    yield "signers", dataclasses.replace(cert, signatures=cert.signatures[:2])
    yield "dup signer", dataclasses.replace(cert, signatures=cert.signatures[:2] * 2)
    node, sig = cert.signatures[0]
    yield (
        "signature",
        dataclasses.replace(
            cert, signatures=((node, bytes([sig[0] ^ 1]) + sig[1:]),) + cert.signatures[1:]
        ),
    )
    e = cert.entry
    yield "label", dataclasses.replace(cert, entry=dataclasses.replace(e, label=e.label + 1))
    yield "reached", dataclasses.replace(cert, entry=dataclasses.replace(e, reached=not e.reached))
    yield (
        "request id",
        dataclasses.replace(cert, entry=dataclasses.replace(e, request_id=e.request_id + 1)),
    )
    v = e.votes[1]
    yield (
        "vote",
        dataclasses.replace(
            cert,
            entry=dataclasses.replace(
                e, votes=(e.votes[0], v._replace(score=0.3)) + e.votes[2:]
            ),
        ),
    )
    yield (
        "few votes",
        dataclasses.replace(
            cert, entry=dataclasses.replace(e, votes=e.votes[:2], label=e.votes[0].label)
        ),
    )


@pytest.mark.parametrize("what", [name for name, _ in altered(certificate())])
def test_altered_certificate_fails(what):
    bad = dict(altered(certificate()))[what]
    with pytest.raises(CertificateError):
        verify(bad, M)
    assert not is_valid(bad, M)


def test_other_manifest_rejects():
    other = make_group(4, name="other").manifest
    assert not is_valid(certificate(), other)


def test_json_garbage_is_wire_error():
    for text in (
        "",
        "[]",
        '{"version": 1}',
        to_json(certificate()).replace('"view": 2', '"view": -1'),
    ):
        with pytest.raises(WireError):
            from_json(text)


def test_manifest_encoding_toml_and_group_id(tmp_path):
    assert M.n == 4 and M.f == 1 and M.quorum == 3 and M.threshold == 3
    assert Manifest.decode(M.encoded) == M
    assert M.group_id == _core.sha256(M.encoded)
    M.save(tmp_path / "group.toml")
    assert Manifest.load(tmp_path / "group.toml") == M
    assert make_group(4, threshold=2).manifest.group_id != M.group_id
    with pytest.raises(ManifestError, match="tolerate"):
        Manifest("x", 1, M.nodes[:3])
    with pytest.raises(ManifestError, match="host:port"):
        Manifest("x", 1, (dataclasses.replace(M.nodes[0], address="nowhere"),) + M.nodes[1:])
    with pytest.raises(ManifestError, match="group_id"):
        Manifest.from_dict({**M.to_dict(), "group_id": "00" * 32})


def test_statement_equivocation_is_evidence():
    key = GROUP.node_keys[1]
    a = Statement(Kind.PREPARE, M.group_id, 1, 3, 4, 2, b"\x01" * 32)
    b = dataclasses.replace(a, digest=b"\x02" * 32)
    evidence = Evidence.of_statements(a, key.sign(a.encoded), b, key.sign(b.encoded))
    assert evidence.culprit(M) == 1
    bundle = EvidenceBundle(M.group_id, (evidence,))
    assert EvidenceBundle.from_json(bundle.to_json()).culprits(M) == {1}
    same = Evidence.of_statements(a, key.sign(a.encoded), a, key.sign(a.encoded))
    with pytest.raises(EvidenceError, match="agree"):
        same.culprit(M)
    other_slot = dataclasses.replace(b, seq=5)
    with pytest.raises(EvidenceError, match="different"):
        Evidence.of_statements(
            a, key.sign(a.encoded), other_slot, key.sign(other_slot.encoded)
        ).culprit(M)
    forged = Evidence.of_statements(a, key.sign(a.encoded), b, GROUP.node_keys[2].sign(b.encoded))
    with pytest.raises(EvidenceError, match="signature"):
        forged.culprit(M)


def test_votes_equivocation_is_evidence():
    key = GROUP.node_keys[2]
    a = Votes(M.group_id, 2, b"\x05" * 32, (Vote(b"\x09" * 32, 1, 0.5),)).signed(key)
    b = Votes(M.group_id, 2, b"\x05" * 32, (Vote(b"\x09" * 32, 2, 0.5),)).signed(key)
    assert Evidence.of_votes(a, b).culprit(M) == 2
    newer = dataclasses.replace(b, model_version=b"\x06" * 32).signed(key)
    with pytest.raises(EvidenceError):
        Evidence.of_votes(a, newer).culprit(M)
    with pytest.raises(EvidenceError, match="undecodable"):
        Evidence("votes", b"junk", b"junk").culprit(M)


def test_docs_worked_example():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "certificates.md").read_text()

    def block(label):
        return bytes.fromhex(re.search(label + r":\n```\n([0-9a-f]+)\n```", text).group(1))

    manifest = Manifest.decode(block("manifest"))
    cert = Certificate.decode(block("certificate"))
    verify(cert, manifest)
    assert cert.entry.encoded == block(r"entry \(leaf 0\)")
    assert cert.statement(0).encoded == block(
        r"COMMIT statement of node 0 \(view 0, seq 1, size 2\)"
    )


def test_one_batch_shares_its_signed_part_and_each_half_checks_its_own_steps():
    from dropbear.certificate import signed_part, verify_entry, verify_signatures

    first, second = certificate(index=1), certificate(index=3)
    # The client checks a batch's commit signatures once: every certificate of the batch
    # has the same signed part, and the entry half still checks each certificate's proof.
    assert signed_part(first) == signed_part(second)
    verify_entry(second, M)
    verify_signatures(second, M)
    node, signature = second.signatures[0]
    forged = dataclasses.replace(
        second, signatures=((node, bytes([signature[0] ^ 1]) + signature[1:]),)
        + second.signatures[1:])
    assert signed_part(forged) != signed_part(second)
    with pytest.raises(CertificateError, match="bad commit signatures of nodes"):
        verify_signatures(forged, M)
    moved = dataclasses.replace(second, leaf_index=2)
    assert signed_part(moved) == signed_part(second)
    with pytest.raises(CertificateError, match="inclusion proof"):
        verify_entry(moved, M)


def committed_batch(n_entries, first_id, view, seq, signers=(0, 1, 2)):
    """Entries of ``n_entries`` requests (ids from ``first_id``), their leaves, and COMMITs
    of batch ``seq`` in ``view`` by ``signers``."""
    entries = []
    for i in range(n_entries):
        request = Request.create(GROUP.node_keys[0], M.group_id, first_id + i, "uint8", (1,),
                                 bytes([i]))
        votes = [EntryVote(node, bytes([node]) * 32, i % 3, 0.5) for node in range(4)]
        entries.append(make_entry(request.header, votes, M.threshold))
    leaves = [e.encoded for e in entries]
    root = _core.merkle_root(leaves)
    commits = [
        Commit(Statement(Kind.COMMIT, M.group_id, i, view, seq, len(leaves), root)).signed(
            GROUP.node_keys[i])
        for i in signers
    ]
    return entries, leaves, commits


def test_build_many_equals_build_one_by_one():
    from dropbear.certificate import build_many

    entries, leaves, commits = committed_batch(7, 0, 0, 4)
    chosen = [(0, entries[0]), (3, entries[3]), (6, entries[6])]
    many = build_many(M.group_id, 0, 4, leaves, chosen, commits)
    assert many == [build(M.group_id, 0, 4, leaves, i, e, commits) for i, e in chosen]
    for cert in many:
        verify(cert, M)
    with pytest.raises(ValueError, match="leaf 1 is not the entry's encoding"):
        build_many(M.group_id, 0, 4, leaves, [(1, entries[2])], commits)


def batch_certificates(n_entries=6, signers=(0, 1, 2)):
    from dropbear.certificate import build_many

    entries, leaves, commits = committed_batch(n_entries, 100, 1, 8, signers)
    return build_many(M.group_id, 1, 8, leaves, list(enumerate(entries)), commits)


def test_reply_carries_a_batch_of_certificates_that_verify_after_decoding():
    from dropbear.wire import Reply, decode

    certs = batch_certificates()
    chosen = [certs[1], certs[4], certs[5]]
    reply = Reply.of(2, chosen).signed(GROUP.node_keys[2])
    again = decode(reply.encoded)
    assert again == reply and again.verify(GROUP.node_keys[2].public_key)
    assert list(again.certificates) == chosen
    for cert in again.certificates:
        verify(cert, M)
    # The commit signatures travel once, not once per certificate.
    assert len(reply.encoded) < sum(len(c.encoded) for c in chosen) - 2 * 3 * 66
    assert Reply.peek(reply.encoded) == (2, (101, 104, 105))
    assert Reply.peek(chosen[0].encoded) is None and Reply.peek(b"\x01\x0c") is None


def test_a_reply_is_signed_over_the_sha256_of_its_body():
    """docs/certificates.md: the node's REPLY signature is Ed25519 over a context prefix and
    SHA-256(body), so a third party checks it from the bytes alone; a changed byte or another
    node's key fails."""
    from dropbear.wire import Reply, decode

    reply = Reply.of(2, batch_certificates()[:2]).signed(GROUP.node_keys[2])
    body, signature = reply.encoded[:-64], reply.encoded[-64:]
    key = GROUP.node_keys[2].public_key
    assert _core.verify(key, b"dropbear reply\x00" + hashlib.sha256(body).digest(), signature)
    assert not _core.verify(key, hashlib.sha256(body).digest(), signature)
    assert not _core.verify(key, body, signature)
    assert not decode(reply.encoded).verify(GROUP.node_keys[1].public_key)
    damaged = bytearray(reply.encoded)
    damaged[-70] ^= 1  # the last proof hash
    assert not decode(bytes(damaged)).verify(key)


def test_reply_refuses_mixed_batches_and_ids_that_do_not_match_its_entries():
    from dropbear.wire import Reply, decode

    certs = batch_certificates()
    other = batch_certificates(signers=(1, 2, 3))
    with pytest.raises(WireError, match="certificate of batch 8 in a reply for batch 8"):
        Reply.of(0, [certs[0], other[1]])
    with pytest.raises(WireError, match="0 certificates"):
        Reply.of(0, [])
    data = bytearray(Reply.of(0, certs[:2]).signed(GROUP.node_keys[0]).encoded)
    # The listed request id of the first item (right after the item count) is 100: say 101.
    offset = 2 + 32 + 2 + 8 + 8 + 4 + 32 + 2
    assert int.from_bytes(data[offset:offset + 8], "big") == 100
    data[offset + 7] = 101
    with pytest.raises(WireError, match="reply lists request 101 but carries 100"):
        decode(bytes(data))


def test_a_committed_tree_makes_the_certificates_and_the_reply_build_many_would():
    from dropbear.certificate import build_many, commit_tree
    from dropbear.wire import MAX_REPLY_ITEMS, Reply

    entries, leaves, commits = committed_batch(9, 100, 1, 8)
    tree = commit_tree(M.group_id, 1, 8, leaves, commits)
    chosen = [(1, entries[1]), (4, entries[4]), (8, entries[8])]
    certs = build_many(M.group_id, 1, 8, leaves, chosen, commits)
    assert [tree.certificate(i, e) for i, e in chosen] == certs
    reply = tree.reply(3, chosen)
    assert reply == Reply.of(3, certs)
    assert reply.signed(GROUP.node_keys[3]).encoded == \
        Reply.of(3, certs).signed(GROUP.node_keys[3]).encoded
    for cert in reply.certificates:
        verify(cert, M)
    with pytest.raises(WireError, match="0 certificates in one reply"):
        tree.reply(3, [])
    with pytest.raises(WireError, match=f"{MAX_REPLY_ITEMS + 1} certificates in one reply"):
        tree.reply(3, [chosen[0]] * (MAX_REPLY_ITEMS + 1))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 40), signers=st.sampled_from([(0, 1, 2), (1, 2, 3),
                                                                         (0, 1, 2, 3)]))
def test_the_core_writes_the_signed_reply_the_python_writer_does(data, size, signers):
    """A node's REPLY frames come from the Rust core (``CommittedTree.reply_frame``): the
    very bytes of ``Reply.signed(key).encoded``, which the client reads back whole."""
    from dropbear.certificate import commit_tree
    from dropbear.wire import Reply, decode

    entries, leaves, commits = committed_batch(size, 100, 1, 8, signers=signers)
    tree = commit_tree(M.group_id, 1, 8, leaves, commits)
    indices = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=size + 3),
                        label="leaf indices")
    node = data.draw(st.integers(0, 3), label="node")
    key = GROUP.node_keys[node]
    frame = tree.reply_frame(node, indices, key)
    assert frame == tree.reply(node, [(i, entries[i]) for i in indices]).signed(key).encoded
    reply = decode(frame)
    assert isinstance(reply, Reply) and reply.verify(key.public_key)
    for cert in reply.certificates:
        verify(cert, M)


def test_the_core_refuses_a_reply_it_cannot_write():
    from dropbear.certificate import CommittedTree, commit_tree
    from dropbear.wire import MAX_REPLY_ITEMS, REPLY_SIGNING_CONTEXT

    assert _core.REPLY_SIGNING_CONTEXT == REPLY_SIGNING_CONTEXT
    entries, leaves, commits = committed_batch(3, 100, 1, 8)
    tree = commit_tree(M.group_id, 1, 8, leaves, commits)
    key = GROUP.node_keys[0]
    with pytest.raises(WireError, match="0 certificates in one reply"):
        tree.reply_frame(0, [], key)
    with pytest.raises(WireError, match=f"{MAX_REPLY_ITEMS + 1} certificates in one reply"):
        tree.reply_frame(0, [0] * (MAX_REPLY_ITEMS + 1), key)
    with pytest.raises(WireError, match="leaf 3 of a tree of 3"):
        tree.reply_frame(0, [3], key)
    not_entries = CommittedTree(M.group_id, 1, 8, tree.signatures,
                                _core.MerkleTree([b"not an entry"] * 2))
    with pytest.raises(WireError, match="leaf 1 is not a request entry"):
        not_entries.reply_frame(0, [1], key)
    bad_signature = CommittedTree(M.group_id, 1, 8, ((0, b"short"),), tree.merkle)
    with pytest.raises(WireError, match="commit signature is 5 bytes, expected 64"):
        bad_signature.reply_frame(0, [0], key)
    with pytest.raises(WireError, match="reply fields do not fit their widths"):
        tree.reply_frame(0, [-1], key)
    for index in (-1, 3):
        with pytest.raises(IndexError, match=f"leaf index {index} is out of range for a tree "
                                             "of 3"):
            tree.proof(index)
    with pytest.raises(WireError, match="reply fields do not fit their widths"):
        tree.reply_frame(2**16, [0], key)


@pytest.mark.parametrize("size", [1, 2, 3, 8, 9, 17])
def test_a_kept_batch_makes_the_certificates_its_committed_tree_made(size):
    """What the reply cache keeps (the leaves, no proofs, no entry objects) answers a re-sent
    request with the very certificate, and REPLY, that the node sent first."""
    from dropbear.certificate import KeptBatch, commit_tree

    entries, leaves, commits = committed_batch(size, 100, 1, 8)
    tree = commit_tree(M.group_id, 1, 8, leaves, commits)
    kept = KeptBatch.of(tree, leaves)
    assert "tree" not in vars(kept)  # proofs are made again only when a client asks again
    for i, entry in enumerate(entries):
        assert kept.entry(i) == entry
        assert kept.entry_of(i, entry.request) == entry
        assert kept.entry_of(i, bytes(32)) is None  # another request under that id
        assert kept.tree.certificate(i, kept.entry(i)) == tree.certificate(i, entry)
        verify(kept.tree.certificate(i, kept.entry(i)), M)
    assert kept.tree is kept.tree
    chosen = [(i, entries[i]) for i in range(0, size, 2)]
    assert kept.tree.reply(2, chosen).signed(GROUP.node_keys[2]).encoded == \
        tree.reply(2, chosen).signed(GROUP.node_keys[2]).encoded
    with pytest.raises(ValueError, match=f"{size - 1} leaves for a tree of {size}"):
        KeptBatch.of(tree, leaves[:-1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=4, max_size=4),
                          st.integers(0, 3), st.booleans(), st.integers(0, 4)),
                min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       st.sampled_from(["keep", "truncate", "extend"]))
def test_the_clients_reply_reader_agrees_with_the_reference(entries, flips, end):
    """The client reads REPLYs with the Rust core (``_core.read_reply``: the frame parsed in
    place, steps 1-3 of each certificate checked). On REPLYs of honest and lying entries
    (a wrong label or reached flag, too few votes), with bytes flipped, cut or added, it must
    refuse exactly the frames ``wire.decode`` refuses and find exactly the certificates
    ``certificate.verify_entry`` refuses, with the same reason."""
    from dropbear.certificate import CertificateError, build_many, verify_entry
    from dropbear.wire import Reply, RequestEntry

    made = []
    for i, (labels, voters_dropped, lie, claimed) in enumerate(entries):
        request = Request.create(GROUP.node_keys[0], M.group_id, 500 + i, "uint8", (1,),
                                 bytes([i]))
        votes = tuple(EntryVote(node, bytes([node]) * 32, labels[node], 0.25)
                      for node in range(4 - voters_dropped))
        honest = make_entry(request.header, votes, M.threshold)
        made.append(RequestEntry(honest.request, honest.client, honest.request_id, votes,
                                 claimed if lie else honest.label, M.threshold,
                                 not honest.reached if lie and claimed == 4 else honest.reached))
    leaves = [e.encoded for e in made]
    root = _core.merkle_root(leaves)
    commits = [Commit(Statement(Kind.COMMIT, M.group_id, i, 1, 7, len(leaves), root)).signed(
        GROUP.node_keys[i]) for i in range(3)]
    certs = build_many(M.group_id, 1, 7, leaves, list(enumerate(made)), commits)
    frame = bytearray(Reply.of(2, certs).signed(GROUP.node_keys[2]).encoded)
    for at, value in flips:
        frame[at % len(frame)] = value
    if end == "truncate":
        del frame[-(1 + flips[0][0] % 40 if flips else 1):]
    elif end == "extend":
        frame += b"\x00"
    frame = bytes(frame)

    try:
        reference = decode(frame)
    except WireError:
        reference = None
    try:
        got = _core.read_reply(frame, M.group_id, M.n, M.quorum, M.threshold)
    except ValueError:
        got = None
    if not isinstance(reference, Reply):
        event("frame refused")
        assert got is None
        return
    assert got is not None
    node, view, seq, size, root_read, signatures, items = got
    assert (node, view, seq, size, root_read, signatures) == (
        reference.node, reference.view, reference.seq, reference.tree_size, reference.root,
        reference.signatures)
    expected = []
    for cert in reference.certificates:
        try:
            verify_entry(cert, M)
            problem = None
        except CertificateError as error:
            problem = str(error)
        e = cert.entry
        expected.append((e.request_id, e.request, e.client, e.label, e.reached,
                         tuple((v.node, v.label) for v in e.votes), problem))
        event("certificate refused" if problem else "certificate accepted")
    assert list(items) == expected


def test_the_reply_readers_limits_are_the_wire_limits():
    from dropbear.limits import MAX_MESSAGE_BYTES, MAX_NODES
    from dropbear.wire import MAX_PROOF_HASHES, MAX_REPLY_ITEMS

    assert (_core.REPLY_MAX_ITEMS, _core.REPLY_MAX_NODES, _core.REPLY_MAX_PROOF_HASHES,
            _core.REPLY_MAX_MESSAGE_BYTES) == (MAX_REPLY_ITEMS, MAX_NODES, MAX_PROOF_HASHES,
                                               MAX_MESSAGE_BYTES)
