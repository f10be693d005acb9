"""One seeded schedule: faults, Byzantine roles, model updates and client load, then heal.

``run(seed)`` picks everything from the seed; the same seed gives the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dropbear.consensus.state import derive
from dropbear.wire import Batch, Kind, Message, PrePrepare, Statement

from .invariants import InvariantViolation
from .world import LABELS, MemoryLedger, Replica, SimNode, World, true_label

ROLES = ("wrong-label", "equivocating-primary", "silent-primary", "idle-primary", "garbage",
         "replayer", "twins")
CHAOS = 3.0
"""Seconds of faults and load before the network heals."""
DEADLINE = 40.0
"""Simulated seconds by which every correct client's requests must be certified."""


@dataclass
class Outcome:
    seed: int
    n: int
    roles: dict[int, str]
    steps: int = 0
    certificates: int = 0
    evidence: int = 0
    views: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"seed {self.seed}: n={self.n} roles={self.roles} steps={self.steps} "
            f"certificates={self.certificates} evidence={self.evidence} views={self.views}"
        )


def _wrong_label(node: int, version: bytes, request: bytes) -> int:
    return (true_label(request) + 1 + node) % LABELS


def _equivocate(world: World, node: SimNode, to: int, message: Message) -> Message | None:
    """Sends every other backup a different (validly signed) batch."""
    if not isinstance(message, PrePrepare) or to % 2 == 0:
        return message
    batch = message.batch
    other = Batch(batch.requests[:-1], batch.votes, batch.updates) if batch.requests else Batch()
    derived = derive(other, world.manifest)
    s = message.statement
    statement = Statement(
        Kind.PRE_PREPARE, s.group_id, s.node, s.view, s.seq, derived.size, derived.root
    )
    key = world.group.node_keys[node.index]
    return PrePrepare(statement, key.sign(statement.encoded), other)


def _silent_after(start: float):
    def silent(world: World, node: SimNode, to: int, message: Message) -> Message | None:
        return None if world.now >= start else message

    return silent


def never_proposes(world: World, node: SimNode, to: int, message: Message) -> Message | None:
    """A primary that takes part in everything (votes, PREPAREs, COMMITs, view changes) but
    never proposes: only the backups' shared votes can tell them that it could."""
    return None if isinstance(message, PrePrepare) else message


def _garbage(world: World, node: SimNode, to: int, message: Message) -> Message | None:
    roll = world.rng.random()
    if roll < 0.15:
        world.send_bytes(node.index, to, world.rng.randbytes(world.rng.randint(0, 200)))
    elif roll < 0.3:
        data = bytearray(message.encoded)
        data[world.rng.randrange(len(data))] ^= 1 << world.rng.randrange(8)
        world.send_bytes(node.index, to, bytes(data))
    return message


def _replayer(history: list[bytes]):
    def replay(world: World, node: SimNode, to: int, message: Message) -> Message | None:
        history.append(message.encoded)
        if len(history) > 300:
            del history[: len(history) - 300]
        if world.rng.random() < 0.3:
            world.send_bytes(node.index, to, world.rng.choice(history))
        return message

    return replay


def _assign(world: World, rng: random.Random, roles: dict[int, str]) -> None:
    for index, role in roles.items():
        node = world.nodes[index]
        node.honest = False
        if role == "wrong-label":
            node.label = _wrong_label
        elif role == "equivocating-primary":
            node.outbox_filter = _equivocate
        elif role == "silent-primary":
            node.outbox_filter = _silent_after(rng.uniform(0.0, CHAOS))
        elif role == "idle-primary":
            node.outbox_filter = never_proposes
        elif role == "garbage":
            node.outbox_filter = _garbage
        elif role == "replayer":
            node.outbox_filter = _replayer([])
        elif role == "twins":
            ledger = MemoryLedger()
            key = world.group.node_keys[index]
            twin = Replica(world.manifest, index, key, ledger, world.config)
            world.twins[index] = SimNode(index, twin, ledger, node.version, honest=False)


def run(seed: int, n: int | None = None, roles: dict[int, str] | None = None) -> Outcome:
    """Runs schedule ``seed``; raises InvariantViolation (naming the seed) on any failure."""
    rng = random.Random(seed ^ 0x5EED)
    n = n or rng.choice((4, 4, 4, 7))
    world = World(seed, n, clients=2)
    f = world.manifest.f
    if roles is None:
        count = rng.randint(0, f)
        faulty = rng.sample(range(n), count)
        roles = {}
        for index in faulty:
            role = rng.choice(ROLES)
            if role.endswith("primary"):
                index = 0 if 0 not in roles else index  # the primary of view 0
            roles[index] = role
    _assign(world, rng, roles)
    honest = [node.index for node in world.nodes if node.honest]
    # Network faults during the chaos phase.
    world.net.drop = rng.choice((0.0, 0.02, 0.1))
    world.net.duplicate = rng.choice((0.0, 0.05))
    world.net.reorder = rng.choice((0.0, 0.1, 0.3))
    if rng.random() < 0.3:
        side = set(rng.sample(range(n), rng.randint(1, n // 2)))
        start = rng.uniform(0, CHAOS)

        def partition(side=side) -> None:
            world.net.blocked = {
                (a, b) for a in range(n) for b in range(n) if (a in side) != (b in side)
            }

        world.at(start, partition)
        world.at(start + rng.uniform(0.2, 1.5), lambda: world.net.blocked.clear())
    for _ in range(rng.choice((0, 1, 2))):
        victim = rng.choice(honest)
        world.at(rng.uniform(0, CHAOS), lambda v=victim: world.crash(v, rng.uniform(0.1, 1.0)))
    # Concurrent model updates on two honest nodes while requests flow.
    for index in rng.sample(honest, min(2, len(honest))):
        for _ in range(rng.choice((0, 1, 2))):
            world.at(rng.uniform(0, CHAOS), lambda i=index: world.update_model(i))
    # Client load.
    for _ in range(rng.randint(6, 16)):
        client = rng.randrange(2)
        world.at(rng.uniform(0, CHAOS), lambda c=client: world.submit(c))
    world.run_until(CHAOS)
    world.net.heal()
    for node in world.nodes:
        if not node.up:
            world.restart(node.index)
    world.run_until(DEADLINE, stop=world.all_certified)
    outcome = Outcome(
        seed,
        n,
        roles,
        world.steps,
        world.checker.certificates,
        len(world.checker.evidence),
        [node.replica.view for node in world.nodes],
    )
    if not world.all_certified():
        missing = {c: sorted(client.pending) for c, client in enumerate(world.clients)}
        state = [
            (
                nd.index,
                nd.replica.view,
                nd.replica.active,
                nd.replica.executed,
                nd.replica.stable_seq,
            )
            for nd in world.nodes
        ]
        raise InvariantViolation(
            f"seed {seed}: liveness: requests {missing} not certified by t={DEADLINE}; "
            f"{outcome}; replicas (node, view, active, executed, stable) {state}"
        )
    return outcome
