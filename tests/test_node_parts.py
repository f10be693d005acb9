"""The node's small parts: its timers and its inference slots."""

import pytest
import trio
from dropbear.node import Slots, Timers


def test_a_timer_cancelled_by_handling_an_earlier_one_does_not_fire():
    timers = Timers()
    timers.set("vote-wait", 1.0)
    timers.set("batch-wait", 1.5)
    timers.set("progress", 9.0)
    assert timers.pop_due(2.0) == "vote-wait"  # earliest first
    timers.cancel("batch-wait")  # what handling vote-wait may do
    assert timers.pop_due(2.0) is None
    timers.set("progress", 1.0)  # re-set earlier
    assert timers.pop_due(2.0) == "progress" and timers.pop_due(10.0) is None


async def test_timers_wake_the_loop_at_the_deadline_or_when_one_is_set():
    timers = Timers()
    start = trio.current_time()
    timers.set("t", start + 0.05)
    await timers.wait_for_change()
    assert trio.current_time() - start >= 0.05 and timers.pop_due(trio.current_time()) == "t"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.wait_for_change)
        await trio.sleep(0.01)
        timers.set("u", trio.current_time() + 60)  # the waiter returns at once
    assert trio.current_time() - start < 1.0


async def test_only_a_timer_earlier_than_the_one_slept_for_wakes_the_loop():
    timers = Timers()
    start = trio.current_time()
    timers.set("progress", start + 0.3)
    woke = []

    async def waiter():
        await timers.wait_for_change()
        woke.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.01)
        timers.set("catch-up", start + 5.0)  # later: the loop keeps sleeping
        await trio.sleep(0.05)
        assert woke == []
        timers.set("vote-wait", trio.current_time())  # earlier: wakes it now
    assert len(woke) == 1 and woke[0] < 0.2


async def test_slots_are_taken_whole_and_first_come_first_served():
    slots = Slots(10)
    await slots.take(7)
    order = []

    async def taker(name, n):
        await slots.take(n)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker, "big", 6)
        await trio.sleep(0.01)
        nursery.start_soon(taker, "small", 1)  # would fit now, but waits its turn
        await trio.sleep(0.01)
        assert order == [] and slots.used == 7
        slots.give(7)
    assert order == ["big", "small"] and slots.used == 7
    with pytest.raises(ValueError, match="cannot take 11 of 10"):
        await slots.take(11)


async def test_a_reply_waits_for_the_group_commit_only_while_our_own_commit_does(tmp_path):
    """A REPLY leaves at once, except when our own COMMIT of its batch (which the
    certificate may carry) is still waiting for the fsync that makes it durable."""
    from dropbear import _core
    from dropbear.certificate import CommittedTree
    from dropbear.consensus import Broadcast, Reply, SetTimer
    from dropbear.inference import ModelRepository
    from dropbear.inference.null import NullExecutor
    from dropbear.ledger import SqliteLedger
    from dropbear.node import Node
    from dropbear.wire import Commit, Kind, Statement
    from sim.group import make_group

    group = make_group(4)
    manifest = group.manifest
    repository = ModelRepository("models")
    info = manifest.nodes[0]
    executor = NullExecutor(repository.config("digits-mlp"), info.model_version.hex())
    ledger = SqliteLedger(tmp_path / "node-0.db", group_id=manifest.group_id, node=0,
                          group_commit=True)
    node = Node(manifest, 0, group.node_keys[0], executor, repository, ledger=ledger)
    carried: list = []
    node._carry_out = lambda actions: carried.extend(actions)  # what leaves, in order

    def reply(seq: int) -> Reply:
        tree = CommittedTree(manifest.group_id, 0, seq, (), _core.MerkleTree([b"leaf"]))
        return Reply(_core.SigningKey.generate().public_key, tree, ((0, None),))

    ours = Broadcast(Commit(Statement(Kind.COMMIT, manifest.group_id, 0, 0, 5, 1, bytes(32)))
                     .signed(group.node_keys[0]))
    node._record = lambda actions: None  # these stand-in certificates are not for storing
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._flush_loop)
        timer, older, newer = SetTimer("progress", 1.0), reply(4), reply(5)
        node._apply([ours, older, newer, timer])
        assert carried == [older, timer]  # seq 5 waits with our COMMIT of seq 5
        await trio.sleep(0.05)  # the group commit
        assert carried == [older, timer, ours, newer]
        node._apply([reply(5)])  # our COMMIT of seq 5 is durable now: at once
        assert len(carried) == 5
        nursery.cancel_scope.cancel()
    ledger.close()


async def test_inference_starts_at_once_unless_a_model_switch_waits_for_the_commit(tmp_path):
    """Running the model sends nothing by itself, so a RequestInference does not wait for
    the group commit; but after a model switch that still waits, it waits too (it must run
    on the new version)."""
    from dropbear.consensus import ActivateModel, RequestInference
    from dropbear.inference import ModelRepository
    from dropbear.inference.null import NullExecutor
    from dropbear.ledger import SqliteLedger
    from dropbear.node import Node
    from sim.group import make_group

    group = make_group(4)
    manifest = group.manifest
    executor = NullExecutor(ModelRepository("models").config("digits-mlp"),
                            manifest.nodes[0].model_version.hex())
    ledger = SqliteLedger(tmp_path / "node-0.db", group_id=manifest.group_id, node=0,
                          group_commit=True)
    node = Node(manifest, 0, group.node_keys[0], executor, ModelRepository("models"),
                ledger=ledger)
    carried: list = []
    node._carry_out = lambda actions: carried.extend(actions)
    node._record = lambda actions: None
    first, later = RequestInference((), b"\x01" * 32), RequestInference((), b"\x02" * 32)
    switch = ActivateModel(b"\x02" * 32)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._flush_loop)
        node._apply([first])
        assert carried == [first]  # at once
        node._apply([switch])
        node._apply([later])  # a switch waits: so does this inference, after it
        assert carried == [first]
        await trio.sleep(0.05)  # the group commit
        assert carried == [first, switch, later]
        node._apply([RequestInference((), b"\x02" * 32)])
        assert len(carried) == 4  # the switch is done: at once again
        nursery.cancel_scope.cancel()
    ledger.close()


async def test_a_request_executed_while_it_queued_for_the_model_gets_no_run(tmp_path):
    """A node behind the others must not spend its model on requests the group already
    executed with the others' votes (it would stay behind for good): those are skipped,
    the rest are run and voted on."""
    import numpy as np
    from dropbear.consensus import LocalVotes
    from dropbear.inference import Executor, ModelRepository
    from dropbear.node import Node
    from dropbear.wire import Request
    from sim.group import key, make_group

    group = make_group(4)
    manifest = group.manifest
    repository = ModelRepository("models")
    executor = Executor(repository.load("digits-mlp"), max_batch_size=4, max_queue_delay=0.0)
    node = Node(manifest, 0, group.node_keys[0], executor, repository)
    client = key("skip/client")
    requests = [Request.create(client, manifest.group_id, i, "float32", (8, 8, 1),
                               np.full((8, 8, 1), i, np.float32).tobytes()) for i in range(12)]
    executed = {r.digest for r in requests[:4]}  # before the node took them
    node.replica.awaits_votes = lambda digest: digest not in executed
    voted: list = []
    node._handle = lambda event: voted.extend(event.votes if isinstance(event, LocalVotes)
                                              else ())
    servable = executor._current
    real_run = servable.run

    def run_while_the_group_executes(xs):  # the first batch: 4..7; 8..11 get executed
        executed.update(r.digest for r in requests[8:])
        return real_run(xs)

    servable.run = run_while_the_group_executes
    async with trio.open_nursery() as nursery:
        await executor.start(nursery)
        await node._infer_chunk(requests)
        nursery.cancel_scope.cancel()
    assert [v.request for v in voted] == [r.digest for r in requests[4:8]]
    assert (executor.stats.batches, executor.stats.inputs, executor.stats.skipped) == (1, 4, 4)


class _Answers:
    """What a node sends a client's connection (its REJECTs), kept in order."""

    def __init__(self):
        self.frames: list[bytes] = []

    def send(self, payload: bytes) -> bool:
        self.frames.append(payload)
        return True


def _intake_node(client_name: str):
    """Node 0 of a group of four with the null model, whose replica events are kept
    instead of handled; a client key and its connection's identity and answers."""
    from dropbear.inference import ModelRepository
    from dropbear.inference.null import NullExecutor
    from dropbear.net import PeerIdentity, Role
    from dropbear.node import Node
    from sim.group import key, make_group

    group = make_group(4)
    manifest = group.manifest
    executor = NullExecutor(ModelRepository("models").config("digits-mlp"),
                            manifest.nodes[0].model_version.hex())
    node = Node(manifest, 0, group.node_keys[0], executor, ModelRepository("models"))
    handled: list = []
    node._handle = handled.append
    client = key(client_name)
    return node, handled, client, PeerIdentity(Role.CLIENT, client.public_key), _Answers()


async def test_client_requests_with_bad_inputs_are_refused_and_the_rest_go_on_in_order():
    """The frame handler refuses what a request's header gives away (dtype, shape, size);
    the intake loop finds NaN and inf values for a whole batch at once: each client hears
    what is wrong with its own request, and the good ones reach the replica in order."""
    import numpy as np
    from dropbear import control
    from dropbear.consensus import ClientRequest
    from dropbear.wire import Request

    node, handled, client, peer, answers = _intake_node("intake/client")
    manifest = node.manifest

    def request(i: int, x: np.ndarray) -> Request:
        return Request.create(client, manifest.group_id, i, "float32", x.shape,
                              x.astype("<f4").tobytes())

    good = np.ones((8, 8, 1), np.float32)
    nan, inf = good.copy(), good.copy()
    nan[3, 3, 0] = np.nan
    inf[0, :, 0] = -np.inf
    requests = [request(0, good), request(1, nan), request(2, 2 * good),
                request(3, np.ones((28, 28, 1), np.float32)), request(4, inf),
                request(5, 3 * good)]
    for r in requests:
        node._on_client_frame(peer, r.encoded, answers)
    assert len(node._intake) == 5  # not the wrong shape
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._intake_loop)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert len(handled) == 1 and isinstance(handled[0], ClientRequest)  # one intake batch
    assert [r.header.request_id for r in handled[0].requests] == [0, 2, 5]
    reasons = {}
    for frame in answers.frames:
        kind, body = control.decode(frame)
        assert kind is control.Control.REJECT and body["node"] == 0 and not body["transient"]
        reasons[body["request_id"]] = body["reason"]
    assert reasons == {3: "input shape [28, 28, 1] is not the model's [8, 8, 1]",
                       1: "input holds 1 NaN or inf values",
                       4: "input holds 8 NaN or inf values"}


async def test_the_intake_queue_is_bounded_and_hands_over_in_batches(monkeypatch):
    """Past NODE_INTAKE_QUEUE waiting requests a client hears "node busy" (transient) and
    nothing is queued; the intake loop, woken by the first request, hands the queue to the
    replica in batches of at most NODE_INTAKE_BATCH, in arrival order."""
    import numpy as np
    from dropbear import control, limits
    from dropbear.wire import Request

    monkeypatch.setattr(limits, "NODE_INTAKE_QUEUE", 5)
    monkeypatch.setattr(limits, "NODE_INTAKE_BATCH", 2)
    node, handled, client, peer, answers = _intake_node("intake/bounded")
    manifest = node.manifest
    x = np.ones((8, 8, 1), "<f4").tobytes()
    frames = [Request.create(client, manifest.group_id, i, "float32", (8, 8, 1), x).encoded
              for i in range(7)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._intake_loop)
        await trio.sleep(0.01)  # the loop waits for the first request
        for frame in frames:  # no checkpoint between them: all queue before the loop runs
            node._on_client_frame(peer, frame, answers)
        assert len(node._intake) == 5
        await trio.sleep(0.05)
        assert not node._intake
        node._on_client_frame(peer, frames[0], answers)  # the loop waits again: woken
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert [[r.header.request_id for r in e.requests] for e in handled] == \
        [[0, 1], [2, 3], [4], [0]]
    refused = [control.decode(frame)[1] for frame in answers.frames]
    assert [(b["request_id"], b["transient"]) for b in refused] == [(5, True), (6, True)]
    assert all("node busy: 5 requests waiting (NODE_INTAKE_QUEUE)" == b["reason"]
               for b in refused)
