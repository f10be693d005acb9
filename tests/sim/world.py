"""The simulated world: replicas, clients, a seeded lossy network and simulated inference.

Everything is driven by one seeded scheduler (a heap of timed events), so a run is a pure
function of its seed: ``python -m tests.sim --seed N`` replays it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dropbear import _core
from dropbear.certificate import is_valid
from dropbear.consensus import (
    ActivateModel,
    Broadcast,
    CancelTimer,
    ClientRequest,
    Deliver,
    LocalVotes,
    MemoryLedger,
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
from dropbear.wire import Certificate, Message, ModelUpdate, Request, Vote

from .group import Group, make_group, seed
from .invariants import Checker

SIM_CONFIG = ReplicaConfig(
    checkpoint_interval=4,
    snapshot_interval=3,  # restarts rebuild from snapshots (and replay the batches after)
    window=16,
    pipeline_depth=3,
    max_batch_entries=8,
    vote_wait=0.02,
    request_timeout=0.6,
    view_change_timeout=0.6,
    max_view_change_timeout=4.0,
    catchup_interval=0.2,
)
LABELS = 10


def true_label(request: bytes) -> int:
    return request[0] % LABELS


def honest_label(node: int, version: bytes, request: bytes) -> int:
    """Models that mostly agree: each errs on about one request in eight, differently."""
    noise = _core.sha256(bytes([node]) + version + request)
    return true_label(request) if noise[0] >= 32 else noise[1] % LABELS


def new_version(node: int, counter: int) -> bytes:
    return _core.sha256(f"model of node {node} after update {counter}".encode())


@dataclass
class Network:
    """Delays, drops, duplicates and reorders messages; partitions block pairs."""

    rng: random.Random
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    blocked: set[tuple[int, int]] = field(default_factory=set)

    def delays(self, src: int, dst: int) -> list[float]:
        if (src, dst) in self.blocked or self.rng.random() < self.drop:
            return []
        out = [self.rng.uniform(0.001, 0.01)]
        if self.rng.random() < self.reorder:
            out[0] += self.rng.uniform(0.01, 0.2)
        if self.rng.random() < self.duplicate:
            out.append(out[0] + self.rng.uniform(0.0, 0.1))
        return out

    def heal(self) -> None:
        self.drop = self.duplicate = self.reorder = 0.0
        self.blocked.clear()


@dataclass
class SimNode:
    """One node: its replica (replaced on restart), ledger, model version and behaviour."""

    index: int
    replica: Replica
    ledger: MemoryLedger
    version: bytes
    counter: int = 0
    up: bool = True
    epoch: int = 0
    honest: bool = True
    label: Callable[[int, bytes, bytes], int] = honest_label
    timers: dict[str, int] = field(default_factory=dict)
    outbox_filter: Callable[[World, SimNode, int, Message], Message | None] | None = None


@dataclass
class SimClient:
    key: _core.SigningKey
    next_id: int = 1
    pending: dict[int, Request] = field(default_factory=dict)
    certified: dict[int, Certificate] = field(default_factory=dict)


CLIENT_BASE = 1000  # network address of client i is CLIENT_BASE + i


def client_seed(world_seed: int, c: int) -> bytes:
    """The seed of client ``c``'s key in the world of ``world_seed``."""
    return seed(f"client/{world_seed}/{c}")


class World:
    """n replicas and a few clients under one seeded scheduler."""

    def __init__(self, seed: int, n: int = 4, clients: int = 2,
                 config: ReplicaConfig = SIM_CONFIG) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.group: Group = make_group(n)
        self.manifest = self.group.manifest
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = 0
        self.net = Network(self.rng)
        self.nodes: list[SimNode] = []
        for i in range(n):
            ledger = MemoryLedger()
            replica = Replica(self.manifest, i, self.group.node_keys[i], ledger, config)
            self.nodes.append(SimNode(i, replica, ledger, self.manifest.nodes[i].model_version))
        self.twins: dict[int, SimNode] = {}
        self.clients = [SimClient(_core.SigningKey.from_seed(client_seed(seed, c)))
                        for c in range(clients)]
        self.checker = Checker(self)
        self.steps = 0
        for node in self.nodes:
            self._run(node, node.replica.start())

    # --- scheduler -----------------------------------------------------------------------

    def at(self, delay: float, action: Callable[[], None]) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (self.now + delay, self._counter, action))

    def run_until(self, deadline: float, stop: Callable[[], bool] | None = None) -> None:
        while self._queue and self._queue[0][0] <= deadline:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
            self.steps += 1
            self.checker.after_step()
            if stop is not None and stop():
                return
        self.now = max(self.now, deadline)

    # --- nodes ---------------------------------------------------------------------------

    def honest_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.honest]

    def deliver(self, node: SimNode, event: Any, epoch: int | None = None) -> None:
        """Feeds ``event`` to ``node`` (and its twin) if it is up and in the same epoch."""
        for target in (node, self.twins.get(node.index)):
            if target is None or not target.up or (epoch is not None and epoch != target.epoch):
                continue
            self._run(target, target.replica.handle(event))
            if epoch is not None:
                break

    def _run(self, node: SimNode, actions: list) -> None:
        for action in actions:
            match action:
                case Send(to, message):
                    self._transmit(node, to, message)
                case Broadcast(message):
                    for to in range(len(self.nodes)):
                        if to != node.index:
                            self._transmit(node, to, message)
                case SetTimer(name, delay):
                    token = node.timers[name] = self._counter + 1
                    epoch = node.epoch
                    self.at(
                        delay, lambda n=node, nm=name, t=token, e=epoch: self._timer(n, nm, t, e)
                    )
                case CancelTimer(name):
                    node.timers.pop(name, None)
                case RequestInference(requests, _):
                    self._infer(node, requests)
                case ActivateModel(version):
                    node.version = version
                case Deliver():
                    self.checker.on_deliver(node, action)
                case Reply(client):
                    for certificate in action.certificates:
                        self.checker.on_reply(node, certificate)
                        self._to_client(node, client, certificate)
                case RecordEvidence(evidence):
                    self.checker.on_evidence(node, evidence)
                case Refuse():
                    pass  # a client re-sends until certified; refusals only explain delays

    def _timer(self, node: SimNode, name: str, token: int, epoch: int) -> None:
        if node.up and node.epoch == epoch and node.timers.get(name) == token:
            del node.timers[name]
            self._run(node, node.replica.handle(TimerFired(name)))

    def _transmit(self, node: SimNode, to: int, message: Message) -> None:
        if not node.up:
            return
        if node.outbox_filter is not None:
            message = node.outbox_filter(self, node, to, message)
            if message is None:
                return
        self.send_bytes(node.index, to, message.encoded)

    def send_bytes(self, src: int, to: int, data: bytes) -> None:
        target = self.nodes[to]
        for delay in self.net.delays(src, to):
            self.at(delay, lambda t=target, d=data, s=src: self.deliver(t, Receive(s, d)))

    def _infer(self, node: SimNode, requests: tuple[Request, ...]) -> None:
        version, epoch = node.version, node.epoch

        def done() -> None:
            votes = [
                Vote(r.digest, node.label(node.index, version, r.digest), 0.5 + 0.01 * node.index)
                for r in requests
            ]
            self.deliver(node, LocalVotes(version, votes), epoch)

        self.at(self.rng.uniform(0.002, 0.03), done)

    # --- faults --------------------------------------------------------------------------

    def crash(self, index: int, downtime: float) -> None:
        node = self.nodes[index]
        if not node.up:
            return
        node.up = False
        node.epoch += 1
        node.timers.clear()
        self.at(downtime, lambda: self.restart(index))

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.up:
            return
        node.replica = Replica(
            self.manifest, index, self.group.node_keys[index], node.ledger, self.config
        )
        node.version = node.replica.state.versions[index]
        node.up = True
        node.epoch += 1
        self._run(node, node.replica.start())

    def update_model(self, index: int) -> None:
        """The owner of ``index`` loads new weights and submits a MODEL-UPDATE."""
        node = self.nodes[index]
        node.counter += 1
        update = ModelUpdate(
            self.manifest.group_id, index, new_version(index, node.counter), node.counter
        ).signed(self.group.owner_keys[index])
        self.deliver(node, ModelUpdateReady(update), node.epoch)

    # --- clients -------------------------------------------------------------------------

    def submit(self, c: int) -> None:
        client = self.clients[c]
        rid = client.next_id
        client.next_id += 1
        data = self.rng.randbytes(8)
        request = Request.create(client.key, self.manifest.group_id, rid, "uint8", (8,), data)
        client.pending[rid] = request
        self._send_request(c, request)

    def _send_request(self, c: int, request: Request) -> None:
        for node in self.nodes:
            for delay in self.net.delays(CLIENT_BASE + c, node.index):
                self.at(delay, lambda n=node, r=request: self.deliver(n, ClientRequest([r])))
        rid = request.header.request_id
        self.at(1.0, lambda: self._retry(c, rid))

    def _retry(self, c: int, rid: int) -> None:
        client = self.clients[c]
        if rid in client.pending:
            self._send_request(c, client.pending[rid])

    def _to_client(self, node: SimNode, client_key: bytes, cert: Certificate) -> None:
        for c, client in enumerate(self.clients):
            if client.key.public_key == client_key:
                for delay in self.net.delays(node.index, CLIENT_BASE + c):
                    self.at(delay, lambda cl=client, ce=cert: self._client_receive(cl, ce))

    def _client_receive(self, client: SimClient, cert: Certificate) -> None:
        rid = cert.entry.request_id
        request = client.pending.get(rid)
        if request is None or cert.entry.request != request.digest:
            return
        if is_valid(cert, self.manifest):  # the manifest alone
            del client.pending[rid]
            client.certified[rid] = cert

    def all_certified(self) -> bool:
        return all(not c.pending for c in self.clients)
