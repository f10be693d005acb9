"""Wire: canonical round trips; random and mutated bytes raise WireError only."""

import dataclasses
import re
import struct

import pytest
from dropbear import _core, wire
from dropbear.wire import (
    Batch,
    CatchupRequest,
    CatchupResponse,
    Checkpoint,
    Commit,
    CommittedBatch,
    Kind,
    ModelUpdate,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Proposal,
    Request,
    Statement,
    ViewChange,
    Vote,
    Votes,
    WireError,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.group import make_group

GROUP = make_group(4)
GID = GROUP.group_id
K = GROUP.node_keys


def statement(kind, node=0, view=1, seq=2, size=3, digest=b"\x07" * 32):
    return Statement(kind, GID, node, view, seq, size, digest)


def samples():
    request = Request.create(K[0], GID, 7, "float32", (2, 3), bytes(24))
    votes = Votes(GID, 1, b"\x01" * 32, (Vote(request.digest, 3, 0.75),)).signed(K[1])
    update = ModelUpdate(GID, 2, b"\x02" * 32, 5).signed(GROUP.owner_keys[2])
    batch = Batch((request.header,), (votes,), (update,))
    pre = PrePrepare(statement(Kind.PRE_PREPARE), batch=batch).signed(K[0])
    prepare = Prepare(statement(Kind.PREPARE, node=1), proposal_signature=pre.signature)
    prepare = prepare.signed(K[1])
    commit = Commit(statement(Kind.COMMIT, node=2)).signed(K[2])
    checkpoint = Checkpoint(statement(Kind.CHECKPOINT, node=3, view=0, size=0)).signed(K[3])
    proof = PreparedProof(1, 2, batch, (prepare,))
    change = ViewChange(GID, 1, 2, 0, (checkpoint,), (proof,)).signed(K[1])
    new_view = NewView(GID, 2, 2, (change,), (Proposal(2, 3, b"\x07" * 32, bytes(64)),))
    committed = CommittedBatch(1, 2, batch, (commit,))
    return [
        request,
        votes,
        update,
        pre,
        prepare,
        commit,
        checkpoint,
        change,
        new_view.signed(K[2]),
        CatchupRequest(GID, 3, 17).signed(K[3]),
        CatchupResponse(GID, 0, (committed,)).signed(K[0]),
        reply_sample(),
    ]


def reply_sample():
    from dropbear.agreement import make_entry
    from dropbear.certificate import build_many
    from dropbear.wire import EntryVote, Reply

    heads = [Request.create(K[0], GID, i, "uint8", (1,), bytes([i])).header for i in range(3)]
    entries = [make_entry(h, [EntryVote(n, bytes([n]) * 32, 1, 0.5) for n in range(3)], 3)
               for h in heads]
    leaves = [e.encoded for e in entries]
    commits = [Commit(statement(Kind.COMMIT, node=n, size=3,
                                digest=_core.merkle_root(leaves))).signed(K[n])
               for n in range(3)]
    certs = build_many(GID, 1, 2, leaves, [(0, entries[0]), (2, entries[2])], commits)
    return Reply.of(1, certs).signed(K[1])


SAMPLES = samples()


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_and_signature(message):
    data = message.encoded
    again = wire.decode(data)
    assert type(again) is type(message)
    assert again.encoded == data
    assert again.digest == message.digest
    assert data[0] == wire.VERSION and data[1] == message.KIND


def test_signatures_verify_with_the_right_key_only():
    request, votes, update = SAMPLES[:3]
    assert request.verify(K[0].public_key) and not request.verify(K[1].public_key)
    assert votes.verify(K[1].public_key)
    assert update.verify(GROUP.owner_keys[2].public_key) and not update.verify(K[2].public_key)
    assert not votes.verify(b"short")


def test_request_input_must_match_shape_and_digest():
    request = SAMPLES[0]
    assert request.data_matches()
    with pytest.raises(ValueError, match="needs 24"):
        Request(request.header, bytes(23))
    tampered = Request(request.header, b"\x01" + bytes(23))
    assert not tampered.data_matches()


def test_statement_is_88_bytes_and_documented_layout():
    s = statement(Kind.COMMIT, node=2, view=1, seq=2, size=3)
    assert len(s.encoded) == Statement.SIZE
    assert s.encoded[:2] == b"\x01\x06" and s.encoded[2:34] == GID
    assert s.encoded[34:56] == struct.pack(">HQQI", 2, 1, 2, 3)
    assert Statement.decode(s.encoded) == s


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "too short"),
        (b"\x02\x01", "unknown version"),
        (b"\x01\x7f", "unknown message kind"),
        (SAMPLES[5].encoded[:-1], "truncated"),
        (SAMPLES[5].encoded + b"\x00", "trailing"),
        (b"\x01\x01" + bytes(wire.MAX_MESSAGE_BYTES), "limit"),
    ],
)
def test_bad_bytes_name_the_problem(data, reason):
    with pytest.raises(WireError, match=reason):
        wire.decode(data)


def test_nan_score_is_refused():
    votes = SAMPLES[1]
    data = bytearray(votes.encoded)
    offset = len(votes.body) - 8
    data[offset : offset + 8] = struct.pack(">d", float("nan"))
    with pytest.raises(WireError, match="finite"):
        wire.decode(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    try:
        wire.decode(data)
    except WireError:
        pass


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10**6),
)
def test_mutated_bytes_never_crash(message, flips, cut):
    data = bytearray(message.encoded)
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: max(2, len(data) - cut % 8)] if cut % 3 == 0 else data
    try:
        decoded = wire.decode(bytes(data))
    except WireError:
        return
    assert decoded.encoded == bytes(data)
    # Whatever decodes is canonical: encoding its fields afresh (decoding keeps the bytes
    # it read as the body, the statement and the entries: they must be the encoding).
    assert rebuilt(decoded).encoded == bytes(data)


def rebuilt(value):
    """A deep copy of a decoded value made from its fields alone, so nothing cached on
    decoding (bodies, encodings) carries over."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(**{f.name: rebuilt(getattr(value, f.name))
                              for f in dataclasses.fields(value) if f.init})
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # Vote, EntryVote
        return type(value)(*(rebuilt(v) for v in value))
    if isinstance(value, tuple):
        return tuple(rebuilt(v) for v in value)
    return value


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_decoded_messages_keep_the_bytes_they_were_read_from(message):
    again = wire.decode(message.encoded)
    fresh = rebuilt(again)
    assert "body" not in vars(fresh) and fresh.encoded == message.encoded
    assert again.body == fresh.body and again.digest == fresh.digest


@given(
    st.integers(0, 2**64 - 1),
    st.sampled_from(sorted(wire.DTYPES)),
    st.lists(st.integers(0, 4), max_size=3),
)
def test_request_round_trip(request_id, dtype, shape):
    size = wire.DTYPES[dtype]
    for dim in shape:
        size *= dim
    request = Request.create(K[0], GID, request_id, dtype, shape, bytes(size))
    assert wire.decode(request.encoded) == request


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.integers(0, 2**64 - 1), st.integers(-3, 2**64 + 3)),
    st.one_of(st.sampled_from(sorted(wire.DTYPES)), st.sampled_from(["complex64", ""])),
    st.lists(st.one_of(st.integers(0, 4), st.integers(-1, 2**32)), max_size=10),
    st.integers(-2, 2),
    st.sampled_from([32, 31]),
)
def test_request_create_packs_what_the_dataclasses_would(request_id, dtype, shape, extra, gid):
    """``Request.create`` packs the header at once; the dataclasses' own checks and
    encoding are the reference: the same request, or the same refusal."""
    size = wire.DTYPES.get(dtype, 1)
    for dim in shape:
        size *= dim if 0 <= dim <= 4 else 0
    data = bytes(max(0, size + extra))
    group_id = GID[:gid]

    def reference():
        head = wire.RequestHeader(group_id, K[0].public_key, request_id, dtype, tuple(shape),
                                  _core.sha256(data)).signed(K[0])
        return Request(head, data)

    try:
        expected = reference()
        expected_encoding = expected.encoded
    except (ValueError, struct.error) as error:
        with pytest.raises(type(error), match=re.escape(str(error))):
            Request.create(K[0], group_id, request_id, dtype, shape, data)
        return
    got = Request.create(K[0], group_id, request_id, dtype, shape, data)
    assert got == expected and got.encoded == expected_encoding
    assert got.header.body == expected.header.body and got.digest == expected.digest


def test_the_fast_reader_takes_a_zero_dimension_beside_huge_ones():
    """A zero dimension makes the input empty, whatever the product of the others would
    overflow to: the core's reader takes it, as the general reader does."""
    request = Request.create(K[0], GID, 5, "float64", (2**32 - 1, 2**32 - 1, 2**32 - 1, 0), b"")
    assert _core.read_request(request.encoded) is not None
    assert wire.decode(request.encoded) == request == general_decode(Request, request.encoded)


def test_request_create_refuses_data_that_is_not_bytes():
    with pytest.raises(TypeError):
        Request.create(K[0], GID, 5, "uint8", (3,), 3)


def general_decode(cls, data):
    """``cls``'s message in ``data`` by the general reader alone (no fixed-offset path)."""
    return super(cls, cls).decode(data)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(sorted(wire.DTYPES)),
    st.lists(st.integers(0, 3), max_size=4),
    # Flips land in the header (76 bytes, then dtype, rank, shape) and are often small
    # values: lengths and ranks just past their limits.
    st.lists(st.tuples(st.integers(0, 120), st.one_of(st.integers(0, 12), st.integers(0, 255))),
             max_size=3),
    st.integers(0, 12),
)
def test_request_fast_reader_agrees_with_the_general_reader(dtype, shape, flips, cut):
    size = wire.DTYPES[dtype]
    for dim in shape:
        size *= dim
    request = Request.create(K[0], GID, 5, dtype, shape, bytes(size))
    assert _core.read_request(request.encoded) is not None  # the fast path is the one taken
    data = bytearray(request.encoded)
    for position, value in flips:  # the header's fields: lengths, dtype, rank, shape
        data[position % len(data)] = value
    data = bytes(data[: len(data) - cut]) if cut > 8 else bytes(data)
    try:
        header_end = wire.RequestHeader.size_at(wire.Reader(data))
    except WireError:
        header_end = len(data)
    for cls, part in ((Request, data), (wire.RequestHeader, data[:header_end])):
        try:
            expected = general_decode(cls, part)
        except WireError as error:
            with pytest.raises(WireError, match=re.escape(str(error))):
                cls.decode(part)
            continue
        got = cls.decode(part)
        assert got == expected and got.body == expected.body and got.digest == expected.digest
        assert got.encoded == part


def test_the_core_request_reader_knows_the_wire_dtypes_and_limits():
    from dropbear.limits import MAX_INPUT_RANK, MAX_REQUEST_BYTES

    assert sorted(_core.REQUEST_DTYPES) == sorted(wire.DTYPES)
    assert (_core.REQUEST_MAX_INPUT_RANK, _core.REQUEST_MAX_BYTES) == (MAX_INPUT_RANK,
                                                                       MAX_REQUEST_BYTES)
    for dtype in wire.DTYPES:  # the core's item sizes: its fast path takes every dtype
        request = Request.create(K[0], GID, 5, dtype, (3, 2), bytes(6 * wire.DTYPES[dtype]))
        fields = _core.read_request(request.encoded)
        assert fields is not None and wire._DTYPE_BY_INDEX[fields[3]] == dtype
        assert _core.read_request_header(request.header.encoded) is not None
        assert _core.read_request_header(request.encoded) is None  # not all of it


@pytest.mark.parametrize("rank", [0, 2, wire.MAX_INPUT_RANK, wire.MAX_INPUT_RANK + 1, 255])
@pytest.mark.parametrize("dtype_length", [0, 4, 7, 300])
def test_request_readers_agree_at_the_header_limits(rank, dtype_length):
    request = Request.create(K[0], GID, 5, "float64", (4, 4, 4), bytes(512))
    data = bytearray(request.encoded)
    rank_at = 76 + len("float64")
    data[rank_at] = rank
    data[74:76] = dtype_length.to_bytes(2, "big")
    for cls in (Request, wire.RequestHeader):
        try:
            expected = general_decode(cls, bytes(data))
        except WireError as error:
            with pytest.raises(WireError, match=re.escape(str(error))):
                cls.decode(bytes(data))
            continue
        assert cls.decode(bytes(data)) == expected


@given(
    st.lists(
        st.tuples(
            st.binary(min_size=32, max_size=32),
            st.integers(0, 2**31 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=20,
    )
)
def test_votes_round_trip(items):
    votes = Votes(GID, 3, b"\x09" * 32, tuple(Vote(*item) for item in items)).signed(K[3])
    again = wire.decode(votes.encoded)
    assert again == votes and again.verify(K[3].public_key)


def test_decode_memo_shares_identical_bytes_and_stays_bounded():
    memo = wire.DecodeMemo(limit=3, limit_bytes=100_000)
    votes = [Votes(GID, n, b"\x01" * 32, (Vote(b"\x02" * 32, n, 0.5),)).signed(K[n])
             for n in range(4)]
    first = memo.decode(Votes, votes[0].encoded)
    assert first == votes[0] and memo.decode(Votes, bytes(votes[0].encoded)) is first
    assert memo.hits == 1
    for v in votes[1:]:
        assert memo.decode(Votes, v.encoded) == v
    assert len(memo._items) == 3  # the oldest went
    assert memo.decode(Votes, votes[0].encoded) is not first
    small = wire.DecodeMemo(limit=100, limit_bytes=2 * wire._memo_cost(votes[0].encoded))
    for v in votes:
        small.decode(Votes, v.encoded)
    assert small._bytes <= small.limit_bytes and len(small._items) == 2
    with pytest.raises(WireError):
        memo.decode(Votes, votes[0].encoded[:-1])


def test_pre_prepare_decodes_the_same_with_its_parts_seen_before():
    request = SAMPLES[0]
    pre = SAMPLES[3]
    wire.MEMO.clear()
    cold = wire.decode(pre.encoded)
    wire.decode(request.encoded)  # puts the request's header bytes in the memo
    warm = wire.decode(pre.encoded)
    assert warm == cold == pre
    assert warm.batch.requests[0] is wire.decode(pre.encoded).batch.requests[0]


def test_certificates_encoded_together_are_each_encoded_alone():
    certs = list(reply_sample().certificates)
    other = dataclasses.replace(certs[0], signatures=certs[0].signatures[:2])
    alone = [rebuilt(c).encoded for c in [*certs, other]]
    wire.Certificate.encode_all([*certs, other])
    assert [c.encoded for c in [*certs, other]] == alone
    assert [wire.Certificate.decode(data) for data in alone] == [*certs, other]
