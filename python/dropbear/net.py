"""trio TCP transport: length-prefixed frames, authenticated peers, bounded queues.

Every connection starts with a handshake in which each side proves the key it claims
(a signature over the other side's fresh nonce); after it, frames are opaque bytes (wire
messages, each signed on its own). A frame is a 4-byte big-endian length and the payload;
an empty payload is a heartbeat. Every wait has a deadline (limits.NET_*), every queue a
bound, and an outbound link reconnects with exponential backoff.
"""

from __future__ import annotations

import os
import random
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import trio

from dropbear import _core
from dropbear.limits import (
    NET_CONNECT_TIMEOUT_S,
    NET_FRAME_TIMEOUT_S,
    NET_HANDSHAKE_TIMEOUT_S,
    NET_HEARTBEAT_INTERVAL_S,
    NET_IDLE_TIMEOUT_S,
    NET_MAX_CLIENT_CONNECTIONS,
    NET_MAX_CONNECTIONS,
    NET_MAX_CONNECTIONS_PER_KEY,
    NET_MAX_FRAME_BYTES,
    NET_MAX_HANDSHAKES,
    NET_PEER_SEND_QUEUE,
    NET_RECONNECT_BACKOFF_MAX_S,
    NET_RECONNECT_BACKOFF_MIN_S,
    NET_SEND_BATCH_BYTES,
    NET_SEND_BATCH_FRAMES,
)

NET_HANDSHAKE_MAX_FRAME_BYTES = 256
"""Frames before the handshake is over (a HELLO is 109 bytes, a proof 64)."""
NET_DELAY_BATCH_S = 0.001
"""A delayed link (``delay_s``) holds a frame up to this much longer, to send it with the
frames queued just after it."""
NET_READ_COMPACT_BYTES = 1 << 20
"""A receive buffer drops the bytes already read once this many have piled up."""

HELLO_MAGIC = b"DBHELLO1"
HANDSHAKE_CONTEXT = b"dropbear/handshake/v1"
_HEADER = struct.Struct(">I")
_HELLO = struct.Struct(">8s32sBI32s32s")
NO_NODE = 0xFFFFFFFF


class NetError(Exception):
    """A connection broke a transport rule; the message names the rule and the value."""


class FrameTooLarge(NetError):
    pass


class HandshakeFailed(NetError):
    pass


class Role(IntEnum):
    NODE = 0
    CLIENT = 1


@dataclass(frozen=True)
class PeerIdentity:
    """Who is at the other end of a connection, as proven in the handshake."""

    role: Role
    public_key: bytes
    node_id: int | None = None

    def __str__(self) -> str:
        if self.role is Role.NODE:
            return f"node {self.node_id}"
        return f"client {self.public_key.hex()[:12]}"


@dataclass(frozen=True)
class LocalIdentity:
    """This side of a connection: its signing key, role and (for a node) its id."""

    key: _core.SigningKey
    role: Role
    node_id: int | None = None


Authorize = Callable[[PeerIdentity], bool]
"""Decides whether a peer that claims an identity may connect (before its proof is checked)."""

class Sender(Protocol):
    """Where answers to a frame go: the connection (or link) it came on."""

    def send(self, payload: bytes) -> bool: ...


FrameHandler = Callable[[PeerIdentity, bytes, Sender], Awaitable[None]]
"""Called with each frame's sender, payload, and the connection to answer on."""


class FramedStream:
    """Length-prefixed frames over a trio stream, with size limits and deadlines."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int = NET_MAX_FRAME_BYTES) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._pos = 0
        """Where the unread bytes of ``_buffer`` start."""

    async def send(self, payload: bytes) -> None:
        await self.send_many([payload])

    async def send_many(self, payloads: list[bytes]) -> None:
        """Sends frames in one write (one deadline, one system call for small frames)."""
        parts = []
        for payload in payloads:
            if len(payload) > self.max_frame:
                raise FrameTooLarge(
                    f"frame of {len(payload)} bytes exceeds NET_MAX_FRAME_BYTES={self.max_frame}"
                )
            parts += (_HEADER.pack(len(payload)), payload)
        with trio.fail_after(NET_FRAME_TIMEOUT_S):
            await self.stream.send_all(b"".join(parts))

    async def _fill(self, n: int) -> None:
        """Reads until ``n`` unread bytes are buffered."""
        while len(self._buffer) - self._pos < n:
            chunk = await self.stream.receive_some(65536 if n <= 65536 else 1 << 20)
            if not chunk:
                raise NetError(
                    f"connection closed by peer after {len(self._buffer) - self._pos} of {n} "
                    "bytes"
                )
            self._buffer += chunk

    async def receive(self, idle_timeout: float = NET_IDLE_TIMEOUT_S) -> bytes:
        """The next frame's payload (b"" for a heartbeat). A frame already buffered is
        returned without waiting (and without setting up a deadline)."""
        if len(self._buffer) - self._pos < _HEADER.size:
            with trio.fail_after(idle_timeout):
                await self._fill(_HEADER.size)
        (length,) = _HEADER.unpack_from(self._buffer, self._pos)
        if length > self.max_frame:
            raise FrameTooLarge(
                f"peer announced a frame of {length} bytes; "
                f"NET_MAX_FRAME_BYTES is {self.max_frame}"
            )
        if len(self._buffer) - self._pos < _HEADER.size + length:
            with trio.fail_after(NET_FRAME_TIMEOUT_S):
                await self._fill(_HEADER.size + length)
        start = self._pos + _HEADER.size
        payload = bytes(self._buffer[start : start + length])
        self._pos = start + length
        if self._pos == len(self._buffer) or self._pos > NET_READ_COMPACT_BYTES:
            del self._buffer[: self._pos]
            self._pos = 0
        return payload


def _hello(group_id: bytes, me: LocalIdentity, nonce: bytes) -> bytes:
    node_id = NO_NODE if me.node_id is None else me.node_id
    return _HELLO.pack(HELLO_MAGIC, group_id, int(me.role), node_id, me.key.public_key, nonce)


def _proof_message(group_id: bytes, initiator: bool, transcript: bytes) -> bytes:
    """What each side signs: its role in this connection and both HELLOs (initiator's
    first), so that a proof cannot be relayed into another connection."""
    return HANDSHAKE_CONTEXT + group_id + (b"I" if initiator else b"R") + _core.sha256(
        transcript)


async def handshake(
    framed: FramedStream,
    group_id: bytes,
    me: LocalIdentity,
    authorize: Authorize,
    initiator: bool = True,
) -> PeerIdentity:
    """Both sides send HELLO (with a fresh nonce), then a signature over both HELLOs and
    their role (``initiator``: the side that connected); returns the proven peer."""
    my_hello = _hello(group_id, me, os.urandom(32))
    max_frame, framed.max_frame = framed.max_frame, NET_HANDSHAKE_MAX_FRAME_BYTES
    try:
        return await _handshake(framed, group_id, me, authorize, initiator, my_hello)
    finally:
        framed.max_frame = max_frame


async def _handshake(
    framed: FramedStream, group_id: bytes, me: LocalIdentity, authorize: Authorize,
    initiator: bool, my_hello: bytes
) -> PeerIdentity:
    with trio.fail_after(NET_HANDSHAKE_TIMEOUT_S):
        await framed.send(my_hello)
        their_hello = await framed.receive()
        if len(their_hello) != _HELLO.size:
            raise HandshakeFailed(f"HELLO must be {_HELLO.size} bytes, got {len(their_hello)}")
        magic, their_group, role, node_id, public_key, _nonce = _HELLO.unpack(their_hello)
        if magic != HELLO_MAGIC:
            raise HandshakeFailed(f"bad HELLO magic {magic!r}; expected {HELLO_MAGIC!r}")
        if their_group != group_id:
            raise HandshakeFailed(
                f"peer is in group {their_group.hex()[:16]}, not {group_id.hex()[:16]}"
            )
        if role not in (Role.NODE, Role.CLIENT):
            raise HandshakeFailed(f"unknown role {role} in HELLO")
        peer = PeerIdentity(
            Role(role), public_key, None if role == Role.CLIENT else node_id
        )
        if not authorize(peer):
            raise HandshakeFailed(f"{peer} with key {public_key.hex()[:16]} is not authorized")
        transcript = my_hello + their_hello if initiator else their_hello + my_hello
        await framed.send(me.key.sign(_proof_message(group_id, initiator, transcript)))
        proof = await framed.receive()
    try:
        ok = _core.verify(public_key, _proof_message(group_id, not initiator, transcript),
                          proof)
    except ValueError as e:
        raise HandshakeFailed(f"{peer}: {e}") from e
    if not ok:
        raise HandshakeFailed(f"{peer} failed to prove its key: bad handshake signature")
    return peer


class Outbox:
    """A bounded queue of frames for one peer (``capacity`` frames; when full, new frames
    are dropped and counted).

    :meth:`flush` writes what is queued straight to the connection's socket when the socket
    takes it, with no task switch; the connection's writer task (:func:`_write_loop`) only
    finishes writes the socket could not take at once, sends delayed links' frames, and
    sends heartbeats. Frames queued while no connection is up wait for the next one.
    """

    def __init__(self, capacity: int = NET_PEER_SEND_QUEUE, *, timed: bool = False) -> None:
        """``timed``: frames carry the time they were queued (a delayed link sends each that
        long after); others carry 0 (reading trio's clock per frame was a visible cost)."""
        self.capacity = capacity
        self.timed = timed
        self.dropped = 0
        self._frames: deque[tuple[float, bytes]] = deque()
        self._fd: int | None = None
        """The connected socket's descriptor while direct writes are allowed."""
        self._unsent: memoryview | None = None
        """The rest of a write the socket did not take at once (the writer finishes it)."""
        self._unsent_since = 0.0
        self._failed: OSError | None = None
        self._wake = trio.lowlevel.ParkingLot()
        self.last_write = 0.0
        self.too_large = 0
        """Frames refused for being over NET_MAX_FRAME_BYTES (also counted in ``dropped``)."""

    def put(self, payload: bytes) -> bool:
        """Queues a frame (sent at the next :meth:`flush`); False when it was dropped: the
        queue is full, or the frame is over NET_MAX_FRAME_BYTES (no peer would take it)."""
        if len(self._frames) >= self.capacity or len(payload) > NET_MAX_FRAME_BYTES:
            self.dropped += 1
            self.too_large += len(payload) > NET_MAX_FRAME_BYTES
            return False
        self._frames.append((trio.current_time() if self.timed else 0.0, payload))
        return True

    def send(self, payload: bytes) -> bool:
        """Queues a frame and flushes; False when the queue was full and it was dropped."""
        queued = self.put(payload)
        self.flush()
        return queued

    def flush(self) -> None:
        """Writes the queued frames now if the socket takes them; otherwise (not connected,
        a write in progress, a delayed link, a full socket buffer) the writer task will."""
        if not self._frames:
            return
        if self._fd is None or self._unsent is not None or self._failed is not None:
            self._wake.unpark_all()  # the writer finishes, or ends the broken connection
            return
        self._write_some()

    def depth(self) -> int:
        return len(self._frames)

    def _write_some(self, fd: int | None = None, until: float | None = None) -> None:
        """Writes queued frames (several per system call; those queued by ``until`` when
        given) until none is left or the socket stops taking them; what it did not take is
        left in ``_unsent``."""
        fd = self._fd if fd is None else fd
        assert fd is not None
        while self._frames and self._unsent is None:
            data = _join(self._frames, until)
            if not data:
                return  # the next frame is not due yet
            written = self._write(fd, data)
            if written is None:
                return
            if written < len(data):
                self._unsent = memoryview(data)[written:]
                self._unsent_since = trio.current_time()
                self._wake.unpark_all()

    def _write(self, fd: int, data: bytes | memoryview) -> int | None:
        """Writes what the socket takes of ``data`` at once; None when the write failed
        (kept in ``_failed``: the writer task ends the connection)."""
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as error:
            self._failed = error
            self._wake.unpark_all()
            return None
        if written:
            self.last_write = trio.current_time()
        return written

    def _attach(self, fd: int | None) -> None:
        """Binds the queue to a connection's socket (None: detached, for delayed links and
        between connections). A write cut short belongs to its connection and is dropped."""
        self._fd = fd
        self._unsent = None
        self._failed = None


class PassFlush:
    """Writes frames queued on outboxes once per scheduler pass: what every task queued
    with :meth:`put` during one pass leaves in one write per outbox (under load hundreds of
    frames, not a system call each). :meth:`run` must run in a task."""

    def __init__(self) -> None:
        self._due: set[Outbox] = set()
        self._wake = trio.Event()

    def put(self, outbox: Outbox, payload: bytes) -> bool:
        """Queues ``payload`` on ``outbox`` (see :meth:`Outbox.put`) for the next flush."""
        queued = outbox.put(payload)
        if not self._due:
            self._wake.set()  # the first of this pass: the flush task runs after it
        self._due.add(outbox)
        return queued

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            due, self._due = self._due, set()
            for outbox in due:
                outbox.flush()


def _join(frames: deque[tuple[float, bytes]], until: float | None = None) -> bytes:
    """Takes queued frames off ``frames`` (up to NET_SEND_BATCH_FRAMES / _BYTES; only those
    queued at or before ``until`` when given) and returns them framed, in one buffer."""
    parts: list[bytes] = []
    size = 0
    while frames and len(parts) < 2 * NET_SEND_BATCH_FRAMES and size < NET_SEND_BATCH_BYTES:
        if until is not None and frames[0][0] > until:
            break
        _, payload = frames.popleft()
        parts += (_HEADER.pack(len(payload)), payload)
        size += len(payload)
    return b"".join(parts)


async def _write_loop(fd: int, outbox: Outbox, delay_s: float = 0.0) -> None:
    """The connection's writer: finishes writes cut short, sends a delayed link's frames
    ``delay_s`` after they were queued, and a heartbeat whenever nothing was written for
    NET_HEARTBEAT_INTERVAL_S."""
    outbox._attach(None if delay_s else fd)
    try:
        while True:
            if outbox._failed is not None:
                raise NetError(f"write failed: {outbox._failed}")
            if outbox._unsent is not None:
                # One deadline for the whole write, however slowly the peer drains it.
                with trio.fail_at(outbox._unsent_since + NET_FRAME_TIMEOUT_S):
                    await trio.lowlevel.wait_writable(fd)
                written = outbox._write(fd, outbox._unsent)
                if written:
                    rest = outbox._unsent[written:]
                    outbox._unsent = rest if len(rest) else None
                continue
            if outbox._frames:
                if delay_s:
                    # Frames leave delay_s after they were queued (never earlier, at most
                    # NET_DELAY_BATCH_S later, so that a busy link writes in batches): a pipe
                    # of that latency, not a pause per frame, so it keeps its throughput.
                    await trio.sleep_until(outbox._frames[0][0] + delay_s + NET_DELAY_BATCH_S)
                    outbox._write_some(fd, until=trio.current_time() - delay_s)
                else:
                    outbox._write_some()
                    await trio.sleep(0)  # what the socket took at once: let others run
                continue
            with trio.move_on_at(outbox.last_write + NET_HEARTBEAT_INTERVAL_S) as idle:
                await outbox._wake.park()
            now = trio.current_time()
            if (idle.cancelled_caught and not outbox._frames
                    and now - outbox.last_write >= NET_HEARTBEAT_INTERVAL_S):
                outbox._frames.append((now, b""))  # heartbeat
    finally:
        outbox._attach(None)


class _ReadProgress:
    """What a connection's reader last achieved, for its watchdog (:func:`_read_deadlines`)."""

    __slots__ = ("last_frame", "partial_since")

    def __init__(self) -> None:
        self.last_frame = trio.current_time()
        """When the reader last took whole frames off the buffer."""
        self.partial_since: float | None = None
        """Since when the buffer holds the start of a frame whose rest has not come."""


async def _read_deadlines(progress: _ReadProgress, peer: PeerIdentity) -> None:
    """Ends the connection (TooSlowError) when a frame stays incomplete NET_FRAME_TIMEOUT_S
    after its first bytes, or no frame (a heartbeat at least) comes for NET_IDLE_TIMEOUT_S;
    it looks four times per the shorter timeout, so it cuts off within a quarter of it
    after the deadline. A task of its own: the reader then waits for data with no cancel
    scope (one per wait was a visible part of a node's CPU under load)."""
    while True:
        if progress.partial_since is not None:
            deadline, what = progress.partial_since + NET_FRAME_TIMEOUT_S, "a frame's rest"
        else:
            deadline, what = progress.last_frame + NET_IDLE_TIMEOUT_S, "any frame"
        if trio.current_time() >= deadline:
            raise trio.TooSlowError(f"no data from {peer} for {what} in time")
        await trio.sleep(min(NET_FRAME_TIMEOUT_S, NET_IDLE_TIMEOUT_S) / 4)


async def _read_loop(
    fd: int,
    buffer: bytearray,
    peer: PeerIdentity,
    on_frame: FrameHandler,
    sender: Sender,
    max_frame: int,
    progress: _ReadProgress,
) -> None:
    """The connection's reader: hands every complete frame in ``buffer`` to ``on_frame``,
    then reads what the socket holds (waiting only when it holds nothing). It records its
    progress in ``progress`` for the watchdog that enforces NET_FRAME_TIMEOUT_S and
    NET_IDLE_TIMEOUT_S (:func:`_read_deadlines`)."""
    while True:
        pos, end = 0, len(buffer)
        while end - pos >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, pos)
            if length > max_frame:
                raise FrameTooLarge(
                    f"peer announced a frame of {length} bytes; NET_MAX_FRAME_BYTES is "
                    f"{max_frame}")
            stop = pos + _HEADER.size + length
            if stop > end:
                break
            payload = bytes(buffer[pos + _HEADER.size : stop])
            pos = stop
            if payload:
                await _deliver(on_frame, peer, payload, sender)
        if pos:
            del buffer[:pos]
            now = trio.current_time()
            progress.last_frame = now
            progress.partial_since = now if buffer else None
        elif buffer and progress.partial_since is None:
            progress.partial_since = trio.current_time()
        need = _HEADER.size
        if len(buffer) >= _HEADER.size:
            need += _HEADER.unpack_from(buffer, 0)[0]
        size = 65536 if need <= 65536 else 1 << 20
        try:
            chunk = os.read(fd, size)
            await trio.sleep(0)  # data was waiting: still let the other tasks run
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            try:
                chunk = os.read(fd, size)
            except BlockingIOError:
                continue
        if not chunk:
            raise NetError(
                f"connection closed by peer after {len(buffer)} of {need} bytes")
        buffer += chunk


async def _deliver(on_frame: FrameHandler, peer: PeerIdentity, payload: bytes,
                   sender: Sender) -> None:
    try:
        await on_frame(peer, payload, sender)
    except CONNECTION_ERRORS:
        raise
    except Exception as error:
        if getattr(error, "fatal", False):
            raise
        # A frame its handler cannot take costs its sender the connection, not us the
        # process.
        raise NetError(f"frame from {peer} refused: {error!r}"[:500]) from error


CONNECTION_ERRORS = (
    NetError,
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
"""What ends one connection (and only it): broken rules, timeouts, closed sockets."""


async def run_connection(
    framed: FramedStream,
    peer: PeerIdentity,
    outbox: Outbox,
    on_frame: FrameHandler,
    sender: Sender,
    delay_s: float = 0.0,
) -> None:
    """Reads and writes one authenticated connection (a TCP ``framed`` stream, past its
    handshake) until either side fails; re-raises the first connection error (not wrapped
    in an exception group)."""
    stream = framed.stream
    if not isinstance(stream, trio.SocketStream):
        raise TypeError(f"run_connection needs a trio.SocketStream, not {type(stream).__name__}")
    fd = stream.socket.fileno()
    buffer = framed._buffer[framed._pos:]  # frames that came with the handshake's last one
    errors: list[Exception] = []

    async def until_error(run, *args) -> None:
        try:
            await run(*args)
        except CONNECTION_ERRORS as e:
            errors.append(e)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_error, _write_loop, fd, outbox, delay_s)
        progress = _ReadProgress()
        nursery.start_soon(until_error, _read_loop, fd, buffer, peer, on_frame, sender,
                           framed.max_frame, progress)
        nursery.start_soon(until_error, _read_deadlines, progress, peer)
    if errors:
        raise errors[0]


class PeerLink:
    """An outbound link to one address: reconnects with backoff, keeps a bounded outbox.

    ``delay_s`` holds every frame that long before sending (the benchmarks' "sites").
    """

    def __init__(
        self,
        address: tuple[str, int],
        group_id: bytes,
        me: LocalIdentity,
        authorize: Authorize,
        on_frame: FrameHandler,
        delay_s: float = 0.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.group_id = group_id
        self.me = me
        self.authorize = authorize
        self.on_frame = on_frame
        self.delay_s = delay_s
        self.outbox = Outbox(timed=delay_s > 0)
        self.connected = False
        self.peer: PeerIdentity | None = None
        self.failures = 0
        self._log = log or (lambda _msg: None)

    def send(self, payload: bytes) -> bool:
        """Sends a frame (now, if the connection takes it); False when the outbox is full
        and the frame was dropped."""
        return self.outbox.send(payload)

    async def run(self) -> None:
        backoff = NET_RECONNECT_BACKOFF_MIN_S
        while True:
            try:
                with trio.fail_after(NET_CONNECT_TIMEOUT_S):
                    stream = await trio.open_tcp_stream(*self.address)
                async with stream:
                    framed = FramedStream(stream)
                    self.peer = await handshake(framed, self.group_id, self.me, self.authorize)
                    self.connected = True
                    backoff = NET_RECONNECT_BACKOFF_MIN_S
                    await run_connection(framed, self.peer, self.outbox, self.on_frame, self,
                                         self.delay_s)
            except CONNECTION_ERRORS as e:
                self._log(f"link to {self.address[0]}:{self.address[1]}: {e}")
            finally:
                self.connected = False
            self.failures += 1
            await trio.sleep(backoff * (0.5 + random.random()))
            backoff = min(NET_RECONNECT_BACKOFF_MAX_S, backoff * 2)


@dataclass
class InboundConnection:
    """An accepted, authenticated connection; replies go out through its outbox."""

    peer: PeerIdentity
    outbox: Outbox = field(default_factory=Outbox)

    def send(self, payload: bytes) -> bool:
        return self.outbox.send(payload)


class Listener:
    """Accepts authenticated connections from nodes and clients (bounded in number)."""

    def __init__(
        self,
        group_id: bytes,
        me: LocalIdentity,
        authorize: Authorize,
        on_frame: FrameHandler,
        max_connections: int = NET_MAX_CONNECTIONS,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.group_id = group_id
        self.me = me
        self.authorize = authorize
        self.on_frame = on_frame
        self.max_connections = max_connections
        self.connections: dict[bytes, list[InboundConnection]] = {}
        """Open connections by the peer's public key, oldest first."""
        self.refused = 0
        self._open = 0
        self._handshaking = 0
        self._log = log or (lambda _msg: None)

    def send_to(self, peer_key: bytes, payload: bytes) -> bool:
        """Queues a frame for the peer with this public key (e.g. a client) on every open
        connection of that key; False when none took it.

        A key may have several connections at once (two tools sharing a client key, or a
        reconnect beside a connection not yet timed out); answering only the newest would
        starve the others: their requests would never get an answer.
        """
        sent = False
        for conn in self.connections.get(peer_key, ()):
            sent = conn.send(payload) or sent
        return sent

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._open >= self.max_connections or self._handshaking >= NET_MAX_HANDSHAKES:
                self.refused += 1
                self._log(f"refused a connection: {self._open} open (NET_MAX_CONNECTIONS="
                          f"{self.max_connections}), {self._handshaking} proving their key "
                          f"(NET_MAX_HANDSHAKES={NET_MAX_HANDSHAKES})")
                return
            self._open += 1
            peer, conn = None, None
            try:
                framed = FramedStream(stream)
                self._handshaking += 1
                try:
                    peer = await handshake(framed, self.group_id, self.me, self.authorize,
                                           initiator=False)
                finally:
                    self._handshaking -= 1
                held = self.connections.get(peer.public_key, ())
                clients = sum(len(c) for c in self.connections.values()
                              if c[0].peer.role is Role.CLIENT)
                if len(held) >= NET_MAX_CONNECTIONS_PER_KEY or (
                        peer.role is Role.CLIENT and clients >= NET_MAX_CLIENT_CONNECTIONS):
                    self.refused += 1
                    raise NetError(f"{peer} refused: it holds {len(held)} connections "
                                   f"(NET_MAX_CONNECTIONS_PER_KEY={NET_MAX_CONNECTIONS_PER_KEY})"
                                   f", clients hold {clients} (NET_MAX_CLIENT_CONNECTIONS="
                                   f"{NET_MAX_CLIENT_CONNECTIONS})")
                conn = InboundConnection(peer)
                self.connections.setdefault(peer.public_key, []).append(conn)
                await run_connection(framed, peer, conn.outbox, self.on_frame, conn)
            except CONNECTION_ERRORS as e:
                self._log(f"connection from {peer or 'unauthenticated peer'}: {e}")
            finally:
                self._open -= 1
                if conn is not None:
                    conns = self.connections[conn.peer.public_key]
                    conns.remove(conn)
                    if not conns:
                        del self.connections[conn.peer.public_key]


__all__ = [
    "CONNECTION_ERRORS",
    "Authorize",
    "FrameHandler",
    "FrameTooLarge",
    "FramedStream",
    "HandshakeFailed",
    "InboundConnection",
    "Listener",
    "LocalIdentity",
    "NetError",
    "Outbox",
    "PeerIdentity",
    "PeerLink",
    "Role",
    "Sender",
    "handshake",
    "run_connection",
]
