"""Agreement: plurality, ties to the lowest label, threshold reached or not."""

from dropbear.agreement import agree, check_entry, default_threshold, make_entry
from dropbear.wire import EntryVote, RequestHeader
from hypothesis import given
from hypothesis import strategies as st


def test_plurality_and_threshold():
    result = agree([3, 3, 1, 3], threshold=3)
    assert (result.label, result.votes_for_label, result.reached) == (3, 3, True)
    assert result.counts == ((1, 1), (3, 3))


def test_tie_goes_to_lowest_label():
    assert agree([5, 2, 5, 2], 3).label == 2
    assert agree([9, 7, 8], 3) == agree([7, 8, 9], 3)
    assert not agree([5, 2, 5, 2], 3).reached


def test_default_threshold_is_2f_plus_1():
    assert [default_threshold(f) for f in (0, 1, 2)] == [1, 3, 5]


@given(st.lists(st.integers(0, 5), min_size=1, max_size=20), st.integers(1, 20))
def test_agree_is_order_independent_and_maximal(labels, q):
    result = agree(labels, q)
    assert result == agree(sorted(labels, reverse=True), q)
    assert all(labels.count(result.label) >= labels.count(x) for x in labels)
    assert all(labels.count(x) < labels.count(result.label) for x in labels if x < result.label)
    assert result.reached == (labels.count(result.label) >= q)


def test_entry_and_check():
    header = RequestHeader(bytes(32), bytes(32), 1, "uint8", (2,), bytes(32), bytes(64))
    votes = [EntryVote(i, bytes(32), label, 0.5) for i, label in ((2, 1), (0, 1), (1, 4))]
    entry = make_entry(header, votes, threshold=3)
    assert [v.node for v in entry.votes] == [0, 1, 2]
    assert (entry.label, entry.reached) == (1, False)
    assert check_entry(entry, quorum=3, threshold=3, nodes=4) is None
    assert "needs 4" in check_entry(entry, quorum=4, threshold=3, nodes=4)
    assert "threshold" in check_entry(entry, quorum=3, threshold=2, nodes=4)
    lying = entry.__class__(**{**entry.__dict__, "label": 4})
    assert "votes give 1" in check_entry(lying, 3, 3, 4)


@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1),
       st.lists(st.integers(0, 9), min_size=1, max_size=7))
def test_an_entrys_encoding_names_its_request_where_request_of_reads_it(
        client, request_id, labels):
    """RequestEntry.request_of reads the request digest from an encoding without decoding
    it (the reply cache compares it before decoding); it must agree with decode."""
    from dropbear.wire import RequestEntry

    header = RequestHeader(bytes(32), client, request_id, "uint8", (1,), bytes(32))
    votes = [EntryVote(node, bytes([node]) * 32, label, 0.5) for node, label in enumerate(labels)]
    entry = make_entry(header, votes, threshold=len(labels))
    encoded = entry.encoded
    assert RequestEntry.request_of(encoded) == RequestEntry.decode(encoded).request
    assert RequestEntry.request_of(encoded) == header.digest
