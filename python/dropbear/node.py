"""One replica process: net + consensus + the batched executor, wired with trio.

The :class:`~dropbear.consensus.Replica` decides everything; this shell feeds it events
(frames from peers and clients, timers, inference results) and carries out its actions
(send, broadcast, timers, run inference, reply). Inference runs as requests arrive, in the
executor's own batches; the replica forms ordering batches independently. Committed batches
go to the replica's :class:`~dropbear.consensus.Ledger` (in memory here; the durable SQLite
ledger plugs into the same seam).
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import trio

from dropbear import _core, control, heap, limits
from dropbear import certificate as certificates
from dropbear.consensus import (
    Action,
    ActivateModel,
    Broadcast,
    CancelTimer,
    ClientRequest,
    Deliver,
    Ledger,
    LocalVotes,
    ModelUpdateReady,
    Receive,
    RecordEvidence,
    Refuse,
    Replica,
    ReplicaConfig,
    Reply,
    RequestInference,
    Send,
    SetTimer,
    TimerFired,
)
from dropbear.inference import (
    BadInput,
    Executor,
    InferenceError,
    ModelRepository,
    Skipped,
    check_inputs,
    check_request_input,
    decode_inputs,
)
from dropbear.manifest import Manifest
from dropbear.net import Listener, LocalIdentity, PeerIdentity, PeerLink, Role, Sender
from dropbear.wire import (
    MAX_REPLY_ITEMS,
    Commit,
    ModelUpdate,
    Request,
    RequestEntry,
    Vote,
    WireError,
    decode,
)

log = logging.getLogger("dropbear.node")

_Intake = tuple[Request, PeerIdentity, Sender]
"""A client's REQUEST waiting for the intake loop, with where it came from (for a refusal)."""

HEAP_RESETTLE_DELAY_S = 1.0
"""How long after a model switch the node collects what the previous version left."""


class Fault(StrEnum):
    """Byzantine behaviours a node can be told to play (demos and tests only)."""

    NONE = "none"
    FLIP_LABELS = "flip-labels"
    """Vote label + 1 (mod classes) for every request: a wrong but well-signed model."""


@dataclass
class NodeSettings:
    """How a node runs; every field has a default a user rarely changes."""

    models_dir: Path = Path("models")
    max_batch_size: int = 32
    max_queue_delay: float = 0.0
    """0: a batch runs as soon as the model is free; inputs that queue while it runs form
    the next batch (no wait at low load, batches grow with the load)."""
    listen_host: str | None = None
    """Defaults to the host of the node's manifest address."""
    fault_injection: bool = False
    """Accept FAULT control frames (demos and tests); off in production."""
    fault: Fault = Fault.NONE
    link_delay: dict[int, float] = field(default_factory=dict)
    """Seconds to hold frames to each peer: simulated distance between sites."""
    replica: ReplicaConfig | None = None
    null_model: bool = False
    """Serve with a NullExecutor (answers at once, no JAX): benchmarks of ordering alone."""


class Timers:
    """The replica's named timers: deadlines on the trio clock."""

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}
        self._changed = trio.Event()
        self._sleeping_until = float("inf")

    def set(self, name: str, deadline: float) -> None:
        self._deadlines[name] = deadline
        if deadline < self._sleeping_until:  # a later one is seen when the loop next wakes
            self._changed.set()

    def cancel(self, name: str) -> None:
        self._deadlines.pop(name, None)

    def pop_due(self, now: float) -> str | None:
        """The earliest timer due at ``now``, removed; one at a time, because handling one
        may cancel or re-set the others."""
        due = [(deadline, name) for name, deadline in self._deadlines.items() if deadline <= now]
        if not due:
            return None
        name = min(due)[1]
        del self._deadlines[name]
        return name

    async def wait_for_change(self) -> None:
        """Returns at the next deadline, or when a timer is set."""
        self._changed = trio.Event()
        self._sleeping_until = min(self._deadlines.values(), default=float("inf"))
        with trio.move_on_at(self._sleeping_until):
            await self._changed.wait()
        self._sleeping_until = -float("inf")  # awake: nothing to wake


class Slots:
    """A counting semaphore taken and given back several units at a time, first come
    first served (so no two takers can each hold part of what they need)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = trio.Lock()
        self._freed = trio.Event()

    async def take(self, n: int) -> None:
        if not 0 <= n <= self.capacity:
            raise ValueError(f"cannot take {n} of {self.capacity} slots")
        async with self._lock:
            while self.used + n > self.capacity:
                self._freed = trio.Event()
                await self._freed.wait()
            self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Node:
    """One replica of a model group, serving on the manifest's address."""

    def __init__(
        self,
        manifest: Manifest,
        node_id: int,
        key: _core.SigningKey,
        executor: Executor,
        repository: ModelRepository,
        settings: NodeSettings | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.manifest = manifest
        self.node_id = node_id
        self.key = key
        self.executor = executor
        self.repository = repository
        self.settings = settings or NodeSettings()
        self.fault = self.settings.fault
        self.replica = Replica(manifest, node_id, key, ledger, self.settings.replica)
        self.ledger = self.replica.ledger
        self._durable: Any = self.ledger if hasattr(self.ledger, "sync") else None
        """The SQLite ledger (group commit, certificates, evidence), or None in memory."""
        me = LocalIdentity(key, Role.NODE, node_id)
        self.listener = Listener(manifest.group_id, me, self._authorize, self._on_frame,
                                 log=log.debug)
        self.links = {
            peer: PeerLink(
                split_address(info.address),
                manifest.group_id,
                me,
                self._authorize,
                self._on_frame,
                delay_s=self.settings.link_delay.get(peer, 0.0),
                log=log.debug,
            )
            for peer, info in enumerate(manifest.nodes)
            if peer != node_id
        }
        self._intake: deque[_Intake] = deque()
        """Client requests checked at arrival, waiting for the intake loop (at most
        NODE_INTAKE_QUEUE). A deque and an event: a third of a memory channel's cost per
        request (every request of every client passes here), and no exception per batch."""
        self._intake_ready = trio.Event()
        self._inference_slots = Slots(
            min(limits.NODE_MAX_INFERENCE_INFLIGHT, executor.max_queue_length)
        )
        self._timers = Timers()
        self._nursery: trio.Nursery | None = None
        self._held: list[Action] = []
        """Actions waiting for the group commit that makes their cause durable."""
        self._held_commits: set[tuple[int, int]] = set()
        """(view, seq) of our COMMITs among the held actions (see :meth:`_not_held`)."""
        self._switch_held = False
        """Whether a model switch (ActivateModel) is among the held actions."""
        self._flush_wanted = trio.Event()
        """Set when actions wait for the group commit (:meth:`_flush_loop` makes it)."""
        self.evidence: deque[RecordEvidence] = deque(maxlen=limits.NODE_MAX_EVIDENCE)
        self.replies_sent = 0
        self.rejected = 0

    @classmethod
    async def load(
        cls,
        manifest: Manifest,
        node_id: int,
        key: _core.SigningKey,
        settings: NodeSettings | None = None,
        ledger: Ledger | None = None,
    ) -> Node:
        """Loads the node's model (the manifest's genesis version), compiles it, builds the node."""
        settings = settings or NodeSettings()
        if not 0 <= node_id < manifest.n:
            raise ValueError(f"node id {node_id} is not in 0..{manifest.n - 1}")
        if key.public_key != manifest.node_key(node_id):
            raise ValueError(f"this key is not node {node_id}'s key in manifest {manifest.name!r}")
        info = manifest.nodes[node_id]
        repository = ModelRepository(settings.models_dir)
        if settings.null_model:
            from dropbear.inference.null import NullExecutor

            null: Any = NullExecutor(repository.config(info.model), info.model_version.hex())
            node = cls(manifest, node_id, key, null, repository, settings, ledger)
            await node._restore_model()
            return node
        model = await trio.to_thread.run_sync(
            repository.load, info.model, info.model_version.hex()
        )
        executor = await trio.to_thread.run_sync(
            lambda: Executor(
                model,
                max_batch_size=settings.max_batch_size,
                max_queue_delay=settings.max_queue_delay,
            )
        )
        node = cls(manifest, node_id, key, executor, repository, settings, ledger)
        await node._restore_model()
        return node

    async def _restore_model(self) -> None:
        """After a restart the ledger may have ordered model updates of ours: serve the
        version current at the end of our log, not the manifest's genesis version."""
        version = self.replica.state.versions[self.node_id]
        if version.hex() == str(self.executor.version):
            return
        name = self.executor.config.name
        model = await trio.to_thread.run_sync(self.repository.load, name, version.hex())
        await self.executor.stage(model)
        self.executor.switch(version.hex())
        log.info("restored model %s version %s from the ledger", name, version.hex()[:12])

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves until cancelled; ``task_status.started`` gets the listening port."""
        host, port = split_address(self.manifest.nodes[self.node_id].address)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.executor.start(nursery)
            port = await nursery.start(
                self.listener.serve, self.settings.listen_host or host, port
            )
            for link in self.links.values():
                nursery.start_soon(link.run)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._intake_loop)
            if self._durable is not None:
                nursery.start_soon(self._flush_loop)
            self._apply(self.replica.start())
            log.info("node %d serving on %s:%d (model %s, version %s)", self.node_id, host, port,
                     self.executor.config.name, self.executor.version.short())
            task_status.started(port)

    def _authorize(self, peer: PeerIdentity) -> bool:
        if peer.role is Role.CLIENT:
            return True
        return (
            peer.node_id is not None
            and 0 <= peer.node_id < self.manifest.n
            and peer.node_id != self.node_id
            and self.manifest.node_key(peer.node_id) == peer.public_key
        )

    # --- events in ---------------------------------------------------------------------------

    async def _on_frame(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        if control.is_control(frame):
            await self._on_control(peer, frame, sender)
        elif peer.role is Role.NODE:
            self._handle(Receive(peer.node_id, frame))
        else:
            self._on_client_frame(peer, frame, sender)

    def _on_client_frame(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        try:
            message = decode(frame)
        except WireError as error:
            self._reject(peer, sender, None, f"undecodable message: {error}")
            return
        if not isinstance(message, Request):
            self._reject(peer, sender, None,
                         f"clients may only send REQUEST, not {message.KIND.name}")
            return
        head = message.header
        if head.client != peer.public_key:
            self._reject(peer, sender, head.request_id,
                         "request signed for another client key than the connection's")
            return
        if head.group_id != self.manifest.group_id:
            self._reject(peer, sender, head.request_id,
                         f"request is for group {head.group_id.hex()[:16]}, this node serves "
                         f"{self.manifest.group_id.hex()[:16]}")
            return
        try:  # what the header tells now; NaN or inf values in the intake loop, in one pass
            check_request_input(self.executor.config, head.dtype, head.shape, len(message.data))
        except BadInput as error:
            self._reject(peer, sender, head.request_id, str(error))
            return
        if len(self._intake) >= limits.NODE_INTAKE_QUEUE:
            self._reject(peer, sender, head.request_id,
                         f"node busy: {limits.NODE_INTAKE_QUEUE} requests waiting "
                         "(NODE_INTAKE_QUEUE)", transient=True)
            return
        self._intake.append((message, peer, sender))
        self._intake_ready.set()

    def _reject(self, peer: PeerIdentity, sender: Sender, request_id: int | None,
                reason: str, transient: bool = False) -> None:
        self.rejected += 1
        log.info("refused a request from %s: %s", peer, reason)
        sender.send(control.encode(control.Control.REJECT, {
            "request_id": request_id, "reason": reason, "node": self.node_id,
            "transient": transient}))

    async def _intake_loop(self) -> None:
        """Hands client requests to the replica in batches (one batch signature check),
        once their inputs are checked for NaN or inf values (one pass for all)."""
        intake = self._intake
        while True:
            while not intake:
                self._intake_ready = trio.Event()
                await self._intake_ready.wait()
            batch = [intake.popleft() for _ in range(min(len(intake), limits.NODE_INTAKE_BATCH))]
            requests = self._refuse_bad_inputs(batch)
            if requests:
                self._handle(ClientRequest(requests))
            await trio.sleep(0)

    def _refuse_bad_inputs(self, batch: Sequence[_Intake]) -> tuple[Request, ...]:
        """The requests of ``batch`` whose inputs the model takes; tells each client what
        is wrong with the others'."""
        config = self.executor.config
        decoded = decode_inputs(
            config, [(m.header.dtype, m.header.shape, m.data) for m, _, _ in batch])
        refused = dict(decoded.refused)
        for i, error in zip(decoded.kept, check_inputs(config, decoded.batch), strict=True):
            if error is not None:
                refused[i] = error
        if not refused:
            return tuple(m for m, _, _ in batch)
        for i, error in sorted(refused.items()):
            message, peer, sender = batch[i]
            self._reject(peer, sender, message.header.request_id, str(error))
        return tuple(m for i, (m, _, _) in enumerate(batch) if i not in refused)

    async def _timer_loop(self) -> None:
        while True:
            while (name := self._timers.pop_due(trio.current_time())) is not None:
                self._handle(TimerFired(name))
                await trio.sleep(0)
            await self._timers.wait_for_change()

    # --- actions out --------------------------------------------------------------------------

    def _handle(self, event: Any) -> None:
        self._apply(self.replica.handle(event))

    def _apply(self, actions: Sequence[Action]) -> None:
        """Carries out the replica's actions; with a durable ledger, holds them until the
        group commit that covers them (see :meth:`_flush_loop`)."""
        if self._durable is None:
            self._carry_out(actions)
            return
        self._record(actions)
        for action in actions:
            if isinstance(action, Broadcast) and isinstance(action.message, Commit):
                self._held_commits.add((action.message.view, action.message.seq))
            elif isinstance(action, ActivateModel):
                self._switch_held = True
        at_once = []
        for action in actions:
            (at_once if self._not_held(action) else self._held).append(action)
        if at_once:
            self._carry_out(at_once)
        if self._held or self._durable.pending:
            self._flush_wanted.set()

    def _not_held(self, action: Action) -> bool:
        """Timers need no durability; a refusal states no protocol fact. Running the model
        sends nothing by itself (the VOTES it leads to wait for a group commit of their
        own, which covers every earlier write), so inference starts at once, unless a model
        switch waits: it must run after the switch. A REPLY's certificate carries 2f+1
        COMMITs, and each of them was sent only once its node's prepared proof (the batch
        included) was durable; so a REPLY goes out at once, unless our own COMMIT for it is
        among the actions still waiting for this group commit."""
        if isinstance(action, SetTimer | CancelTimer | Refuse):
            return True
        if isinstance(action, RequestInference):
            return not self._switch_held
        if isinstance(action, Reply):
            return (action.tree.view, action.tree.seq) not in self._held_commits
        return False

    async def _flush_loop(self) -> None:
        """Group commit: one transaction (one fsync) for every event handled since the last
        one, committed before any of their actions is carried out."""
        while True:
            await self._flush_wanted.wait()
            await trio.sleep(0)  # let the tasks already woken handle their frames first
            self._flush_wanted = trio.Event()
            held, self._held = self._held, []
            self._held_commits.clear()
            self._switch_held = False
            assert self._durable is not None
            self._durable.sync()
            self._carry_out(held)

    def _carry_out(self, actions: Sequence[Action]) -> None:
        replies: dict[tuple[bytes, certificates.CommittedTree],
                      list[tuple[int, RequestEntry]]] = {}
        queued = False  # frames for peers leave together at the end, one write per peer
        for action in actions:
            match action:
                case Send(to, message):
                    if to in self.links:
                        self.links[to].outbox.put(message.encoded)
                        queued = True
                case Broadcast(message):
                    frame = message.encoded
                    for link in self.links.values():
                        link.outbox.put(frame)
                    queued = True
                case SetTimer(name, delay):
                    self._timers.set(name, trio.current_time() + delay)
                case CancelTimer(name):
                    self._timers.cancel(name)
                case RequestInference():
                    assert self._nursery is not None
                    self._nursery.start_soon(self._infer, action)
                case ActivateModel(version):
                    self._activate(version)
                case Deliver():
                    pass  # in the ledger already (_record): nothing to send
                case Reply(client, tree, items):
                    replies.setdefault((client, tree), []).extend(items)
                case Refuse(client, request_id, reason, transient):
                    self.rejected += 1
                    log.info("refused request %d of client %s: %s", request_id,
                             client.hex()[:12], reason)
                    self.listener.send_to(client, control.encode(
                        control.Control.REJECT,
                        {"request_id": request_id, "reason": reason, "node": self.node_id,
                         "transient": transient}))
                case RecordEvidence(evidence):
                    self.evidence.append(action)
                    log.warning("evidence of misbehaviour: %s", evidence)
                case _:
                    raise TypeError(f"unknown action {action!r}")
        if queued:
            for link in self.links.values():
                link.outbox.flush()
        # One signed REPLY per client and committed batch, however many of its requests.
        for (client, tree), items in replies.items():
            for start in range(0, len(items), MAX_REPLY_ITEMS):
                part = items[start:start + MAX_REPLY_ITEMS]
                frame = tree.reply_frame(self.node_id, [index for index, _ in part], self.key)
                if self.listener.send_to(client, frame):
                    self.replies_sent += len(part)

    def _record(self, actions: Sequence[Action]) -> None:
        """Adds the answers (where each certified request sits), deliveries and evidence
        among ``actions`` to the open group-commit transaction, beside what the replica
        wrote (batches, signed statements, view, prepared proofs). A failed write raises
        LedgerError: the node stops without sending anything that depends on it."""
        ledger = self._durable
        ledger.save_answers([(entry.client, entry.request_id, a.tree.seq, index)
                             for a in actions if isinstance(a, Reply)
                             for index, entry in a.items])
        for action in actions:
            match action:
                case Deliver():
                    ledger.record_delivery(action)
                case RecordEvidence(evidence):
                    ledger.save_evidence(evidence)

    async def _infer(self, action: RequestInference) -> None:
        """Runs the model on the requests (in the executor's batches) and votes."""
        requests = action.requests
        step = min(limits.NODE_INTAKE_BATCH, self._inference_slots.capacity)
        for start in range(0, len(requests), step):
            await self._infer_chunk(requests[start:start + step])

    async def _infer_chunk(self, chunk: Sequence[Request]) -> None:
        config = self.executor.config
        awaits_votes = self.replica.awaits_votes
        # Executed while it queued: no run.
        waiting = [request for request in chunk if awaits_votes(request.digest)]
        # One array for the chunk. Client requests were checked at intake (_refuse_bad_inputs);
        # one a peer forwarded was not, and is refused here or by submit_many.
        decoded = decode_inputs(
            config, [(r.header.dtype, r.header.shape, r.data) for r in waiting])
        for i, error in decoded.refused:
            log.info("no vote for request %s: %s", waiting[i].digest.hex()[:12], error)
        requests = [waiting[i] for i in decoded.kept]
        if not requests:
            return
        inputs = decoded.batch
        # A slot per request, so that the executor's queue never overflows.
        await self._inference_slots.take(len(requests))
        try:
            # A node behind the others (a slower model, a busier core) would otherwise run
            # requests that were executed with the others' votes while they queued, and stay
            # behind for good: its votes would reach no entry.
            outcomes = await self.executor.submit_many(
                inputs, [functools.partial(awaits_votes, r.digest) for r in requests])
        except InferenceError as error:  # the executor stopped: no votes from this chunk
            log.warning("no votes for %d requests: %s", len(requests), error)
            return
        finally:
            self._inference_slots.give(len(requests))
        votes: dict[str, list[Vote]] = {}
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, Skipped):
                continue
            if isinstance(outcome, InferenceError):
                log.info("no vote for request %s: %s", request.digest.hex()[:12], outcome)
                continue
            label = outcome.class_index
            if self.fault is Fault.FLIP_LABELS:
                label = (label + 1) % config.num_classes
            votes.setdefault(outcome.model_version, []).append(
                Vote(request.digest, label, outcome.probability)
            )
        for version, chunk_votes in votes.items():
            self._handle(LocalVotes(bytes.fromhex(version), tuple(chunk_votes)))

    def _activate(self, version: bytes) -> None:
        try:
            previous = self.executor.switch(version.hex())
        except InferenceError as error:
            log.error("ordered model version %s is not staged here: %s", version.hex()[:12],
                      error)
            return
        log.info("switched model %s -> %s", previous[:12], version.hex()[:12])
        if self._nursery is not None:
            self._nursery.start_soon(self._collect_dropped_model)

    async def _collect_dropped_model(self) -> None:
        """The previous version may have been frozen with the start-up heap (heap.settle):
        collect its cycles, a moment after the switch rather than at the ordered point."""
        await trio.sleep(HEAP_RESETTLE_DELAY_S)
        heap.resettle()

    # --- control ----------------------------------------------------------------------------

    async def _on_control(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        try:
            kind, body = control.decode(frame)
        except control.ControlError as error:
            self._ack(sender, False, str(error))
            return
        match kind:
            case control.Control.STATUS_QUERY:
                sender.send(control.encode(control.Control.STATUS, self.status()))
            case control.Control.CERTIFICATE_QUERY:
                sender.send(control.encode(control.Control.CERTIFICATE,
                                           self._certificate_answer(body)))
            case control.Control.UPDATE:
                ok, message = await self._stage_update(body)
                self._ack(sender, ok, message)
            case control.Control.FAULT if self.settings.fault_injection:
                try:
                    self.fault = Fault(body.get("mode", "none"))
                except ValueError:
                    self._ack(sender, False, f"unknown fault {body.get('mode')!r}; "
                                           f"one of {[f.value for f in Fault]}")
                    return
                log.warning("node %d now plays fault %r", self.node_id, self.fault.value)
                self._ack(sender, True, f"node {self.node_id} plays {self.fault.value}")
            case _:
                self._ack(sender, False, f"control {kind.name} is not accepted by this node")

    def _ack(self, sender: Sender, ok: bool, message: str) -> None:
        sender.send(control.encode(
            control.Control.ACK, {"ok": ok, "message": message, "node": self.node_id}))

    async def _stage_update(self, body: dict[str, Any]) -> tuple[bool, str]:
        """Checks an owner-signed MODEL-UPDATE, loads and warms its weights, submits it."""
        try:
            update = decode(bytes.fromhex(str(body.get("update", ""))))
        except (ValueError, WireError) as error:
            return False, f"update is not an encoded MODEL-UPDATE: {error}"
        if not isinstance(update, ModelUpdate) or update.node != self.node_id:
            return False, f"update is not a MODEL-UPDATE for node {self.node_id}"
        used = self.replica.state.counters[self.node_id]
        if update.counter <= used:
            return False, (f"update counter {update.counter} is not above {used}, the last "
                           "ordered one: a replay")
        if not update.verify(self.manifest.owner_key(self.node_id)):
            return False, f"update is not signed by node {self.node_id}'s owner key"
        name = str(body.get("model", self.executor.config.name))
        try:
            model = await trio.to_thread.run_sync(
                self.repository.load, name, update.model_version.hex()
            )
            await self.executor.stage(model)
        except (InferenceError, ValueError, OSError) as error:
            return False, f"cannot load model {name!r} version {update.model_version.hex()}: " \
                          f"{error}"
        self._handle(ModelUpdateReady(update))
        return True, (f"node {self.node_id}: version {update.model_version.hex()[:12]} of "
                      f"{name!r} is warm; it serves from the update's place in the order")

    def _certificate_answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """A past certificate by (client key, request id): from the ledger, else the
        replica's bounded reply cache."""
        request_id = body.get("request_id")
        try:
            client = bytes.fromhex(str(body.get("client", "")))
        except ValueError:
            client = b""
        if (len(client) != 32 or not isinstance(request_id, int)
                or not 0 <= request_id < 2**63):
            return {"node": self.node_id, "certificate": None,
                    "error": "client must be a 32-byte hex key and request_id an integer "
                             "in 0..2^63-1"}
        cert = None
        if self._durable is not None:
            cert = self._durable.certificate(client, request_id, self.manifest)
        if cert is None:
            cert = self.replica.cached_certificate(client, request_id)
        return {"node": self.node_id,
                "certificate": None if cert is None else certificates.to_dict(cert)}

    def status(self) -> dict[str, Any]:
        replica = self.replica
        return {
            "node": self.node_id,
            "view": replica.view,
            "primary": replica.primary,
            "view_active": replica.active,
            "executed_seq": replica.executed,
            "ledger_seq": self.ledger.last_seq(),
            "ledger": str(self._durable.path) if self._durable is not None else "memory",
            "stable_seq": replica.stable_seq,
            "model": self.executor.config.name,
            "model_version": str(self.executor.version),
            "fault": self.fault.value,
            "queues": {
                "intake": len(self._intake),
                "inference_inflight": self._inference_slots.used,
                "pending_requests": replica.pending_requests,
                "peer_outboxes": {str(p): link.outbox.depth() for p, link in self.links.items()},
            },
            "peers_connected": sorted(p for p, link in self.links.items() if link.connected),
            "inference": {"batches": self.executor.stats.batches,
                          "inputs": self.executor.stats.inputs,
                          "skipped": self.executor.stats.skipped},
            "replies_sent": self.replies_sent,
            "rejected": self.rejected,
            "evidence": len(self.evidence),
        }
