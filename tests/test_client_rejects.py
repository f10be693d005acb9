"""The client gives up on a request only when f+1 nodes refuse it for good."""

import math

import numpy as np
import trio
from dropbear import _core, control
from dropbear.client import Client, ClientError, _Pending
from dropbear.net import PeerIdentity, Role
from dropbear.wire import Request
from sim.group import make_group

GROUP = make_group(4)


def unscheduled(request: Request) -> _Pending:
    """A pending request that no timer re-sends or gives up (no resend task runs here)."""
    return _Pending(request, resend_at=math.inf, deadline=math.inf)


def reject(client: Client, node: int, request_id: int, transient: bool) -> None:
    peer = PeerIdentity(Role.NODE, GROUP.manifest.node_key(node), node)
    frame = control.encode(control.Control.REJECT, {
        "request_id": request_id, "reason": "why", "node": node, "transient": transient})
    client._on_control(peer, frame)


async def test_transient_refusals_do_not_end_a_request() -> None:
    client = Client(GROUP.manifest, _core.SigningKey.generate())
    request = Request.create(client.key, GROUP.manifest.group_id, 7, "uint8", (1,), b"\x01")
    pending = client._pending[7] = unscheduled(request)
    for node in range(4):
        reject(client, node, 7, transient=True)
    assert not pending.done.is_set()
    reject(client, 0, 7, transient=False)
    assert not pending.done.is_set()  # one node (perhaps the faulty one) is not enough
    reject(client, 1, 7, transient=False)
    assert pending.done.is_set() and sorted(pending.rejects) == [0, 1]
    await trio.sleep(0)


async def test_a_malformed_reject_is_ignored() -> None:
    client = Client(GROUP.manifest, _core.SigningKey.generate())
    peer = PeerIdentity(Role.NODE, GROUP.manifest.node_key(0), 0)
    for request_id in ([1], {"a": 1}, "7", None, 1e999):
        frame = control.encode(control.Control.REJECT, {"request_id": request_id})
        client._on_control(peer, frame)  # must not raise
    await trio.sleep(0)


async def test_a_control_exchange_takes_only_the_answer_it_asked_for() -> None:
    client = Client(GROUP.manifest, _core.SigningKey.generate())
    peer = PeerIdentity(Role.NODE, GROUP.manifest.node_key(2), 2)
    result: list = []

    async def ask():
        result.append(await client.control(2, control.Control.FAULT, {"mode": "none"},
                                           timeout=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.sleep(0.05)
        # A late STATUS (from an earlier query) is not the ACK this exchange waits for.
        client._on_control(peer, control.encode(control.Control.STATUS, {"view": 0}))
        await trio.sleep(0.05)
        assert result == []
        client._on_control(peer, control.encode(control.Control.ACK, {"ok": True}))
    assert result == [{"ok": True}]


def client_with_pending(request_id: int) -> Client:
    """A client (not connected) with one pending request ``request_id``."""
    client = Client(GROUP.manifest, _core.SigningKey.generate())
    request = Request.create(client.key, GROUP.manifest.group_id, request_id, "uint8", (1,),
                             bytes([request_id]))
    client._pending[request_id] = unscheduled(request)
    return client


async def test_a_node_that_refused_for_a_full_limit_is_asked_again_soon() -> None:
    from dropbear import limits

    client = client_with_pending(9)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._retry_loop)
        reject(client, 1, 9, transient=True)
        reject(client, 3, 9, transient=True)
        reject(client, 3, 9, transient=True)  # once per node, however many refusals
        reject(client, 2, 8, transient=True)  # not pending: nothing to re-send
        assert [link.outbox.depth() for link in client.links] == [0, 0, 0, 0]
        await trio.sleep(limits.CLIENT_RETRY_BACKOFF_S * 3)
        assert [link.outbox.depth() for link in client.links] == [0, 1, 0, 1]
        assert client.transient_rejects == 3
        # Answered meanwhile: a later refusal re-sends nothing.
        client._pending[9].done.set()
        reject(client, 0, 9, transient=True)
        await trio.sleep(limits.CLIENT_RETRY_BACKOFF_S * 3)
        assert [link.outbox.depth() for link in client.links] == [0, 1, 0, 1]
        nursery.cancel_scope.cancel()


async def test_a_node_that_stays_full_is_asked_again_only_a_few_times() -> None:
    from dropbear import limits

    client = client_with_pending(5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._retry_loop)
        for _ in range(limits.CLIENT_FAST_RETRIES + 3):
            reject(client, 2, 5, transient=True)
            await trio.sleep(limits.CLIENT_RETRY_BACKOFF_S * 2)
        assert client.links[2].outbox.depth() == limits.CLIENT_FAST_RETRIES
        nursery.cancel_scope.cancel()


async def test_a_request_is_resent_each_timeout_and_given_up_at_the_deadline() -> None:
    client = Client(GROUP.manifest, _core.SigningKey.generate(), request_timeout=0.05,
                    deadline=0.3)
    sent: list[int] = []
    for index, link in enumerate(client.links):  # no node answers: the links never connect
        link.outbox.put = (  # type: ignore[method-assign]
            lambda frame, i=index: sent.append(i) is None)
    for link in client.links:
        link.run = trio.sleep_forever  # type: ignore[method-assign]  # no network here
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        client.start(nursery)
        try:
            await client.infer(np.zeros((8, 8, 1), np.float32))
        except ClientError as error:
            assert "got no certificate within 0.3s" in str(error)
        else:
            raise AssertionError("a request nobody answers must fail at the deadline")
        assert 0.3 <= trio.current_time() - start < 1.0
        assert not client._pending  # given up: its slot is free
        nursery.cancel_scope.cancel()
    rounds = len(sent) // 4
    assert sorted(sent) == sorted(list(range(4)) * rounds) and 5 <= rounds <= 7


async def test_a_started_client_writes_its_requests_within_a_scheduler_pass() -> None:
    """Requests wait in the links' outboxes until the client's flush task writes them:
    :meth:`Client.start` (which :meth:`Client.connect` and the CLI use) must run it."""
    client = Client(GROUP.manifest, _core.SigningKey.generate(), request_timeout=5.0,
                    deadline=5.0)
    flushed: list[int] = []
    for index, link in enumerate(client.links):
        link.run = trio.sleep_forever  # type: ignore[method-assign]  # no network here
        link.outbox.flush = (  # type: ignore[method-assign]
            lambda i=index: flushed.append(i))
    async with trio.open_nursery() as nursery:
        client.start(nursery)
        nursery.start_soon(client.infer, np.zeros((8, 8, 1), np.float32))
        await trio.sleep(0.05)
        assert sorted(flushed) == [0, 1, 2, 3]
        assert [link.outbox.depth() for link in client.links] == [1, 1, 1, 1]
        nursery.cancel_scope.cancel()


async def test_infer_on_a_client_that_was_not_started_says_so() -> None:
    """Sending, re-sending and giving up are the started client's tasks: without them a
    request would wait for ever, so infer refuses at once and says what to do."""
    client = Client(GROUP.manifest, _core.SigningKey.generate())
    try:
        await client.infer(np.zeros((8, 8, 1), np.float32))
    except ClientError as error:
        assert "not started" in str(error) and "Client.connect" in str(error)
    else:
        raise AssertionError("infer must refuse on a client that was not started")
    assert not client._pending


async def test_every_request_whose_send_is_lost_is_sent_again() -> None:
    """Requests in flight from several tasks, answered in batches (as REPLYs come), and the
    first send of every third one lost: each is re-sent a request timeout later and none
    waits for its deadline, however the sends, the answers and the re-send task's wake-ups
    interleave (that task must not fall asleep while a request waits)."""

    client = Client(GROUP.manifest, _core.SigningKey.generate(), request_timeout=0.004,
                    deadline=5.0)
    for link in client.links:
        link.run = trio.sleep_forever  # type: ignore[method-assign]  # no network here
    sends: dict[int, int] = {}
    heard: set[int] = set()
    from dropbear.client import _Answer

    answer = _Answer(1, True, (), b"", 0)

    def put(outbox: object, frame: bytes) -> bool:
        request_id = Request.decode(frame).header.request_id
        sends[request_id] = sends.get(request_id, 0) + 1
        if request_id % 3 or sends[request_id] > 4:  # the first send (to 4 nodes) is lost
            heard.add(request_id)
        return True

    async def nodes() -> None:  # answer everything heard so far, every 4 ms
        while True:
            await trio.sleep(0.004)
            for request_id in sorted(heard):
                pending = client._pending.get(request_id)
                if pending is not None and not pending.done.is_set():
                    pending.answer = answer
                    pending.done.set()
            heard.clear()

    async def worker() -> None:
        for _ in range(50):
            await client.infer(np.zeros((8, 8, 1), np.float32))

    client._flush.put = put  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        client.start(nursery)
        nursery.start_soon(nodes)
        with trio.fail_after(4):  # well before the deadline
            async with trio.open_nursery() as workers:
                for _ in range(4):
                    workers.start_soon(worker)
        nursery.cancel_scope.cancel()
    lost = [rid for rid in sends if rid % 3 == 0]
    assert len(sends) == 200 and lost
    assert all(sends[rid] >= 8 for rid in lost)  # sent twice to each of the four nodes
