"""The Dropbear client: sends a request to every node, returns the first certificate that
verifies against the manifest, re-sending on timeout. A blocking facade wraps it for
scripts and notebooks.

    async with Client.connect(manifest, key) as client:
        result = await client.infer(image)      # result.label, result.certificate
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from dropbear import _core, certificate, control, limits
from dropbear.cached import cached_property
from dropbear.manifest import Manifest
from dropbear.net import LocalIdentity, PassFlush, PeerIdentity, PeerLink, Role, Sender
from dropbear.node import split_address
from dropbear.wire import Certificate, Reply, Request, decode


class ClientError(Exception):
    """A request that could not be certified; the message says why."""


class RequestRejected(ClientError):
    """At least f+1 nodes refused the request (so at least one honest node did)."""


@dataclass(frozen=True)
class Result:
    """The group's certified answer to one request."""

    label: int
    """The agreed label (plurality of the votes, ties to the lowest)."""
    reached: bool
    """Whether the agreed label reached the group's agreement threshold q."""
    votes: dict[int, int]
    """Each voting node's label."""
    latency_s: float
    reply: bytes = field(repr=False)
    """The node's REPLY that carried the certificate (checked when it came)."""
    item: int = field(repr=False)
    """The certificate's place in ``reply``."""

    @cached_property
    def certificate(self) -> Certificate:
        """The inference certificate, read from ``reply`` when first asked for (a client
        under load asks for few of them)."""
        return _reply_certificates(self.reply)[self.item]


@functools.lru_cache(maxsize=4)
def _reply_certificates(frame: bytes) -> tuple[Certificate, ...]:
    """The certificates of a REPLY frame, decoded once for all the Results it answered
    (asking each of them for its certificate then reads the frame once, not once each)."""
    reply = decode(frame)
    assert isinstance(reply, Reply)
    return reply.certificates


@dataclass(frozen=True)
class _Answer:
    """A checked certificate of a REPLY: what a Result needs."""

    label: int
    reached: bool
    votes: tuple[tuple[int, int], ...]
    reply: bytes
    item: int


@dataclass
class _Pending:
    request: Request
    resend_at: float
    """When the request is sent again to every node if still unanswered (_resend_loop)."""
    deadline: float
    """When it is given up (``expired``)."""
    done: trio.Event = field(default_factory=trio.Event)
    answer: _Answer | None = None
    rejects: dict[int, str] = field(default_factory=dict)
    fast_retries: int = 0
    expired: bool = False


class Client:
    """A trio client of one model group. Use :meth:`connect`."""

    def __init__(self, manifest: Manifest, key: _core.SigningKey,
                 request_timeout: float = limits.CLIENT_REQUEST_TIMEOUT_S,
                 deadline: float = limits.CLIENT_DEADLINE_S) -> None:
        self.manifest = manifest
        self.key = key
        self.request_timeout = request_timeout
        self.deadline = deadline
        me = LocalIdentity(key, Role.CLIENT)
        self.links = [
            PeerLink(split_address(info.address), manifest.group_id, me, self._authorize,
                     self._on_frame)
            for info in manifest.nodes
        ]
        self._next_id = time.time_ns() // 1000
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        """Requests in flight by id, oldest first (ids only grow): the oldest is the first."""
        self._slot_freed = trio.Event()
        self._control_waiters: dict[
            int, tuple[control.Control, trio.MemorySendChannel[dict[str, Any]]]] = {}
        self.invalid_replies = 0
        self.transient_rejects = 0
        self._retry: dict[int, set[int]] = {}
        """Request id -> nodes that refused it for a full limit: re-sent after a backoff."""
        self._retry_due = trio.Event()
        self._resend_wake = trio.Event()
        self._resend_idle = False
        """Whether _resend_loop waits for a request to watch (``_resend_wake`` wakes it)."""
        self._started = False
        self._verified_batches: OrderedDict[tuple, None] = OrderedDict()
        self._flush = PassFlush()
        """Writes the queued REQUESTs, once per scheduler pass."""

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, manifest: Manifest, key: _core.SigningKey,
                      **kwargs: Any) -> AsyncIterator[Client]:
        client = cls(manifest, key, **kwargs)
        async with trio.open_nursery() as nursery:
            client.start(nursery)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()

    def start(self, nursery: trio.Nursery) -> None:
        """Starts the client's tasks in ``nursery``: a link per node (connecting, and
        reconnecting with backoff), the writer of queued requests and the re-sender of
        refused ones. :meth:`connect` does it; call it when the client must live in a
        nursery of your own. Requests are only sent while these tasks run."""
        for link in self.links:
            nursery.start_soon(link.run)
        nursery.start_soon(self._retry_loop)
        nursery.start_soon(self._resend_loop)
        nursery.start_soon(self._flush.run)
        self._started = True

    def _authorize(self, peer: PeerIdentity) -> bool:
        return (
            peer.role is Role.NODE
            and peer.node_id is not None
            and 0 <= peer.node_id < self.manifest.n
            and self.manifest.node_key(peer.node_id) == peer.public_key
        )

    # --- inference ----------------------------------------------------------------------------

    async def infer(self, x: np.ndarray) -> Result:
        """Certified inference of one model input; raises ClientError when it cannot be had.

        The request goes to every node at once, again every ``request_timeout`` seconds
        while unanswered, and is given up after ``deadline`` seconds; the client's tasks
        (:meth:`start`) do the sending, so the client must be started."""
        if not self._started:
            raise ClientError("the client is not started: use Client.connect, or call "
                              "start(nursery) before infer")
        x = np.ascontiguousarray(x)
        # Nodes accept a client's request ids within a window of MAX_INFLIGHT_PER_CLIENT
        # above the oldest unordered one: never run ahead of the oldest pending request.
        while (self._pending and self._next_id - next(iter(self._pending))
               >= limits.MAX_INFLIGHT_PER_CLIENT):
            await self._slot_freed.wait()
        if not self._pending:
            # Ids start from the clock, so a restarted client (or another process sharing
            # this key, one after the other) is never below the nodes' replay window.
            self._next_id = max(self._next_id, time.time_ns() // 1000)
        request_id = self._next_id
        self._next_id += 1
        request = Request.create(self.key, self.manifest.group_id, request_id,
                                 _dtype_name(x.dtype), x.shape,
                                 x.astype(x.dtype.newbyteorder("<")).tobytes())
        start = trio.current_time()
        deadline = start + self.deadline
        pending = _Pending(request, min(start + self.request_timeout, deadline), deadline)
        self._pending[request_id] = pending
        if self._resend_idle:
            self._resend_wake.set()
        try:
            frame = request.encoded
            for link in self.links:
                self._flush.put(link.outbox, frame)
            await pending.done.wait()  # an answer, f+1 refusals, or the deadline
            if pending.expired:
                raise ClientError(
                    f"request {request_id} got no certificate within {self.deadline}s "
                    f"(CLIENT_DEADLINE_S); nodes connected: "
                    f"{[i for i, link in enumerate(self.links) if link.connected]}")
        finally:
            oldest = next(iter(self._pending)) == request_id
            del self._pending[request_id]
            if oldest:  # the window moves only when its oldest request leaves
                self._slot_freed.set()
                self._slot_freed = trio.Event()
        answer = pending.answer
        if answer is None:
            reasons = sorted(set(pending.rejects.values()))
            raise RequestRejected(f"request {request_id} refused by nodes "
                                  f"{sorted(pending.rejects)}: {'; '.join(reasons)}")
        return Result(answer.label, answer.reached, dict(answer.votes),
                      trio.current_time() - start, answer.reply, answer.item)

    async def _resend_loop(self) -> None:
        """Sends each unanswered request to every node again ``request_timeout`` seconds
        after its last send, and gives it up at its deadline. One task for all of the
        client's requests (at most MAX_INFLIGHT_PER_CLIENT, scanned when the earliest is
        due): a cancel scope per request cost about a third of the client's own CPU per
        request under load."""
        while True:
            waiting = [p for p in self._pending.values() if not p.done.is_set()]
            if not waiting:
                self._resend_wake, self._resend_idle = trio.Event(), True
                await self._resend_wake.wait()
                self._resend_idle = False
                continue
            now = trio.current_time()
            due = min(p.resend_at for p in waiting)
            if due > now:
                await trio.sleep_until(due)
                continue
            for p in waiting:
                if p.resend_at > now:
                    continue
                if now >= p.deadline:
                    p.expired = True
                    p.done.set()
                    continue
                frame = p.request.encoded
                for link in self.links:
                    self._flush.put(link.outbox, frame)
                p.resend_at = min(now + self.request_timeout, p.deadline)

    async def _retry_loop(self) -> None:
        """Re-sends refused-for-now requests to the nodes that refused them, a backoff
        (CLIENT_RETRY_BACKOFF_S) after the refusal."""
        while True:
            await self._retry_due.wait()
            await trio.sleep(limits.CLIENT_RETRY_BACKOFF_S)
            self._retry_due = trio.Event()
            retry, self._retry = self._retry, {}
            for request_id, nodes in retry.items():
                pending = self._pending.get(request_id)
                if pending is None or pending.done.is_set():
                    continue
                pending.fast_retries += 1
                for node in nodes:
                    self.links[node].send(pending.request.encoded)

    async def _on_frame(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        if control.is_control(frame):
            self._on_control(peer, frame)
            return
        peeked = Reply.peek(frame)
        if peeked is not None and not any(
                (p := self._pending.get(rid)) is not None and not p.done.is_set()
                for rid in peeked[1]):
            return  # every certificate in it is one we have (another node sent it first)
        m = self.manifest
        try:
            # Read in place by the Rust core, which also checks steps 1-3 of each certificate
            # (the group, the entry's agreement, its inclusion proof): docs/certificates.md.
            node, view, seq, size, root, signatures, items = _core.read_reply(
                frame, m.group_id, m.n, m.quorum, m.threshold)
        except ValueError:
            self.invalid_replies += 1
            return
        if node != peer.node_id:
            self.invalid_replies += 1
            return
        # The connection authenticated the node, and each certificate proves itself: the
        # REPLY's own signature (the node's receipt of delivery) need not be checked here.
        signed = (view, seq, size, root, signatures)
        signed_ok: bool | None = None  # steps 4-5, checked at most once per frame
        me = self.key.public_key
        for index, (request_id, request, client, label, reached, votes, problem) in enumerate(
                items):
            pending = self._pending.get(request_id)
            if (pending is None or pending.done.is_set() or request != pending.request.digest
                    or client != me):
                continue
            if problem is None and signed_ok is None:
                signed_ok = self._signed_by_quorum(signed)
            if problem is not None or not signed_ok:
                self.invalid_replies += 1
                continue
            pending.answer = _Answer(label, reached, votes, frame, index)
            pending.done.set()

    def _signed_by_quorum(self, signed: tuple) -> bool:
        """Steps 4-5 for a committed batch ``(view, seq, tree size, root, signatures)``:
        every certificate of one batch carries the same commit signatures, so they are
        checked once per batch, not once per request."""
        if signed in self._verified_batches:
            return True
        try:
            certificate.verify_commit_signatures(self.manifest, *signed)
        except certificate.CertificateError:
            return False
        self._verified_batches[signed] = None
        if len(self._verified_batches) > limits.CLIENT_VERIFIED_BATCHES:
            self._verified_batches.popitem(last=False)
        return True

    def _on_control(self, peer: PeerIdentity, frame: bytes) -> None:
        try:
            kind, body = control.decode(frame)
        except control.ControlError:
            self.invalid_replies += 1
            return
        node = peer.node_id
        if kind is control.Control.REJECT:
            request_id = body.get("request_id")
            pending = self._pending.get(request_id) if isinstance(request_id, int) else None
            if pending is None or node is None or pending.done.is_set():
                return
            if body.get("transient"):
                # A full limit clears as the node catches up: ask that node again soon,
                # rather than after the whole request timeout (a few times at most, so
                # that a node that stays full is not flooded).
                self.transient_rejects += 1
                if pending.fast_retries < limits.CLIENT_FAST_RETRIES:
                    self._retry.setdefault(request_id, set()).add(node)
                    self._retry_due.set()
            else:
                pending.rejects[node] = str(body.get("reason"))
                if len(pending.rejects) >= self.manifest.f + 1:
                    pending.done.set()
        elif kind in (control.Control.STATUS, control.Control.ACK,
                      control.Control.CERTIFICATE) and node is not None:
            waiter = self._control_waiters.get(node)
            # Only the answer the running exchange waits for (a late STATUS is no ACK).
            if waiter is not None and waiter[0] is kind:
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    waiter[1].send_nowait(body)

    # --- control ------------------------------------------------------------------------------

    async def control(self, node: int, kind: control.Control, body: dict[str, Any],
                      timeout: float = limits.CLIENT_CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """Sends a control frame to ``node`` and returns its answer (STATUS, ACK or
        CERTIFICATE, as the query asks)."""
        if not 0 <= node < self.manifest.n:
            raise ClientError(f"node {node} is not in 0..{self.manifest.n - 1}")
        if node in self._control_waiters:
            raise ClientError(f"a control exchange with node {node} is already running")
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._control_waiters[node] = (control.ANSWERS[kind], send)
        try:
            with trio.fail_after(timeout):
                self.links[node].send(control.encode(kind, body))
                return await receive.receive()
        except trio.TooSlowError:
            raise ClientError(f"node {node} did not answer {kind.name} within {timeout}s "
                              f"(connected: {self.links[node].connected})") from None
        finally:
            del self._control_waiters[node]

    async def status(self, node: int, timeout: float = 5.0) -> dict[str, Any]:
        return await self.control(node, control.Control.STATUS_QUERY, {}, timeout)


class BlockingClient:
    """The client for scripts and notebooks: the same calls, without async.

    Runs a trio event loop in a background thread; use as a context manager or ``close()``.
    """

    def __init__(self, manifest: Manifest, key: _core.SigningKey, **kwargs: Any) -> None:
        ready: queue.Queue[Any] = queue.Queue()
        self._stop: trio.Event | None = None

        async def main() -> None:
            async with Client.connect(manifest, key, **kwargs) as client:
                self._client = client
                self._stop = trio.Event()
                ready.put(trio.lowlevel.current_trio_token())
                await self._stop.wait()

        def thread() -> None:
            try:
                trio.run(main)
            except BaseException as error:  # surfaced to the caller below
                ready.put(error)

        self._thread = threading.Thread(target=thread, name="dropbear-client", daemon=True)
        self._thread.start()
        token = ready.get()
        if isinstance(token, BaseException):
            raise token
        self._token = token

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def infer(self, x: np.ndarray) -> Result:
        return self._call(self._client.infer, x)

    def status(self, node: int) -> dict[str, Any]:
        return self._call(self._client.status, node)

    def close(self) -> None:
        if self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join()
            self._stop = None

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)`` ("float32"), which numpy computes slowly, once per dtype."""
    return str(dtype)
