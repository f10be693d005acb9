"""GroupState: projections (copies) and the state they came from never change each other."""

import pytest
from dropbear.agreement import make_entry
from dropbear.consensus.state import ClientWindow, GroupState
from dropbear.limits import MAX_INFLIGHT_PER_CLIENT as W
from dropbear.wire import EntryVote, ModelUpdate, Request, WireError
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.group import key, make_group

GROUP = make_group(4)
M = GROUP.manifest
CLIENTS = [GROUP.node_keys[i] for i in range(2)]


def entry(client: int, request_id: int):
    head = Request.create(CLIENTS[client], M.group_id, request_id, "uint8", (1,), b"\x00").header
    votes = [EntryVote(n, M.nodes[n].model_version, 0, 1.0) for n in range(3)]
    return make_entry(head, votes, M.threshold)


def windows(state: GroupState) -> dict:
    return {c: (w.low, sorted(w.ordered)) for c, w in state.clients.items()}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1), st.integers(0, 3 * W)),
                max_size=40))
def test_copies_are_independent_whichever_side_moves(steps):
    state = GroupState.genesis(M)
    copies: list[tuple[GroupState, dict]] = []
    for on_copy, client, request_id in steps:
        if on_copy or not copies:
            copy = state.copy()
            copies.append((copy, windows(copy)))
            if on_copy:
                copy.apply_entry(entry(client, request_id))
                copies[-1] = (copy, windows(copy))
                continue
        before = [windows(c) for c, _ in copies]
        state.apply_entry(entry(client, request_id))
        assert [windows(c) for c, _ in copies] == before  # the original moved alone
    for copy, seen in copies:
        assert windows(copy) == seen


THREE_CLIENTS = [GROUP.node_keys[i] for i in range(3)]


def varied_entry(client: int, request_id: int, stale_node: int | None):
    head = Request.create(THREE_CLIENTS[client], M.group_id, request_id, "uint8", (1,),
                          b"\x00").header
    votes = [EntryVote(n, bytes(32) if n == stale_node else M.nodes[n].model_version, 0, 1.0)
             for n in range(3)]
    return make_entry(head, votes, M.threshold)


@settings(max_examples=80, deadline=None)
@given(batch=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3 * W),
                                st.one_of(st.none(), st.integers(0, 4))), max_size=30),
       history=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3 * W)), max_size=6),
       max_clients=st.integers(1, 3))
def test_a_batch_applies_as_its_entries_one_by_one(batch, history, max_clients):
    """apply and after take a batch's entries as entry_problem and apply_entry would, one by
    one: the same entries valid, the same windows in the same order (clients evicted beyond
    MAX_CLIENTS), the same first problem."""
    from dropbear.consensus import state as state_module
    from dropbear.consensus.state import Derived

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_module, "MAX_CLIENTS", max_clients)
        base = GroupState.genesis(M)
        for client, request_id in history:
            base.apply_entry(varied_entry(client, request_id, None))
        entries = tuple(varied_entry(*step) for step in batch)
        derived = Derived(entries, (), ())

        reference, valid, problem = base.copy(), [], None
        for i, e in enumerate(entries):
            why = reference.entry_problem(e)
            if why is None:
                reference.apply_entry(e)
                valid.append(i)
            elif problem is None:
                problem = why

        projected = base.copy().after(derived, 9, bytes(32))
        if problem is None:
            assert windows(projected) == windows(reference)
            assert list(projected.clients) == list(reference.clients)
        else:
            assert projected == problem
        applied = base.copy()
        assert applied.apply(derived, 9, bytes(32)) == (valid, [])
        assert windows(applied) == windows(reference)
        assert list(applied.clients) == list(reference.clients)


def test_a_used_id_is_not_fresh_and_the_window_slides():
    state = GroupState.genesis(M)
    key = CLIENTS[0].public_key
    top = 100 + W + 5
    for request_id in range(100, top + 1):
        assert state.fresh(key, request_id)
        state.apply_entry(entry(0, request_id))
        assert not state.fresh(key, request_id)
    assert not state.fresh(key, 100)  # below the window now
    assert state.clients[key].low == top - W + 1


def _slot(seq: int, requests: list[int]):
    from dropbear.consensus.replica import Slot
    from dropbear.consensus.state import Derived
    from dropbear.wire import Batch

    heads = tuple(Request.create(CLIENTS[0], M.group_id, r, "uint8", (1,), b"\x00").header
                  for r in requests)
    return Slot(0, seq, Batch(heads), Derived((), heads, ()), bytes(64))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "del", "pop", "clear"]), st.integers(1, 5),
                          st.lists(st.integers(0, 6), max_size=4, unique=True)),
                max_size=30))
def test_the_slot_table_knows_the_requests_its_slots_hold(steps):
    from dropbear.consensus.replica import _SlotTable

    in_slots: set[bytes] = set()  # what the held / released calls say is in some slot

    def on_held(digest: bytes) -> None:
        assert digest not in in_slots
        in_slots.add(digest)

    def on_released(digest: bytes) -> None:
        in_slots.remove(digest)

    table = _SlotTable(held=on_held, released=on_released)
    for op, seq, requests in steps:
        if op == "set":
            table[seq] = _slot(seq, requests)
        elif op == "del" and seq in table:
            del table[seq]
        elif op == "pop":
            held = table.get(seq)
            assert table.pop(seq) is held and seq not in table
        elif op == "clear":
            table.clear()
        expected: dict[bytes, int] = {}
        for slot in table.values():
            for head in slot.derived.headers:
                expected[head.digest] = expected.get(head.digest, 0) + 1
        assert table.requests == expected
        assert in_slots == set(expected)
    for change in (lambda: table.update({}), lambda: table.setdefault(1, None),
                   table.popitem, table.copy):
        try:
            change()
        except TypeError as error:
            assert "slot table changes only by" in str(error)
        else:
            raise AssertionError("a slot table must refuse changes it cannot follow")


def test_derive_takes_each_nodes_vote_once_and_refuses_two_different_ones():
    import pytest
    from dropbear.consensus.state import BatchError, derive
    from dropbear.wire import Batch, Vote, Votes

    heads = [Request.create(CLIENTS[0], M.group_id, i, "uint8", (1,), b"\x00").header
             for i in range(2)]
    ordered, other = heads[0].digest, heads[1].digest

    def votes(node, *cast):
        return Votes(M.group_id, node, M.nodes[node].model_version,
                     tuple(Vote(d, label, 0.5) for d, label in cast)).signed(GROUP.node_keys[node])

    agreeing = [votes(n, (ordered, 1), (other, 2)) for n in range(3)]
    derived = derive(Batch((heads[0],), tuple(agreeing)), M)
    [e] = derived.entries
    assert [(v.node, v.model_version, v.label) for v in e.votes] == [
        (n, M.nodes[n].model_version, 1) for n in range(3)]
    # A repeat of the same vote (in a second VOTES message) collapses into one.
    repeat = votes(0, (ordered, 1))
    assert derive(Batch((heads[0],), (*agreeing, repeat)), M).entries == derived.entries
    # Two different votes of one node for one request: no honest primary proposes that,
    # whether or not the batch orders the request.
    for digest in (ordered, other):
        changed = votes(0, (digest, 7))
        with pytest.raises(BatchError, match="node 0 gives two votes"):
            derive(Batch((heads[0],), (*agreeing, changed)), M)


_HEADS = [Request.create(CLIENTS[i % 2], M.group_id, 7 + i, "uint8", (1,), b"\x00").header
          for i in range(6)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3),
                                   st.sampled_from([0.0, 0.25, -1.5, 1e300])),
                         max_size=8), min_size=4, max_size=4),
       st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True),
       st.permutations(range(4)))
def test_derive_gives_the_reference_entries(per_node, ordered, node_order):
    """The batch derivation builds and encodes entries in line (it runs for every batch on
    every node); it must give exactly the entries of agreement.make_entry and their
    canonical encodings, or refuse the batches make_entry's rules refuse."""
    from dropbear.consensus.state import BatchError, derive
    from dropbear.wire import Batch, RequestEntry, Vote, Votes

    messages, casts = [], {}
    for node in node_order:  # VOTES in any order of nodes
        first = {}
        for request, label, score in per_node[node]:
            first.setdefault(request, (label, score))  # one vote per node and request
        if first:
            messages.append(Votes(M.group_id, node, M.nodes[node].model_version, tuple(
                Vote(_HEADS[r].digest, label, score) for r, (label, score) in first.items())))
        for r, (label, score) in first.items():
            casts.setdefault(r, []).append(EntryVote(node, M.nodes[node].model_version, label,
                                                     score))
    batch = Batch(tuple(_HEADS[r] for r in ordered), tuple(messages))
    if any(len(casts.get(r, ())) < M.quorum for r in ordered):
        with pytest.raises(BatchError, match="votes"):
            derive(batch, M)
        return
    derived = derive(batch, M)
    expected = [make_entry(_HEADS[r], casts[r], M.threshold) for r in ordered]
    assert list(derived.entries) == expected
    assert derived.leaves == [e.encoded for e in expected]
    assert [RequestEntry.decode(leaf) for leaf in derived.leaves] == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.lists(st.tuples(st.integers(0, 5),
                                                                st.integers(0, 2)), max_size=6),
                          st.booleans()), max_size=7),
       st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=7))
def test_derive_refuses_what_the_rules_refuse_and_names_the_rule(messages, ordered):
    """Byzantine batches: VOTES of a node outside the group or of another group, repeats of a
    node's vote (the same, which collapse, or different, which are refused), requests of
    another group or ordered twice, too few votes. The Rust derivation must refuse exactly
    what the rules, applied in their order (each VOTES, then each request), refuse."""
    from dropbear.consensus.state import BatchError, derive
    from dropbear.wire import Batch, Vote, Votes

    other_group = bytes(32)
    foreign = {r: Request.create(CLIENTS[0], other_group, 7 + r, "uint8", (1,), b"\x00").header
               for r in range(6)}
    batch_votes, expected, by_request = [], None, {}
    for node, cast, own_group in messages:
        version = M.nodes[node % M.n].model_version
        batch_votes.append(Votes(M.group_id if own_group else other_group, node, version,
                                 tuple(Vote(_HEADS[r].digest, label, 0.5) for r, label in cast)))
        if expected is None and (not own_group or node >= M.n):
            expected = f"VOTES of node {node} is not of this group"
        for r, label in cast:
            known = by_request.setdefault(r, {}).setdefault(node, label)
            if expected is None and known != label:
                expected = f"node {node} gives two votes for {_HEADS[r].digest.hex()}"
    headers, seen = [], set()
    for r, own_group in ordered:
        headers.append(_HEADS[r] if own_group else foreign[r])
        if expected is None:
            if not own_group:
                expected = f"request {foreign[r].digest.hex()} is of another group"
            elif r in seen:
                expected = f"request {_HEADS[r].digest.hex()} ordered twice in one batch"
            elif (votes := len(by_request.get(r, {}))) < M.quorum:
                expected = f"request {_HEADS[r].digest.hex()} has {votes} votes"
        seen.add(r)
    batch = Batch(tuple(headers), tuple(batch_votes))
    if expected is not None:
        with pytest.raises(BatchError) as refused:
            derive(batch, M)
        assert str(refused.value) == expected
        return
    derived = derive(batch, M)
    for e, (r, _) in zip(derived.entries, ordered, strict=True):
        cast = [EntryVote(n, M.nodes[n].model_version, label, 0.5)
                for n, label in sorted(by_request[r].items())]
        assert e == make_entry(_HEADS[r], cast, M.threshold)


def test_applying_a_derived_batch_reads_votes_only_when_a_voter_is_stale():
    """A derived entry reads its votes from its encoding when asked; applying the batch asks
    only when a VOTES it came from is not of its node's current model version, and then
    voids exactly the entries with such a vote."""
    from dropbear.consensus.state import derive
    from dropbear.wire import Batch, Vote, Votes

    heads = _HEADS[:3]
    messages = [Votes(M.group_id, n, M.nodes[n].model_version,
                      tuple(Vote(h.digest, 1, 0.5) for h in heads[:2 if n == 0 else 3]))
                for n in range(4)]
    derived = derive(Batch(tuple(heads), tuple(messages)), M)
    assert all("votes" not in e.__dict__ for e in derived.entries)
    valid, _ = GroupState.genesis(M).apply(derived, 1, derived.root)
    assert valid == [0, 1, 2]
    assert all("votes" not in e.__dict__ for e in derived.entries)  # never asked

    stale = GroupState.genesis(M)
    stale.apply_update(ModelUpdate(M.group_id, 0, b"\x09" * 32, 1))
    valid, _ = stale.apply(derived, 1, derived.root)
    assert valid == [2]  # node 0 voted for the first two requests only
    assert [v.node for v in derived.entries[2].votes] == [1, 2, 3]
    assert stale.copy().after(derived, 1, derived.root) == (
        f"vote of node 0 from model {M.nodes[0].model_version.hex()[:16]}")

    # An entry with neither its votes nor its encoding has no votes attribute (not a crash),
    # and the core refuses a quorum of 0 rather than certify a request nobody voted for.
    from dropbear import _core
    from dropbear.wire import RequestEntry

    assert not hasattr(object.__new__(RequestEntry), "votes")
    with pytest.raises(ValueError, match="quorum must be at least 1"):
        _core.derive_entries(M.group_id, M.n, 0, M.threshold, (), heads, RequestEntry)


# --- the state snapshot's encoding (a node's restart point, docs/ledger.md) -----------------

CLIENT_KEYS = [key(f"snapshot/client/{i}") for i in range(5)]


def _summary(state: GroupState) -> tuple:
    """Everything a snapshot must keep, the clients' order (eviction order) included."""
    return (state.versions, state.counters, list(windows(state).items()), state.seq,
            state.digest)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 300)), max_size=60),
       st.lists(st.tuples(st.integers(0, 3), st.binary(min_size=32, max_size=32)), max_size=4),
       st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32))
def test_a_state_snapshot_decodes_to_the_same_state(applied, updates, seq, digest):
    state = GroupState.genesis(M)
    for client, request_id in applied:
        head = Request.create(CLIENT_KEYS[client], M.group_id, request_id, "uint8", (1,),
                              b"\x00").header
        if state.fresh(head.client, request_id):
            state.apply_entry(make_entry(head, [EntryVote(n, M.nodes[n].model_version, 0, 1.0)
                                                for n in range(3)], M.threshold))
    for counter, (node, version) in enumerate(updates, start=1):
        state.apply_update(ModelUpdate(M.group_id, node, version, counter))
    state.seq, state.digest = seq, digest
    encoded = state.encode(M.group_id)
    again = GroupState.decode(encoded, M)
    assert _summary(again) == _summary(state)
    assert again.encode(M.group_id) == encoded  # canonical
    # Both go on alike (the decoded windows are its own, as after a copy).
    follow = Request.create(CLIENT_KEYS[0], M.group_id, 301, "uint8", (1,), b"\x00").header
    for s in (state, again):
        s.apply_entry(make_entry(follow, [EntryVote(n, M.nodes[n].model_version, 0, 1.0)
                                          for n in range(3)], M.threshold))
    assert _summary(again) == _summary(state)


def _snapshot_with_a_client() -> bytes:
    state = GroupState.genesis(M)
    state.apply_entry(entry(0, 7))
    state.apply_entry(entry(0, 9))
    return state.encode(M.group_id)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-3], "truncated|bytes"),
    (lambda b: b + b"\x00", "trailing|end"),
    (lambda b: b[:2] + bytes(32) + b[34:], "another group"),
    (lambda b: b[:-8] + (6).to_bytes(8, "big"), "not increasing"),  # id 6 below id 7
])
def test_a_damaged_state_snapshot_is_refused_with_a_reason(damage, message):
    with pytest.raises(WireError, match=message):
        GroupState.decode(damage(_snapshot_with_a_client()), M)


def test_a_state_snapshot_of_another_group_size_is_refused():
    with pytest.raises(WireError, match="another group|not of 7 nodes"):
        GroupState.decode(_snapshot_with_a_client(), make_group(7).manifest)


@pytest.mark.parametrize("window, message", [
    (ClientWindow.of(0, []), "not increasing within"),  # no id: never made by use()
    (ClientWindow.of(0, [W + 36]), f"not increasing within its window 0..{W - 1}"),  # above
    (ClientWindow.of(5, [10]), f"window low 5 without id {W + 4}"),  # low that no id set
])
def test_a_state_snapshot_no_replay_makes_is_refused(window, message):
    state = GroupState.genesis(M)
    state.clients[CLIENT_KEYS[0].public_key] = window
    with pytest.raises(WireError, match=message):
        GroupState.decode(state.encode(M.group_id), M)
