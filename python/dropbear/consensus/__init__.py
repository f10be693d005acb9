"""The consensus replica as a sans-I/O state machine: events in, actions out.

``replica`` runs the protocol; ``events`` defines its inputs and outputs; ``state`` the
replicated state and batch rules; ``proofs`` the checks of signed proofs; ``ledger`` the
durable-storage seam. See docs/protocol.md.
"""

from dropbear.consensus.events import (
    Action,
    ActivateModel,
    Broadcast,
    CancelTimer,
    ClientRequest,
    Deliver,
    Event,
    LocalVotes,
    ModelUpdateReady,
    Receive,
    RecordEvidence,
    Refuse,
    Reply,
    RequestInference,
    Send,
    SetTimer,
    TimerFired,
)
from dropbear.consensus.ledger import DurableState, Ledger, MemoryLedger
from dropbear.consensus.replica import TIMERS, Replica, ReplicaConfig

__all__ = [
    "Action",
    "ActivateModel",
    "Broadcast",
    "CancelTimer",
    "ClientRequest",
    "Deliver",
    "DurableState",
    "Event",
    "Ledger",
    "LocalVotes",
    "MemoryLedger",
    "ModelUpdateReady",
    "Receive",
    "RecordEvidence",
    "Refuse",
    "Replica",
    "ReplicaConfig",
    "Reply",
    "RequestInference",
    "Send",
    "SetTimer",
    "TIMERS",
    "TimerFired",
]
