"""What goes into a replica (events) and what comes out (actions), h11-style.

The node feeds events to :meth:`Replica.handle` and carries out the actions in order. Time
is abstract: the replica asks for timers with :class:`SetTimer` and learns they expired
from :class:`TimerFired`; it never reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dropbear.certificate import CommittedTree
from dropbear.evidence import Evidence
from dropbear.wire import Certificate, Message, ModelUpdate, Request, RequestEntry, Vote

# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receive:
    """Bytes (or an already decoded message) from the network; ``sender`` is the transport's
    authenticated peer node, or None for a client. Undecodable bytes are dropped."""

    sender: int | None
    message: bytes | Message


@dataclass(frozen=True)
class ClientRequest:
    """Requests from clients, checked together (signatures verified in one batch)."""

    requests: Sequence[Request]


@dataclass(frozen=True)
class LocalVotes:
    """This node's inference results for requests of one model version."""

    model_version: bytes
    votes: Sequence[Vote]


@dataclass(frozen=True)
class ModelUpdateReady:
    """This node's owner signed a MODEL-UPDATE; the new weights are loaded and warm."""

    update: ModelUpdate


@dataclass(frozen=True)
class TimerFired:
    """A timer set with :class:`SetTimer` expired (and was not cancelled or reset)."""

    name: str


Event = Receive | ClientRequest | LocalVotes | ModelUpdateReady | TimerFired

# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``message`` to node ``to``."""

    to: int
    message: Message


@dataclass(frozen=True)
class Broadcast:
    """Send ``message`` to every other node."""

    message: Message


@dataclass(frozen=True)
class SetTimer:
    """(Re)start timer ``name`` to fire after ``delay`` seconds; replaces a running one."""

    name: str
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class RequestInference:
    """Run this node's model (version ``model_version``) on ``requests``; answer with
    :class:`LocalVotes`."""

    requests: tuple[Request, ...]
    model_version: bytes


@dataclass(frozen=True)
class ActivateModel:
    """This node's model update was ordered: infer with ``model_version`` from now on."""

    model_version: bytes


@dataclass(frozen=True)
class Deliver:
    """Batch ``seq`` was committed and executed (already in the ledger).

    ``entries`` are the certified entries; ``void`` those refused at execution (stale
    votes after a view change), whose requests stay pending.
    """

    view: int
    seq: int
    root: bytes
    entries: tuple[RequestEntry, ...]
    updates: tuple[ModelUpdate, ...]
    void: tuple[RequestEntry, ...]


@dataclass(frozen=True)
class Reply:
    """Give ``client`` (its public key) the certificates of its requests ``items``, ``(leaf
    index, entry)`` of the committed ``tree``: one signed REPLY for all of them."""

    client: bytes
    tree: CommittedTree
    items: tuple[tuple[int, RequestEntry], ...]

    @property
    def certificates(self) -> list[Certificate]:
        return [self.tree.certificate(index, entry) for index, entry in self.items]


@dataclass(frozen=True)
class Refuse:
    """Tell ``client`` that its request ``request_id`` was not accepted, and why."""

    client: bytes
    request_id: int
    reason: str
    transient: bool = False
    """A limit was full: the same request may be accepted later (the client re-sends)."""


@dataclass(frozen=True)
class RecordEvidence:
    """A node signed two conflicting things; keep and export this evidence."""

    evidence: Evidence


Action = (
    Send
    | Broadcast
    | SetTimer
    | CancelTimer
    | RequestInference
    | ActivateModel
    | Deliver
    | Reply
    | Refuse
    | RecordEvidence
)
