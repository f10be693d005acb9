"""dropbear.net over real loopback TCP: handshake, frames, limits, reconnects."""

from __future__ import annotations

import struct

import pytest
import trio
from dropbear import _core
from dropbear.limits import NET_MAX_FRAME_BYTES
from dropbear.net import (
    FramedStream,
    HandshakeFailed,
    Listener,
    LocalIdentity,
    NetError,
    PeerIdentity,
    PeerLink,
    Role,
    handshake,
)

GROUP = b"\x11" * 32
NODE_KEYS = [_core.SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(2)]


def authorize_nodes(peer: PeerIdentity) -> bool:
    if peer.role is Role.CLIENT:
        return True
    return peer.node_id is not None and peer.node_id < len(NODE_KEYS) and (
        NODE_KEYS[peer.node_id].public_key == peer.public_key
    )


async def start_listener(nursery, received: list,
                         log: list[str] | None = None) -> tuple[Listener, int]:
    """Node 0's listener; every frame it takes goes into ``received`` as (peer, payload)."""
    async def on_frame(peer, payload, sender):
        received.append((peer, payload))

    listener = Listener(GROUP, LocalIdentity(NODE_KEYS[0], Role.NODE, 0), authorize_nodes,
                        on_frame, log=None if log is None else log.append)
    port = await nursery.start(listener.serve, "127.0.0.1", 0)
    return listener, port


async def test_authenticated_link_delivers_frames_in_order() -> None:
    received: list = []
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, received)
        link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes, on_frame=lambda *_: trio.sleep(0))
        for i in range(50):
            assert link.send(f"frame {i}".encode())
        nursery.start_soon(link.run)
        with trio.fail_after(5):
            while len(received) < 50:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [p for _, p in received] == [f"frame {i}".encode() for i in range(50)]
    assert {str(peer) for peer, _ in received} == {"node 1"}


async def test_impostor_node_is_refused() -> None:
    received: list = []
    log: list[str] = []
    impostor = _core.SigningKey.generate()

    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, received, log)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        framed = FramedStream(stream)
        with pytest.raises(NetError, match="connection closed by peer"):
            await handshake(framed, GROUP, LocalIdentity(impostor, Role.NODE, 1),
                            lambda _peer: True)
        nursery.cancel_scope.cancel()
    assert received == []
    assert any("node 1 with key" in line and "is not authorized" in line for line in log), log


async def test_wrong_group_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, [])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(HandshakeFailed, match="peer is in group"):
            await handshake(FramedStream(stream), b"\x22" * 32,
                            LocalIdentity(NODE_KEYS[1], Role.NODE, 1), lambda _peer: True)
        nursery.cancel_scope.cancel()


async def raw_garbage(port: int, data: bytes) -> bytes:
    """Sends raw bytes and returns whatever comes back before the listener hangs up."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(65536):
                got += chunk
    return got


async def test_garbage_and_oversized_frames_close_only_that_connection() -> None:
    received: list = []
    async with trio.open_nursery() as nursery:
        listener, port = await start_listener(nursery, received)
        await raw_garbage(port, b"\xff" * 64)  # announces a 4 GiB frame
        await raw_garbage(port, struct.pack(">I", 10) + b"short")  # a truncated HELLO
        await raw_garbage(port, struct.pack(">I", 5) + b"hello")  # a malformed HELLO
        # The listener keeps serving honest peers.
        link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes, on_frame=lambda *_: trio.sleep(0))
        link.send(b"still here")
        nursery.start_soon(link.run)
        with trio.fail_after(5):
            while not received:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert received[0][1] == b"still here"
    assert listener.connections == {}


async def test_oversized_frame_after_handshake_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, [])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        framed = FramedStream(stream)
        await handshake(framed, GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes)
        await stream.send_all(struct.pack(">I", NET_MAX_FRAME_BYTES + 1))
        with trio.fail_after(5):
            assert await stream.receive_some(100) in (b"", b"\x00\x00\x00\x00")
        nursery.cancel_scope.cancel()


async def test_link_reconnects_after_listener_restart() -> None:
    received: list = []

    async def on_frame(peer, payload, sender):
        received.append(payload)

    me = LocalIdentity(NODE_KEYS[0], Role.NODE, 0)
    async with trio.open_nursery() as outer:
        first = trio.CancelScope()

        async def serve_once(task_status=trio.TASK_STATUS_IGNORED):
            with first:
                await Listener(GROUP, me, authorize_nodes, on_frame).serve(
                    "127.0.0.1", 0, task_status=task_status)

        port = await outer.start(serve_once)
        link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes, on_frame=lambda *_: trio.sleep(0))
        outer.start_soon(link.run)
        link.send(b"one")
        with trio.fail_after(5):
            while received != [b"one"]:
                await trio.sleep(0.01)
        first.cancel()
        await trio.sleep(0.2)

        async def serve_again(task_status=trio.TASK_STATUS_IGNORED):
            await Listener(GROUP, me, authorize_nodes, on_frame).serve(
                "127.0.0.1", port, task_status=task_status)

        await outer.start(serve_again)
        with trio.fail_after(10):
            while b"two" not in received:
                link.send(b"two")
                await trio.sleep(0.2)
        assert link.failures >= 1
        outer.cancel_scope.cancel()


async def test_send_to_reaches_every_connection_of_a_key() -> None:
    """Two connections with one client key (two tools sharing it): both get the answers."""
    client = _core.SigningKey.generate()
    got: list[list[bytes]] = [[], []]

    async with trio.open_nursery() as nursery:
        listener, port = await start_listener(nursery, [])
        links = []
        for i in range(2):
            async def on_frame(peer, payload, sender, i=i):
                got[i].append(payload)

            link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(client, Role.CLIENT),
                            authorize_nodes, on_frame=on_frame)
            nursery.start_soon(link.run)
            links.append(link)
        with trio.fail_after(5):
            while len(listener.connections.get(client.public_key, ())) < 2:
                await trio.sleep(0.01)
        assert listener.send_to(client.public_key, b"answer")
        assert not listener.send_to(_core.SigningKey.generate().public_key, b"nobody")
        with trio.fail_after(5):
            while not all(got):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert got == [[b"answer"], [b"answer"]]


async def test_a_delayed_link_is_a_pipe_not_a_pause_per_frame() -> None:
    received: list = []
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, received)
        link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes, on_frame=lambda *_: trio.sleep(0), delay_s=0.2)
        nursery.start_soon(link.run)
        with trio.fail_after(5):
            while not link.connected:
                await trio.sleep(0.01)
        start = trio.current_time()
        for i in range(30):
            link.send(f"frame {i}".encode())
            await trio.sleep(0.01)
        with trio.fail_after(5):
            while len(received) < 30:
                await trio.sleep(0.005)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert [p for _, p in received] == [f"frame {i}".encode() for i in range(30)]
    # 30 frames queued over 0.3 s each leave 0.2 s after queueing: all in about 0.5 s, not
    # the 6 s of a 0.2 s pause per frame.
    assert 0.45 <= elapsed < 2.0, elapsed


async def test_a_frame_its_handler_cannot_take_closes_only_that_connection() -> None:
    log: list[str] = []
    taken: list[bytes] = []

    async def on_frame(peer, payload, sender):
        if payload == b"poison":
            raise TypeError("unhashable type: 'list'")
        taken.append(payload)

    async with trio.open_nursery() as nursery:
        listener = Listener(GROUP, LocalIdentity(NODE_KEYS[0], Role.NODE, 0), authorize_nodes,
                            on_frame, log=log.append)
        port = await nursery.start(listener.serve, "127.0.0.1", 0)
        link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes, on_frame=lambda *_: trio.sleep(0))
        nursery.start_soon(link.run)
        link.send(b"poison")
        with trio.fail_after(10):
            while not any("frame from node 1 refused" in line for line in log):
                await trio.sleep(0.01)
            link.send(b"after")  # the link reconnects; the listener still serves
            while b"after" not in taken:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_a_relayed_handshake_proof_is_refused() -> None:
    """An outsider relays node 1's proof (given to it as a client) into a connection to
    node 0, claiming to be node 1: the proof binds both HELLOs and the role, so it fails."""

    from dropbear.net import _HELLO, HELLO_MAGIC

    log: list[str] = []

    async def on_frame(peer, payload, sender):
        pass

    async with trio.open_nursery() as nursery:
        node0 = Listener(GROUP, LocalIdentity(NODE_KEYS[0], Role.NODE, 0), authorize_nodes,
                         on_frame, log=log.append)
        node1 = Listener(GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1), authorize_nodes,
                         on_frame)
        port0 = await nursery.start(node0.serve, "127.0.0.1", 0)
        port1 = await nursery.start(node1.serve, "127.0.0.1", 0)
        outsider = _core.SigningKey.generate()
        to0 = FramedStream(await trio.open_tcp_stream("127.0.0.1", port0))
        to1 = FramedStream(await trio.open_tcp_stream("127.0.0.1", port1))
        hello0 = await to0.receive()  # node 0 speaks first as well
        nonce0 = _HELLO.unpack(hello0)[5]
        # To node 1, as a client, reusing node 0's nonce.
        await to1.send(_HELLO.pack(HELLO_MAGIC, GROUP, Role.CLIENT, 0xFFFFFFFF,
                                   outsider.public_key, nonce0))
        hello1 = await to1.receive()
        proof1 = await to1.receive()
        # To node 0, as node 1: node 1's own HELLO and proof.
        await to0.send(hello1)
        await to0.receive()  # node 0's proof
        await to0.send(proof1)
        with trio.fail_after(5):
            while not any("failed to prove its key" in line for line in log):
                await trio.sleep(0.01)
        assert node0.connections == {}
        nursery.cancel_scope.cancel()


async def test_one_key_holds_a_bounded_number_of_connections() -> None:
    from dropbear.limits import NET_MAX_CONNECTIONS_PER_KEY

    log: list[str] = []

    async def on_frame(peer, payload, sender):
        pass

    client = LocalIdentity(_core.SigningKey.generate(), Role.CLIENT)
    async with trio.open_nursery() as nursery:
        listener = Listener(GROUP, LocalIdentity(NODE_KEYS[0], Role.NODE, 0), authorize_nodes,
                            on_frame, log=log.append)
        port = await nursery.start(listener.serve, "127.0.0.1", 0)
        streams = []
        for _ in range(NET_MAX_CONNECTIONS_PER_KEY + 2):
            framed = FramedStream(await trio.open_tcp_stream("127.0.0.1", port))
            await handshake(framed, GROUP, client, authorize_nodes)
            streams.append(framed)
        with trio.fail_after(5):
            while sum(len(c) for c in listener.connections.values()) < (
                    NET_MAX_CONNECTIONS_PER_KEY) or listener.refused < 2:
                await trio.sleep(0.01)
        assert len(listener.connections[client.key.public_key]) == NET_MAX_CONNECTIONS_PER_KEY
        assert any("NET_MAX_CONNECTIONS_PER_KEY" in line for line in log)
        nursery.cancel_scope.cancel()


async def connected_link(nursery, port: int, **kwargs) -> PeerLink:
    link = PeerLink(("127.0.0.1", port), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                    authorize_nodes, on_frame=lambda *_: trio.sleep(0), **kwargs)
    nursery.start_soon(link.run)
    with trio.fail_after(5):
        while not link.connected:
            await trio.sleep(0.01)
    return link


async def test_frames_bigger_than_the_socket_takes_at_once_arrive_whole_and_in_order() -> None:
    """A write the socket buffer cannot take at once is finished by the link's writer
    task, and frames queued meanwhile follow it, in order."""
    received: list = []
    big = [bytes([i]) * (6 << 20) for i in range(3)]  # far over a loopback socket buffer
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, received)
        link = await connected_link(nursery, port)
        for i, payload in enumerate(big):
            assert link.send(payload)
            assert link.send(f"small {i}".encode())
        assert link.outbox._unsent is not None  # the socket took only part of it
        with trio.fail_after(20):
            while len(received) < 6:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    got = [p for _, p in received]
    assert got[0::2] == big
    assert got[1::2] == [b"small 0", b"small 1", b"small 2"]


async def test_queued_frames_leave_together_at_the_next_flush() -> None:
    received: list = []
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, received)
        link = await connected_link(nursery, port)
        for i in range(3):
            assert link.outbox.put(f"queued {i}".encode())
        await trio.sleep(0.2)
        assert received == [] and link.outbox.depth() == 3  # put alone sends nothing
        link.outbox.flush()
        assert link.outbox.depth() == 0  # written at once, without a task switch
        with trio.fail_after(5):
            while len(received) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [p for _, p in received] == [b"queued 0", b"queued 1", b"queued 2"]


async def test_heartbeats_keep_an_idle_link_open_and_a_silent_peer_is_cut_off(
        monkeypatch) -> None:
    import dropbear.net as net

    monkeypatch.setattr(net, "NET_HEARTBEAT_INTERVAL_S", 0.1)
    monkeypatch.setattr(net, "NET_IDLE_TIMEOUT_S", 0.6)
    log: list[str] = []
    received: list = []
    async with trio.open_nursery() as nursery:
        listener, port = await start_listener(nursery, received, log)
        link = await connected_link(nursery, port)
        # A peer that proves its key and then says nothing, not even heartbeats.
        silent = FramedStream(await trio.open_tcp_stream("127.0.0.1", port))
        await handshake(silent, GROUP, LocalIdentity(_core.SigningKey.generate(), Role.CLIENT),
                        authorize_nodes)
        await trio.sleep(2.0)  # over three idle timeouts
        assert link.connected and link.failures == 0  # the heartbeats kept it open
        assert list(listener.connections) == [NODE_KEYS[1].public_key]
        assert any("no data from client" in line and "any frame" in line for line in log), log
        assert link.send(b"after the quiet")
        with trio.fail_after(5):
            while not received:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [p for _, p in received] == [b"after the quiet"]  # heartbeats never reach it


async def test_a_frame_trickled_in_too_slowly_is_cut_off(monkeypatch) -> None:
    import dropbear.net as net

    monkeypatch.setattr(net, "NET_FRAME_TIMEOUT_S", 0.5)
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        listener, port = await start_listener(nursery, [], log)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await handshake(FramedStream(stream), GROUP, LocalIdentity(NODE_KEYS[1], Role.NODE, 1),
                        authorize_nodes)
        start = trio.current_time()
        await stream.send_all(struct.pack(">I", 100) + b"0123456789")
        with trio.fail_after(5):
            try:
                while True:  # a byte every 0.1 s: data keeps coming, the frame never ends
                    await stream.send_all(b"x")
                    await trio.sleep(0.1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            while listener.connections:
                await trio.sleep(0.01)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert 0.4 <= elapsed < 3.0, elapsed
    assert any("a frame's rest" in line for line in log), log


async def test_a_frame_no_peer_would_take_is_dropped_and_counted(monkeypatch) -> None:
    import dropbear.net as net

    monkeypatch.setattr(net, "NET_MAX_FRAME_BYTES", 1000)
    received: list = []
    async with trio.open_nursery() as nursery:
        _, port = await start_listener(nursery, received)
        link = await connected_link(nursery, port)
        assert not link.send(b"x" * 1001)
        assert link.send(b"fits")
        with trio.fail_after(5):
            while not received:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert (link.outbox.dropped, link.outbox.too_large) == (1, 1)
    assert [p for _, p in received] == [b"fits"]  # the connection was not broken by it


async def test_frames_flushed_after_a_failed_write_wait_for_the_next_connection() -> None:
    import socket

    from dropbear.net import Outbox

    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    theirs.close()
    outbox = Outbox()
    outbox._attach(mine.fileno())
    assert outbox.send(b"lost with the connection")  # the write fails: EPIPE
    assert outbox._failed is not None and outbox.depth() == 0
    for i in range(3):
        assert outbox.send(f"later {i}".encode())
    assert outbox.depth() == 3  # kept for the writer to end the connection and the next one
    mine.close()


async def test_a_write_the_peer_drains_too_slowly_ends_the_connection(monkeypatch) -> None:
    import dropbear.net as net

    monkeypatch.setattr(net, "NET_FRAME_TIMEOUT_S", 0.5)
    mine, theirs = trio.socket.socketpair()
    outbox = net.Outbox()

    async def drain_a_byte_now_and_then() -> None:
        while True:  # data keeps moving, the write never ends in time
            await trio.sleep(0.05)
            await theirs.recv(65536)

    ended: list[float] = []

    async def writer() -> None:
        with pytest.raises(trio.TooSlowError):
            await net._write_loop(mine.fileno(), outbox)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(0.1)  # the writer is up and idle
        start = trio.current_time()
        nursery.start_soon(drain_a_byte_now_and_then)
        outbox.send(b"x" * (16 << 20))
        assert outbox._unsent is not None
        with trio.fail_after(5):
            while not ended:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert 0.4 <= ended[0] - start < 3.0
    mine.close()
    theirs.close()
