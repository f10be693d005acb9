"""The deterministic simulator: seeded schedules with faults and Byzantine roles.

A failure names its seed; rerun it alone with ``python -m tests.sim --seed N``.
"""

import pytest
from dropbear.limits import MAX_INFLIGHT_PER_CLIENT

from .scenario import ROLES, run


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        first = metafunc.config.getoption("--first-seed")
        count = metafunc.config.getoption("--seeds")
        seeds = range(first, first + count)
        metafunc.parametrize("seed", seeds, ids=[f"seed={s}" for s in seeds])


def test_seeded_schedule(seed):
    run(seed)


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("role", ROLES)
def test_each_byzantine_role(role, n):
    primary_role = role.endswith("primary")
    roles = {0 if primary_role else 1: role}
    if n == 7:
        roles[5] = "wrong-label"
    outcomes = [run(seed, n=n, roles=dict(roles)) for seed in range(3)]
    assert all(o.certificates > 0 for o in outcomes)
    if role in ("equivocating-primary", "twins") and roles.get(0) == role:
        assert any(o.evidence for o in outcomes), "equivocation was never caught"


def test_silent_primary_is_replaced():
    outcome = run(11, n=4, roles={0: "silent-primary"})
    assert outcome.certificates > 0


def test_backups_send_their_votes_to_the_primary_alone():
    from dropbear.wire import Votes

    from .world import World

    world = World(seed=5)
    sent = []  # (sender, receiver) of every VOTES message

    def watch(world, node, to, message):
        if isinstance(message, Votes):
            sent.append((node.index, to))
        return message

    for node in world.nodes:
        node.outbox_filter = watch
    for i in range(24):
        world.at(0.002 * i, lambda c=i % 2: world.submit(c))
    world.run_until(5.0, world.all_certified)
    assert world.all_certified()
    assert [n.replica.view for n in world.nodes] == [0] * len(world.nodes)
    # n - 1 messages per inference batch, not n(n - 1); the primary keeps its own.
    assert sent and all(src != 0 and to == 0 for src, to in sent), sent


def _idle_primary_world(seed):
    import dataclasses

    from .scenario import never_proposes
    from .world import SIM_CONFIG, World

    # Clients re-send after 1 s, which makes nodes share their votes too: every timeout here
    # is shorter, so that only the progress timer can be what replaces the primary.
    config = dataclasses.replace(SIM_CONFIG, request_timeout=0.2, view_change_timeout=0.2)
    world = World(seed=seed, config=config)
    world.nodes[0].outbox_filter = never_proposes
    world.nodes[0].honest = False
    return world


@pytest.mark.parametrize("schedule", range(3))
def test_a_primary_that_never_proposes_is_replaced_before_any_client_resends(schedule):
    world = _idle_primary_world(schedule)
    world.submit(0)
    # The first progress timeout (0.2 s) makes the backups share their votes, the second
    # makes them suspect the primary: certified well before the client's re-send at 1 s.
    world.run_until(0.9, world.all_certified)
    assert world.all_certified()
    assert all(n.replica.view >= 1 for n in world.honest_nodes())


@pytest.mark.parametrize("schedule", range(3))
def test_the_new_primary_gets_the_votes_sent_to_the_old_one(schedule):
    from dropbear.wire import Votes

    world = _idle_primary_world(schedule)
    sent = []  # (time, sender, receiver, requests) of the backups' VOTES

    def watch(world, node, to, message):
        if isinstance(message, Votes):
            sent.append((world.now, node.index, to, {v.request for v in message.votes}))
        return message

    for node in world.nodes[1:]:
        node.outbox_filter = watch
    world.submit(0)  # shared at the first progress timeout, then the primary is suspected
    # Voted after the backups shared their votes: these went to the old primary alone.
    world.at(0.25, lambda: world.submit(1))
    world.run_until(0.9, lambda: all(n.replica.view >= 1 for n in world.honest_nodes()))
    changed = world.now
    assert 0.25 < changed < 0.9
    # The second request's VOTES went to the old primary, then to the new one: never to all.
    (second,) = [r.digest for r in world.clients[1].pending.values()]
    receivers = [to for _, _, to, requests in sent if second in requests]
    assert receivers and set(receivers) == {0, 1}, receivers
    # Installing the new view, every node sends the new primary its votes for what is still
    # pending: the second request is ordered at once, not a progress timeout later.
    world.run_until(changed + 0.1, world.all_certified)
    assert world.all_certified(), world.clients[1].pending


@pytest.mark.parametrize("schedule", range(3))
def test_a_node_that_missed_a_view_change_joins_the_view_it_catches_up_to(schedule):
    from .scenario import never_proposes
    from .world import World

    world = World(seed=schedule)
    world.nodes[0].outbox_filter = never_proposes
    world.nodes[0].honest = False
    world.crash(3, 3.0)  # down (view 0 in its ledger) while the others move to view 1
    world.submit(0)
    world.run_until(3.0)
    assert all(n.replica.view >= 1 for n in world.nodes[:3])
    for i in range(20):
        world.at(0.1 + 0.2 * i, lambda c=i % 2: world.submit(c))
    world.run_until(7.5)
    # Node 3 saw the view only in the batches it caught up with; it asked for that view and
    # took the NEW-VIEW it was sent.
    views = {n.replica.view for n in world.honest_nodes()}
    assert len(views) == 1 and all(n.replica.active for n in world.honest_nodes()), views
    # So it counts in every quorum: without node 0, the next request needs no view change.
    world.crash(0, 1000.0)
    start, view = world.now, world.nodes[1].replica.view
    world.submit(0)
    world.run_until(start + 20.0, world.all_certified)
    assert world.all_certified() and world.now - start < world.config.request_timeout
    assert world.nodes[1].replica.view == view


def _evidence_with_extra_votes_of_node_2(extra):
    """Nodes 0 (the primary) and 2 collude: every PRE-PREPARE also carries the VOTES that
    ``extra(mine)`` makes from node 2's own (signed by node 2). The checker's evidence."""
    import dataclasses

    from dropbear.wire import PrePrepare

    from .world import World

    world = World(seed=8)
    key2 = world.group.node_keys[2]

    def with_extra_votes(world, node, to, message):
        if not isinstance(message, PrePrepare) or not message.batch.requests:
            return message
        mine = next(v for v in message.batch.votes if v.node == 2)
        added = tuple(v.signed(key2) for v in extra(mine))
        batch = dataclasses.replace(message.batch, votes=(*message.batch.votes, *added))
        return PrePrepare(message.statement, message.signature, batch)

    world.nodes[0].outbox_filter = with_extra_votes
    world.nodes[0].honest = world.nodes[2].honest = False
    world.submit(0)
    world.run_until(3.0, lambda: bool(world.checker.evidence))
    return {(index, e.kind) for index, e in world.checker.evidence}


def test_two_votes_of_one_node_in_a_pre_prepare_are_evidence():
    from dropbear.wire import Vote, Votes

    def second_votes(mine):
        """A second VOTES of node 2 with other labels."""
        return [Votes(mine.group_id, 2, mine.model_version,
                      tuple(Vote(v.request, v.label + 1, v.score) for v in mine.votes))]

    assert _evidence_with_extra_votes_of_node_2(second_votes) & {(1, "votes"), (3, "votes")}


def test_two_votes_of_one_node_on_a_request_the_batch_does_not_order_are_evidence():
    """As above, but the disagreeing votes are for a request the PRE-PREPARE does not
    order: the backups refuse the batch and still keep the evidence."""
    from dropbear import _core
    from dropbear.wire import Vote, Votes

    elsewhere = _core.sha256(b"a request ordered elsewhere")

    def disagreeing_votes(mine):
        """Two VOTES of node 2 that disagree on ``elsewhere``."""
        return [Votes(mine.group_id, 2, mine.model_version, (Vote(elsewhere, label, 0.5),))
                for label in (1, 2)]

    assert _evidence_with_extra_votes_of_node_2(disagreeing_votes) & {(1, "votes"),
                                                                       (3, "votes")}


def test_twin_primaries_are_caught():
    outcomes = [run(seed, n=4, roles={0: "twins"}) for seed in range(4)]
    assert any(o.evidence for o in outcomes)


def test_same_seed_same_run():
    assert str(run(7)) == str(run(7))


def _burst(config, requests: int = 48):
    """Two clients send ``requests`` at once over a clean network; returns the world."""
    from .world import World

    world = World(seed=3, config=config)
    for i in range(requests):
        world.at(0.0005 * i, lambda c=i % 2: world.submit(c))
    world.run_until(10.0, world.all_certified)
    assert world.all_certified()
    return world


def test_under_load_batches_grow_instead_of_their_number():
    import dataclasses

    from .world import SIM_CONFIG

    config = dataclasses.replace(SIM_CONFIG, pipeline_depth=8, max_batch_entries=16,
                                 eager_depth=1, batch_fill=8, batch_wait=0.05)
    eager = dataclasses.replace(config, eager_depth=8)  # never holds a batch back
    held = [n.ledger.last_seq() for n in _burst(config).nodes]
    every = [n.ledger.last_seq() for n in _burst(eager).nodes]
    assert max(held) < min(every), (held, every)


def test_a_lone_request_is_proposed_at_once():
    import dataclasses

    from .world import SIM_CONFIG, World

    # A batch wait of a whole second would show: a lone request never waits for it.
    config = dataclasses.replace(SIM_CONFIG, eager_depth=1, batch_fill=8, batch_wait=1.0,
                                 request_timeout=4.0)
    world = World(seed=4, config=config)
    world.submit(0)
    world.run_until(0.5, world.all_certified)
    assert world.all_certified() and world.now < config.batch_wait
    assert max(n.ledger.last_seq() for n in world.nodes) == 1


def _resized(world, node, to, message):
    """A faulty node's PREPAREs and COMMITs: the right root, another tree size, validly
    signed by it (a statement about a batch that does not exist)."""
    from dropbear.wire import Commit, Prepare, Statement

    if not isinstance(message, Prepare | Commit):
        return message
    s = message.statement
    statement = Statement(s.kind, s.group_id, s.node, s.view, s.seq, s.size + 1, s.digest)
    signature = world.group.node_keys[node.index].sign(statement.encoded)
    if isinstance(message, Prepare):
        return Prepare(statement, signature, message.proposal_signature)
    return Commit(statement, signature)


def test_a_statement_of_the_right_root_and_another_size_counts_for_nothing():
    from dropbear.certificate import is_valid
    from dropbear.consensus import proofs

    from .world import World

    world = World(7, 4, clients=1)
    saved = []
    for node in world.nodes[:3]:
        def save(proof, original=node.ledger.save_prepared):
            saved.append(proof)
            return original(proof)
        node.ledger.save_prepared = save
    replies = []
    on_reply = world.checker.on_reply
    world.checker.on_reply = lambda node, cert: (replies.append(cert), on_reply(node, cert))
    world.nodes[3].outbox_filter = _resized
    world.nodes[3].honest = False
    for _ in range(6):
        world.submit(0)
    world.run_until(8.0, world.all_certified)
    assert world.all_certified()
    assert saved and all(proofs.prepared_checks(world.manifest, p) is not None for p in saved)
    assert replies and all(is_valid(cert, world.manifest) for cert in replies)


def _project_afresh(replica, seq):
    """The projection as computed without the kept one: the executed state plus the batches
    up to ``seq`` (on a deep copy: ``GroupState.copy`` would change the live state's
    copy-on-write bookkeeping, and so the run under test)."""
    import copy

    from dropbear.consensus.state import derive

    state = copy.deepcopy(replica.state)
    for s in range(replica.state.seq + 1, seq):
        slot = replica._slots.get(s)
        if slot is not None:
            state.apply(slot.derived, s, slot.root)
            continue
        cb = replica._committed.get(s)
        if cb is None:
            return None
        derived = derive(cb.batch, replica.manifest)
        state.apply(derived, s, derived.root)
    return state


def _summary(state):
    if state is None:
        return None
    windows = {c: (w.low, sorted(w.ordered)) for c, w in state.clients.items()}
    return state.digest, list(state.versions), list(state.counters), windows


@pytest.mark.parametrize("schedule", range(60))
def test_the_kept_projection_is_always_the_one_computed_afresh(schedule, monkeypatch):
    from dropbear.consensus import replica as replica_module

    kept = replica_module.Replica._projected
    calls = []

    def checked(self, seq):
        got = kept(self, seq)
        if seq > self.state.seq + 1:
            calls.append(seq)
            assert _summary(got) == _summary(_project_afresh(self, seq)), (schedule, seq)
        return got

    monkeypatch.setattr(replica_module.Replica, "_projected", checked)
    run(schedule)
    assert calls  # projections past the executed state were asked for and checked


def _slot_in_flight(prepared: bool, requests: int):
    """A stand-in for a replica's slot, with what ``_hold_back`` reads of it: whether it is
    prepared and how many requests its batch holds."""
    from types import SimpleNamespace

    return SimpleNamespace(prepared=prepared, derived=SimpleNamespace(headers=()),
                           batch=SimpleNamespace(requests=(None,) * requests))


def test_each_batch_in_flight_beyond_the_eager_ones_asks_for_a_fuller_next_batch():
    import dataclasses

    from dropbear.wire import Batch

    from .world import SIM_CONFIG, World

    config = dataclasses.replace(SIM_CONFIG, eager_depth=2, batch_fill=8, max_batch_entries=30)
    replica = World(seed=1, config=config).nodes[0].replica
    replica.state.seq = 10
    for seq in range(11, 21):  # prepared batches in flight, a fill each (load to gather)
        replica._slots[seq] = _slot_in_flight(prepared=True, requests=8)

    def held(in_flight: int, requests: int, full: bool = False) -> bool:
        replica._running.discard("batch-wait")
        return replica._hold_back(11 + in_flight, Batch(requests=(None,) * requests), full)

    assert not held(1, 1)  # fewer than eager_depth in flight: at once
    assert held(2, 7) and not held(2, 8)  # eager_depth in flight: batch_fill
    assert held(3, 15) and not held(3, 16)  # one more in flight: twice as many
    assert held(5, 29) and not held(5, 30)  # capped by the largest batch
    assert not held(9, 30)
    assert not held(5, 10, full=True)  # a limit cut it short: waiting cannot fill it


def test_batches_cut_short_by_the_votes_limit_are_ordered():
    import dataclasses

    from dropbear.limits import MAX_BATCH_VOTE_MESSAGES

    from .world import SIM_CONFIG, World

    # A request brings up to 4 VOTES messages of its own (fewer where a node inferred it
    # with others), so MAX_BATCH_VOTE_MESSAGES (256) cuts a batch at about 64 requests,
    # below the fill of 128 (which the 240 requests, 60 per client, give load enough for).
    config = dataclasses.replace(SIM_CONFIG, eager_depth=1, batch_fill=128,
                                 max_batch_entries=128, batch_wait=1.0, request_timeout=4.0)
    world = World(seed=5, clients=4, config=config)
    for i in range(240):  # 60 per client: within a client's window (MAX_INFLIGHT_PER_CLIENT)
        world.at(0.0001 * i, lambda c=i % 4: world.submit(c))
    world.run_until(2.0, world.all_certified)
    assert world.all_certified()
    world.run_until(world.now + 0.3)
    batches = [b.batch for b in world.nodes[0].ledger.committed(1, 99)]
    assert sum(len(b.requests) for b in batches) == 240
    # The VOTES limit cut batches: short of the fill, too full of VOTES for another
    # request's four.
    cut = [len(b.requests) for b in batches
           if len(b.requests) < 128 and len(b.votes) > MAX_BATCH_VOTE_MESSAGES - 4]
    assert len(cut) >= 2, [(len(b.requests), len(b.votes)) for b in batches]


def _committed(world) -> list[list[bytes]]:
    return [[b.encoded for b in node.ledger.committed(1, node.ledger.last_seq() + 1)]
            for node in world.nodes]


def test_votes_that_cannot_fill_a_held_batch_skip_its_assembly_and_change_nothing(
        monkeypatch):
    """While a batch is held back, votes that make fewer requests orderable than it lacks
    do not assemble it again; nor, while nothing was orderable at the last assembly, do
    votes and requests that make nothing orderable. The skip must be exact: the same
    schedules run with every assembly done give the same batches, step for step. (These
    schedules called the batcher 4,527 times without skips, 3,334 with the held-batch skip
    alone, 849 with both.)"""
    import dataclasses

    from dropbear.consensus import replica as replica_module

    from .world import SIM_CONFIG, World

    def loaded(config, requests: int, seed: int, n: int = 4, update: int | None = None):
        world = World(seed=seed, n=n, clients=2, config=config)
        for i in range(requests):
            world.at(0.0003 * i, lambda c=i % 2: world.submit(c))
        if update is not None:  # a model switch mid-burst: votes of two versions meet
            world.at(0.01, lambda: world.update_model(update))
        world.run_until(20.0, world.all_certified)
        assert world.all_certified()
        return world.steps, _committed(world)

    held = dataclasses.replace(SIM_CONFIG, pipeline_depth=8, max_batch_entries=32,
                               eager_depth=1, batch_fill=16, batch_wait=0.05)
    by_votes = dataclasses.replace(SIM_CONFIG, eager_depth=1, batch_fill=128,
                                   max_batch_entries=128, batch_wait=1.0, request_timeout=4.0)
    cases = [(held, 100, 3), (held, 120, 8), (by_votes, 120, 5), (held, 120, 1, 7, 1),
             (held, 120, 2, 4, 1), (held, 120, 3, 7, 1)]
    calls = {"propose": 0}
    original_propose = replica_module.Replica._propose

    def counted(self):
        calls["propose"] += 1
        return original_propose(self)

    monkeypatch.setattr(replica_module.Replica, "_propose", counted)
    skipping = [loaded(*case) for case in cases] + [str(run(seed)) for seed in (2, 11)]
    with_skips = calls["propose"]
    original = replica_module.Replica._after_new_work
    monkeypatch.setattr(replica_module.Replica, "_after_new_work",
                        lambda self, orderable=None: original(self))
    calls["propose"] = 0
    every = [loaded(*case) for case in cases] + [str(run(seed)) for seed in (2, 11)]
    assert skipping == every
    assert with_skips < 0.4 * calls["propose"], (with_skips, calls["propose"])


def test_a_batch_waits_while_eager_depth_batches_in_flight_are_unprepared():
    """The prepare phase advances one batch after another: while ``eager_depth`` batches in
    flight are not prepared, a new batch (however full, short of the largest) gathers
    requests instead, and goes when one of them is prepared."""
    import dataclasses

    from dropbear.wire import Batch

    from .world import SIM_CONFIG, World

    config = dataclasses.replace(SIM_CONFIG, eager_depth=2, batch_fill=8, max_batch_entries=30)
    replica = World(seed=1, config=config).nodes[0].replica
    replica.state.seq = 10
    slots = {seq: _slot_in_flight(prepared=False, requests=8) for seq in (11, 12)}
    for seq, slot in slots.items():
        replica._slots[seq] = slot

    def held(requests: int) -> bool:
        replica._running.discard("batch-wait")
        return replica._hold_back(13, Batch(requests=(None,) * requests))

    assert held(20) and replica._paced  # above the fill of 8, but both are unprepared
    assert "batch-wait" not in replica._running  # no timer: a prepared batch releases it
    assert not held(30)  # the largest batch never waits
    slots[11].prepared = True
    assert not held(20)  # one unprepared: only the fill (8) counts again
    assert held(7) and not replica._paced


def test_no_batch_waits_while_the_requests_in_flight_and_its_own_are_fewer_than_hold_min():
    """At low load (requests in flight and ready, together, fewer than hold_min) a batch goes
    at once, however many batches are in flight or unprepared: waiting would not fill it,
    and far apart it would make each next batch wait in turn."""
    import dataclasses

    from dropbear.wire import Batch

    from .world import SIM_CONFIG, World

    config = dataclasses.replace(SIM_CONFIG, eager_depth=1, batch_fill=16, hold_min=8,
                                 max_batch_entries=30)
    replica = World(seed=1, config=config).nodes[0].replica
    replica.state.seq = 10
    for seq in (11, 12):  # two unprepared batches in flight, of one request each
        replica._slots[seq] = _slot_in_flight(prepared=False, requests=1)

    def held(requests: int) -> bool:
        replica._running.discard("batch-wait")
        return replica._hold_back(13, Batch(requests=(None,) * requests))

    assert not held(1) and not held(5)  # 2 + 5 < 8: at once
    assert "batch-wait" not in replica._running
    assert held(6) and replica._paced  # 2 + 6: load enough, and both are unprepared
    replica._slots[11].prepared = replica._slots[12].prepared = True
    assert held(6) and not replica._paced  # prepared, but 2 in flight ask for a fuller one
    assert "batch-wait" in replica._running


def test_a_batch_held_for_the_prepare_phase_goes_as_soon_as_its_predecessor_is_prepared(
        monkeypatch):
    import dataclasses
    import sys

    from dropbear.consensus import replica as replica_module

    from .world import SIM_CONFIG, World

    released = []  # batches let go by a PREPARE quorum itself, not by a commit or timer
    propose = replica_module.Replica._propose

    def watched(self):
        paced, before = self._paced, self.next_seq
        propose(self)
        if paced and self.next_seq > before and sys._getframe(1).f_code.co_name == (
                "_check_prepared"):
            released.append(before)

    monkeypatch.setattr(replica_module.Replica, "_propose", watched)

    # No timer releases a paced batch (batch wait 5 s, no view change for 20 s): the PREPARE
    # quorum of a batch in flight does, or (later) its execution.
    config = dataclasses.replace(SIM_CONFIG, eager_depth=1, batch_fill=4, batch_wait=5.0,
                                 max_batch_entries=32, request_timeout=20.0)
    world = World(seed=4, clients=2, config=config)
    for i in range(100):
        world.at(0.0003 * i, lambda c=i % 2: world.submit(c))
    world.run_until(1.0, world.all_certified)
    assert world.all_certified()
    assert [node.replica.view for node in world.nodes] == [0] * len(world.nodes)
    assert world.nodes[0].ledger.last_seq() > 2  # several batches, so pacing was at work
    assert released


@pytest.mark.parametrize("schedule", range(60))
def test_the_batcher_scans_exactly_the_voted_requests_not_in_flight(schedule, monkeypatch):
    """``_unproposed`` (what the ordering batcher scans) is ``_voted`` without the requests
    in a slot, in ``_voted``'s order, through faults, view changes and catch-up."""
    from dropbear.consensus import replica as replica_module

    assemble = replica_module.Replica._assemble
    checks = []

    def checked(self, projected):
        expected = [d for d in self._voted if d not in self._slots.requests]
        got = assemble(self, projected)  # it brings _unproposed up to date first
        assert list(self._unproposed) == expected, schedule
        checks.append(len(expected))
        return got

    monkeypatch.setattr(replica_module.Replica, "_assemble", checked)
    run(schedule)
    assert checks and any(checks)


def test_requests_leaving_their_slots_are_not_kept_on_backups():
    """A backup never assembles, so what it notes for the next assembly (``_released``)
    must stay within the voted requests, not grow with every request it executes."""
    from .world import World

    world = World(1, 4, clients=2)
    for i in range(300):
        world.at(i * 0.01, lambda c=i % 2: world.submit(c))
    world.run_until(60.0, stop=world.all_certified)
    assert world.all_certified()
    for node in world.nodes:
        replica = node.replica
        assert replica._released <= set(replica._voted), replica.me
        assert len(replica._voted) <= 2, replica.me


def test_backups_keep_no_votes_for_requests_they_executed():
    """A VOTES message covers a whole inference batch, whose requests several PRE-PREPAREs
    may order: a backup counts only the carried votes for the batch's own requests, so it
    never brings back the votes of a request it executed and forgot."""
    from dropbear.consensus import ClientRequest
    from dropbear.wire import Request

    from .world import SIM_CONFIG, World

    world = World(2, 4, clients=1)
    client = world.clients[0]
    requests = []
    for _ in range(12 * SIM_CONFIG.max_batch_entries):  # one inference batch, many orderings
        rid = client.next_id
        client.next_id += 1
        request = Request.create(client.key, world.manifest.group_id, rid, "uint8", (8,),
                                 world.rng.randbytes(8))
        client.pending[rid] = request
        requests.append(request)
    for node in world.nodes:
        world.deliver(node, ClientRequest(requests))
    world.run_until(30.0, stop=world.all_certified)
    assert world.all_certified()
    for node in world.nodes[1:]:
        replica = node.replica
        assert set(replica._votes) <= set(replica._requests), replica.me


def test_seed_5046_a_late_new_view_costs_no_view():
    """Regression (seed 5046: n=7, nodes 0 and 3 silent): every view with an honest primary
    failed, up to view 61 by the deadline. The five honest nodes need each other's every
    PREPARE, and the PREPAREs (and the new primary's PRE-PREPAREs) that reached a node
    before the NEW-VIEW were dropped; nobody sends them again, so each view lost the race."""
    outcome = run(5046)
    assert max(outcome.views) < 10, outcome


@pytest.mark.parametrize("schedule", range(3))
def test_messages_of_the_next_view_before_its_new_view_are_kept(schedule):
    """Every NEW-VIEW reaches the backups 50 ms late, after the new primary's PRE-PREPARE and
    PREPAREs: a backup keeps them and handles them once it installs the view. (Dropped,
    with node 0 silent no view could ever prepare a batch: n=4 needs all three others.)"""
    from dropbear.wire import NewView

    from .world import World

    world = World(seed=schedule)

    def late_new_views(world, node, to, message):
        if isinstance(message, NewView):
            world.at(0.05, lambda: world.send_bytes(node.index, to, message.encoded))
            return None
        return message

    world.nodes[0].outbox_filter = lambda world, node, to, message: None
    world.nodes[0].honest = False
    for node in world.nodes[1:]:
        node.outbox_filter = late_new_views
    for i in range(3):
        world.at(0.01 * i, lambda c=i % 2: world.submit(c))
    world.run_until(10.0, world.all_certified)
    assert world.all_certified(), [n.replica.view for n in world.nodes]
    assert all(n.replica.view == 1 for n in world.honest_nodes())


def test_a_replica_restarted_in_its_view_sends_a_valid_view_change():
    """A replica restarted in the view it was active in asks for that view with a
    VIEW-CHANGE; its prepared proofs of that view must stay out of it (a VIEW-CHANGE for
    view v carrying a proof of view v is invalid, and every node refuses it). Refused, the
    restarted nodes counted in no view change (seed 5288: two restarted in view 1 while the
    third honest node asked for view 2, and no view could gather 2f+1)."""
    from dropbear.consensus import proofs
    from dropbear.wire import ViewChange

    world = _idle_primary_world(0)
    world.submit(0)
    world.run_until(3.0, world.all_certified)
    assert world.all_certified() and world.nodes[1].replica.view == 1
    assert any(p.view == 1 for p in world.nodes[2].replica._prepared.values())
    sent = []

    def watch(world, node, to, message):
        if isinstance(message, ViewChange):
            sent.append(message)
        return message

    world.nodes[2].outbox_filter = watch
    world.crash(2, 0.1)
    world.run_until(world.now + 0.2)
    assert sent and all(vc.new_view == 1 for vc in sent)
    cfg = world.config
    assert all(proofs.valid_view_change(world.manifest, vc, cfg.checkpoint_interval, cfg.window)
               for vc in sent)
    assert world.nodes[2].replica.active and world.nodes[2].replica.view == 1


def test_seed_5288_replicas_restarted_in_their_view_rejoin():
    """Regression: with PRE-PREPAREs kept until their NEW-VIEW, seed 5288 (n=4, node 0
    silent) had nodes 1 and 2 crash with proofs prepared in view 1 and restart in it while
    node 3 asked for view 2: their VIEW-CHANGEs for view 1 carried those proofs, were
    refused, and no view ever gathered 2f+1."""
    run(5288)


def test_a_backup_missing_pre_prepares_catches_up_at_the_commit_quorum():
    """Node 3 gets no PRE-PREPARE (the primary's link to it drops them) but sees 2f+1
    COMMITs: it fetches the committed batches at once, well before a progress period."""
    from dropbear.wire import PrePrepare

    from .world import SIM_CONFIG, World

    world = World(4, 4, clients=1)

    def no_pre_prepares_to_3(world, node, to, message):
        return None if to == 3 and isinstance(message, PrePrepare) else message

    world.nodes[0].outbox_filter = no_pre_prepares_to_3
    world.submit(0)
    world.run_until(SIM_CONFIG.request_timeout / 3, lambda: world.nodes[3].replica.state.seq >= 1)
    assert world.nodes[3].replica.state.seq >= 1, world.now


def test_backups_check_a_client_signature_in_a_pre_prepare_by_the_intake_rule():
    """A client signature that only ZIP-215 accepts (R of small order, made by the key's
    holder; see tests/test_core_crypto.py): nodes 0-2 take it at intake, and node 3, which
    sees it only in the PRE-PREPARE, must take it there too and PREPARE."""
    import dataclasses

    from dropbear.consensus import ClientRequest
    from dropbear.wire import Kind, Request

    from tests.test_core_crypto import SMALL_ORDER_POINTS, signer_only_signature

    from .world import World, client_seed

    world = World(seed=11)
    client = world.clients[0]
    data = bytes(range(8))
    request = Request.create(client.key, world.manifest.group_id, 0, "uint8", (8,), data)
    forged = signer_only_signature(client_seed(world.seed, 0), request.header.body,
                                   bytes.fromhex(SMALL_ORDER_POINTS[3]))
    request = Request(dataclasses.replace(request.header, signature=forged), data)
    client.pending[0] = request
    client.next_id = 1
    for node in world.nodes[:3]:
        world.at(0.0, lambda n=node: world.deliver(n, ClientRequest([request])))
    world.run_until(0.5, world.all_certified)
    assert world.all_certified()
    signed = world.nodes[3].ledger.load().signed
    assert any(s.kind == Kind.PREPARE and s.seq == 1 for s in signed)


def test_a_request_sent_again_after_its_execution_gets_its_certificate_again():
    """A node answers a client that re-sends an executed request from its reply cache: one
    REPLY with the same certificate (entry, place and root) as the first time."""
    from dropbear.certificate import verify
    from dropbear.consensus import ClientRequest, Refuse, Reply
    from dropbear.wire import Request

    from .world import World

    world = World(seed=11)
    for _ in range(3):
        world.submit(0)
    sent = dict(world.clients[0].pending)
    world.run_until(10.0, stop=world.all_certified)
    assert world.all_certified()
    client = world.clients[0]
    for node in world.nodes:
        for rid, request in sent.items():
            first = client.certified[rid]
            replies = [a for a in node.replica.handle(ClientRequest([request]))
                       if isinstance(a, Reply)]
            assert [r.client for r in replies] == [client.key.public_key]
            (again,) = replies[0].certificates
            verify(again, world.manifest)
            assert (again.entry, again.seq, again.leaf_index, again.root, again.proof) == \
                (first.entry, first.seq, first.leaf_index, first.root, first.proof)
            assert node.replica.cached_certificate(client.key.public_key, rid) == again
        # The same request id with other input bytes is no retransmission: refused.
        other = Request.create(client.key, world.manifest.group_id, 1, "uint8", (8,), bytes(8))
        actions = node.replica.handle(ClientRequest([other]))
        assert not [a for a in actions if isinstance(a, Reply)]
        assert [a.request_id for a in actions if isinstance(a, Refuse)] == [1]


def test_requests_whose_ids_were_used_or_left_the_window_are_forgotten():
    """A node forgets a pending request once it can never be ordered: another request with
    its id was executed, or the client's replay window moved past its id."""
    from dropbear.consensus import ClientRequest
    from dropbear.wire import Request

    from .world import World

    world = World(seed=12)
    client = world.clients[0]
    gid = world.manifest.group_id
    one, twin = (Request.create(client.key, gid, 1, "uint8", (8,), data)
                 for data in (b"the one!", b"its twin"))  # one id, two requests: one is ordered
    below = Request.create(client.key, gid, 2, "uint8", (8,), b"only one")  # id 2, one node
    world.at(0.0, lambda: [world.deliver(n, ClientRequest([one, twin])) for n in world.nodes])
    world.at(0.0, lambda: world.deliver(world.nodes[1], ClientRequest([below])))
    world.run_until(5.0)
    assert [node.replica.executed for node in world.nodes] == [1] * 4
    # Id 2 has one vote and can never be ordered, but its id is still within the window.
    assert [node.replica.pending_requests for node in world.nodes] == [0, 1, 0, 0]
    client.next_id = 2 + MAX_INFLIGHT_PER_CLIENT  # the window moves past id 2
    world.submit(0)
    world.run_until(world.now + 5.0, stop=world.all_certified)
    assert world.all_certified()
    world.run_until(world.now + 1.0)  # every node executes it
    assert [node.replica.executed for node in world.nodes] == [2] * 4
    assert [node.replica.pending_requests for node in world.nodes] == [0] * 4
