"""The replica: PBFT with signatures, ordering requests, votes and model updates (sans-I/O).

One object per node. :meth:`Replica.handle` takes an event and returns the actions to carry
out; nothing here reads a clock, touches a socket or runs a model. See docs/protocol.md.

Phases per sequence number: the primary (``view mod n``) sends PRE-PREPARE; every replica,
the primary included, sends PREPARE; 2f+1 matching PREPAREs make the batch *prepared* and
the replica sends COMMIT; 2f+1 matching COMMITs make it *committed*; committed batches are
executed in sequence order, each valid entry certified and replied.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from dropbear import _core
from dropbear import limits as L
from dropbear.certificate import KeptBatch, commit_tree
from dropbear.consensus import proofs
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
from dropbear.consensus.ledger import DEFERRED_SYNC_KINDS as _DEFERRED
from dropbear.consensus.ledger import Ledger, MemoryLedger
from dropbear.consensus.state import BatchError, Derived, GroupState, derive
from dropbear.evidence import Evidence, EvidenceError
from dropbear.manifest import Manifest
from dropbear.wire import (
    MEMO,
    Batch,
    CatchupRequest,
    CatchupResponse,
    Certificate,
    Checkpoint,
    Commit,
    CommittedBatch,
    Kind,
    Message,
    ModelUpdate,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Proposal,
    Request,
    RequestEntry,
    RequestHeader,
    Statement,
    ViewChange,
    Votes,
    WireError,
    decode,
)

PROGRESS = "progress"
VOTE_WAIT = "vote-wait"
BATCH_WAIT = "batch-wait"
VIEW_CHANGE = "view-change"
CATCH_UP = "catch-up"
TIMERS = (PROGRESS, VOTE_WAIT, BATCH_WAIT, VIEW_CHANGE, CATCH_UP)
"""The names of the replica's timers."""


@dataclass(frozen=True)
class ReplicaConfig:
    """Tunable bounds and delays; defaults from :mod:`dropbear.limits`."""

    checkpoint_interval: int = L.CHECKPOINT_INTERVAL
    snapshot_interval: int = L.SNAPSHOT_INTERVAL
    window: int = L.SEQ_WINDOW
    pipeline_depth: int = L.PIPELINE_DEPTH
    max_batch_entries: int = L.MAX_BATCH_ENTRIES
    vote_wait: float = L.VOTE_WAIT
    eager_depth: int = L.EAGER_DEPTH
    batch_fill: int = L.BATCH_FILL
    batch_wait: float = L.BATCH_WAIT
    hold_min: int = L.BATCH_HOLD_MIN
    request_timeout: float = L.REQUEST_TIMEOUT
    view_change_timeout: float = L.VIEW_CHANGE_TIMEOUT
    max_view_change_timeout: float = L.MAX_VIEW_CHANGE_TIMEOUT
    catchup_interval: float = L.CATCHUP_INTERVAL

    def __post_init__(self) -> None:
        if not 0 <= self.batch_wait <= self.request_timeout / 4:
            raise ValueError(
                f"batch wait {self.batch_wait}s must be in 0..request_timeout/4 "
                f"({self.request_timeout / 4}s): longer, and backups would suspect the primary"
            )
        if self.eager_depth < 1 or self.batch_fill < 1:
            raise ValueError(f"eager depth {self.eager_depth} and batch fill {self.batch_fill} "
                             "must be at least 1")
        if self.snapshot_interval < 1:
            raise ValueError(f"snapshot interval {self.snapshot_interval} must be at least 1")
        if self.hold_min < 0:
            raise ValueError(f"hold minimum {self.hold_min} must be at least 0")
        if not 0 < self.checkpoint_interval <= self.window // 2:
            raise ValueError(
                f"checkpoint interval {self.checkpoint_interval} must be in 1..window/2 "
                f"({self.window // 2})"
            )


@dataclass
class Slot:
    """The batch accepted at one sequence number in the current view."""

    view: int
    seq: int
    batch: Batch
    derived: Derived
    proposal_signature: bytes
    prepare_sent: bool = False
    prepared: bool = False
    committed: bool = False

    @property
    def root(self) -> bytes:
        return self.derived.root


class _SlotTable(dict[int, Slot]):
    """The slots of the current view by sequence number, and the requests they hold
    (``requests``: digest -> how many slots hold it), kept as slots come and go.
    ``held(digest)`` is called when a request enters its first slot, ``released(digest)``
    when it leaves its last one."""

    def __init__(self, held: Callable[[bytes], None] | None = None,
                 released: Callable[[bytes], None] | None = None) -> None:
        super().__init__()
        self.requests: dict[bytes, int] = {}
        self._held = held or (lambda digest: None)
        self._released = released or (lambda digest: None)

    def __setitem__(self, seq: int, slot: Slot) -> None:
        if seq in self:
            self._forget(super().__getitem__(seq))
        super().__setitem__(seq, slot)
        for header in slot.derived.headers:
            count = self.requests.get(header.digest, 0)
            self.requests[header.digest] = count + 1
            if not count:
                self._held(header.digest)

    def __delitem__(self, seq: int) -> None:
        self._forget(super().__getitem__(seq))
        super().__delitem__(seq)

    def pop(self, seq: int, default: Slot | None = None) -> Slot | None:  # type: ignore[override]
        if seq not in self:
            return default
        slot = super().__getitem__(seq)
        del self[seq]
        return slot

    def clear(self) -> None:
        super().clear()
        for digest in self.requests:
            self._released(digest)
        self.requests.clear()

    def _unsupported(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a slot table changes only by item assignment, del, pop and clear")

    update = setdefault = popitem = __ior__ = copy = _unsupported  # type: ignore[assignment]

    def _forget(self, slot: Slot) -> None:
        for header in slot.derived.headers:
            left = self.requests[header.digest] - 1
            if left:
                self.requests[header.digest] = left
            else:
                del self.requests[header.digest]
                self._released(header.digest)


@dataclass
class _Votes:
    """The votes known for one request: per node, the VOTES message and its output."""

    by_node: dict[int, tuple[Votes, int, float]] = field(default_factory=dict)


def _matches(slot: Slot | None, s: Statement) -> bool:
    """Whether statement ``s`` is about ``slot`` exactly: view, sequence number, size, root."""
    return (slot is not None and s.view == slot.view and s.seq == slot.seq
            and s.size == slot.derived.size and s.digest == slot.root)


@dataclass
class _Projection:
    """A projected state: ``state`` is the executed state plus every batch before ``seq``
    (in ``view``); ``digests`` maps each sequence number it passed to the state digest
    there (the executed one included)."""

    seq: int
    view: int
    digests: dict[int, bytes]
    state: GroupState


class Replica:
    """One node's consensus replica; see the module docstring and docs/protocol.md."""

    def __init__(
        self,
        manifest: Manifest,
        node: int,
        key: _core.SigningKey,
        ledger: Ledger | None = None,
        config: ReplicaConfig | None = None,
    ) -> None:
        if key.public_key != manifest.node_key(node):
            raise ValueError(f"key is not node {node}'s key in the manifest")
        self.manifest = manifest
        self.me = node
        self.key = key
        self.gid = manifest.group_id
        self.config = config or ReplicaConfig()
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.state = GroupState.genesis(manifest)
        self._out: list[Action] = []
        # view
        self.view = 0
        self.active = True
        self.vc_target = 0
        self._vc_timeout = self.config.view_change_timeout
        self._view_changes: dict[int, ViewChange] = {}
        self._last_new_view: NewView | None = None
        # log
        self.stable_seq = 0
        self._stable_proof: tuple[Checkpoint, ...] = ()
        self._slots = _SlotTable(held=self._on_held, released=self._on_released)
        self._early: dict[int, PrePrepare] = {}
        self._next_view: dict[tuple[Kind, int, int], PrePrepare | Prepare | Commit] = {}
        """Verified PRE-PREPAREs, PREPAREs and COMMITs of the view we are moving to, which
        came before its NEW-VIEW (see :meth:`_keep_for_next_view`), by (kind, node, seq)."""
        self._prepares: dict[tuple[int, int], dict[int, Prepare]] = {}
        self._commits: dict[tuple[int, int], dict[int, Commit]] = {}
        self._prepare_quorums: set[tuple[int, int, bytes]] = set()
        self._commit_quorums: set[tuple[int, int, bytes]] = set()
        self._new_trackers()
        self._prepared: dict[int, PreparedProof] = {}
        self._committed: dict[int, CommittedBatch] = {}
        self._checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self._signed: dict[tuple[int, int, int], tuple[bytes, int]] = {}
        self._abstain_through = -1
        """Views in which we sign no DEFERRED_SYNC_KINDS statement (after a machine crash)."""
        self.next_seq = 1
        # requests, votes, updates
        self._requests: OrderedDict[bytes, Request] = OrderedDict()
        self._by_client: dict[bytes, dict[bytes, int]] = {}
        """client -> its accepted requests not executed yet: digest -> request id."""
        self._votes: OrderedDict[bytes, _Votes] = OrderedDict()
        self._voted: OrderedDict[bytes, None] = OrderedDict()
        """Requests with votes from 2f+1 nodes (of any version), in the order they got them
        (a subset of ``_votes``' keys)."""
        self._unproposed: OrderedDict[bytes, None] = OrderedDict()
        """``_voted`` less the requests in a slot, in the same order: the only ones the
        ordering batcher looks at (under load most of ``_voted`` is in flight). A voted
        request leaving its last slot goes to ``_released`` (a subset of ``_voted``: an
        executed one leaves it when forgotten), and the next assembly puts those still
        voted back in their place (see :meth:`_unproposed_now`)."""
        self._released: set[bytes] = set()
        self._my_votes: dict[bytes, Votes] = {}
        self._projection: _Projection | None = None
        """The last :meth:`_projected` state (see there)."""
        self._updates: dict[int, ModelUpdate] = {}
        self._waiting: set[bytes] = set()
        self._expired: set[bytes] = set()
        self._batch_due = False
        """The batch wait ran out: the next batch is proposed however small."""
        self._short: tuple[int, int] | None = None
        """While a batch is held back (see :meth:`_hold_back`): how many requests it lacks and
        how many VOTES messages it holds. New votes cannot fill it before that many requests
        became orderable (:meth:`_on_votes` counts them in ``_newly_orderable``)."""
        self._newly_orderable = 0
        self._paced = False
        """The held-back batch waits for a batch in flight to be prepared (no timer)."""
        self._starved = False
        """The last assembly found nothing to propose: until a request becomes orderable
        (counted as for a held-back batch, ``_short`` = (1, 0)), new votes and requests do not
        assemble again; timers, executions, prepared batches and updates still do."""
        self._proposing = False
        self._replies: OrderedDict[tuple[bytes, int], tuple[KeptBatch, int]] = OrderedDict()
        """(client, request id) -> the batch and leaf index of a recently executed request,
        for a client that asks again (MAX_REPLY_CACHE)."""
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self.convicted: set[int] = set()
        self.evidence_kept = 0
        # timers and catch-up
        self._running: set[str] = set()
        self.known_top = 0
        self._catchup_peer = node
        self._replaying = False
        self._recover()

    # --- public API ----------------------------------------------------------------------

    @property
    def primary(self) -> int:
        return self.manifest.primary(self.view)

    @property
    def executed(self) -> int:
        """The last executed sequence number."""
        return self.state.seq

    @property
    def pending_requests(self) -> int:
        """Accepted requests not yet executed."""
        return len(self._requests)

    def awaits_votes(self, digest: bytes) -> bool:
        """Whether request ``digest`` is accepted and not executed yet: a vote for it may
        still be ordered. Once it is executed its entry is fixed, and running the model for
        it would be work for nothing."""
        return digest in self._requests

    def cached_certificate(self, client: bytes, request_id: int) -> Certificate | None:
        """The certificate of a recently executed request (bounded by MAX_REPLY_CACHE)."""
        cached = self._replies.get((client, request_id))
        if cached is None:
            return None
        kept, index = cached
        return kept.tree.certificate(index, kept.entry(index))

    def start(self) -> list[Action]:
        """Actions to run once when the node starts (or restarts)."""
        if self.state.seq or self.view or self.stable_seq:
            self._out.append(Broadcast(self._catchup_request()))
            self._set_timer(CATCH_UP, self.config.catchup_interval)
        if not self.active:
            self._send_view_change()
        return self._flush()

    def handle(self, event: Event) -> list[Action]:
        """Processes one event; returns the actions to carry out, in order."""
        match event:
            case Receive(sender, message):
                self._on_receive(sender, message)
            case ClientRequest(requests):
                self._on_client_requests(list(requests))
            case LocalVotes(version, votes):
                self._on_local_votes(version, list(votes))
            case ModelUpdateReady(update):
                self._on_update(update, local=True)
            case TimerFired(name):
                self._on_timer(name)
            case _:
                raise TypeError(f"unknown event {event!r}")
        return self._flush()

    # --- plumbing ------------------------------------------------------------------------

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _broadcast(self, message: Message) -> None:
        self._out.append(Broadcast(message))

    def _set_timer(self, name: str, delay: float) -> None:
        self._running.add(name)
        self._out.append(SetTimer(name, delay))

    def _cancel_timer(self, name: str) -> None:
        if name in self._running:
            self._running.discard(name)
            self._out.append(CancelTimer(name))

    def _new_trackers(self) -> None:
        n, q = self.manifest.n, self.manifest.quorum
        self._prepare_tracker = _core.QuorumTracker(n, q, L.QUORUM_MAX_SLOTS)
        self._commit_tracker = _core.QuorumTracker(n, q, L.QUORUM_MAX_SLOTS)

    def _evidence(self, evidence: Evidence) -> None:
        try:
            culprit = evidence.culprit(self.manifest)
        except EvidenceError:
            return
        self.convicted.add(culprit)
        if self.evidence_kept < L.MAX_EVIDENCE_ITEMS:
            self.evidence_kept += 1
            self._out.append(RecordEvidence(evidence))

    def _drain_trackers(self) -> None:
        for tracker in (self._prepare_tracker, self._commit_tracker):
            for a, b in tracker.take_evidence():
                self._evidence(Evidence("statements", a[4], b[4]))

    def _verify(self, items: list[tuple[bytes, bytes, bytes]]) -> bool:
        """Whether every ``(message, signature, key)`` verifies; batched when worth it."""
        if len(items) > 2:
            return not _core.batch_verify(items)
        try:
            return all(_core.verify(k, m, sig) for m, sig, k in items)
        except ValueError:
            return False

    def _holds(self, header: RequestHeader) -> bool:
        """Whether we accepted this exact signed header (its signature checked on arrival)."""
        held = self._requests.get(header.digest)
        return held is not None and held.header.signature == header.signature

    def _remember_verified(self, digest: bytes) -> None:
        self._verified[digest] = None
        while len(self._verified) > L.MAX_VERIFIED_CACHE:
            self._verified.popitem(last=False)

    def _may_sign(self, statement: Statement) -> bool:
        """Never sign two different statements for one (kind, view, seq); persist first."""
        if statement.view <= self._abstain_through and statement.kind in _DEFERRED:
            return False  # this view's signed statements may be lost: see _recover
        key = (statement.kind, statement.view, statement.seq)
        value = (statement.digest, statement.size)
        known = self._signed.get(key)
        if known is not None:
            return known == value
        self._signed[key] = value
        self.ledger.save_signed(statement)
        return True

    def _statement(self, kind: Kind, view: int, seq: int, size: int, digest: bytes) -> Statement:
        return Statement(kind, self.gid, self.me, view, seq, size, digest)

    def _in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.stable_seq + self.config.window

    # --- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        durable = self.ledger.load()
        last = self.ledger.last_seq()
        snapshot = self.ledger.snapshot()
        if snapshot is not None and snapshot[0] <= last:
            self.state = GroupState.decode(snapshot[1], self.manifest)
            if self.state.seq != snapshot[0]:
                raise ValueError(f"ledger snapshot {snapshot[0]} holds the state of batch "
                                 f"{self.state.seq}")
        self._replaying = True
        for start in range(self.state.seq + 1, last + 1, L.RECOVERY_CHUNK):
            for cb in self.ledger.committed(start, min(start + L.RECOVERY_CHUNK, last + 1)):
                derived = proofs.valid_committed(self.manifest, cb)
                if derived is None or cb.seq != self.state.seq + 1:
                    raise ValueError(f"ledger batch {cb.seq} does not verify")
                self._execute_batch(cb, derived)
        self._replaying = False
        for statement in durable.signed:
            key = (statement.kind, statement.view, statement.seq)
            self._signed[key] = (statement.digest, statement.size)
        if durable.lost_unsynced:
            # The machine went down before the fsync of some PRE-PREPAREs and PREPAREs we
            # signed (the ledger defers those fsyncs): we no longer know all of them, so we
            # sign none again in any view we may have signed them in. We take part again
            # from the next view on (COMMITs, prepared proofs and views were fsynced).
            self._abstain_through = max(
                [durable.view, *(s.view for s in durable.signed)])
        for proof in durable.prepared:
            old = self._prepared.get(proof.seq)
            if proof.seq > self.state.seq and (old is None or old.view < proof.view):
                self._prepared[proof.seq] = proof
        if durable.view:
            self.view = self.vc_target = durable.view
            self.active = False
        proof = durable.stable_proof
        if proof and proof[0].seq % self.config.checkpoint_interval == 0:
            checks = proofs.checkpoint_checks(self.manifest, proof[0].seq, proof)
            if checks is not None and self._verify(checks):
                self.stable_seq, self._stable_proof = proof[0].seq, tuple(proof)
        self._prepared = {s: p for s, p in self._prepared.items() if s > self.stable_seq}
        self.next_seq = max(self.state.seq, self.stable_seq) + 1
        self.known_top = max(self.state.seq, self.stable_seq)

    # --- events --------------------------------------------------------------------------

    def _on_receive(self, sender: int | None, data: bytes | Message) -> None:
        if isinstance(data, Message):
            message = data
        else:
            try:
                message = decode(data)
            except WireError:
                return
        group = message.statement.group_id if hasattr(message, "statement") else None
        if isinstance(message, Request):
            group = message.header.group_id
        elif group is None:
            group = getattr(message, "group_id", None)
        if group != self.gid:
            return
        match message:
            case Request():
                # Refusals go to the client only when it sent the request itself.
                self._on_client_requests([message], refuse=sender is None)
            case Votes():
                self._on_votes(message)
            case ModelUpdate():
                self._on_update(message, local=False)
            case PrePrepare():
                self._on_pre_prepare(message)
            case Prepare():
                self._on_prepare(message)
            case Commit():
                self._on_commit(message)
            case Checkpoint():
                self._on_checkpoint(message)
            case ViewChange():
                self._on_view_change(message)
            case NewView():
                self._on_new_view(message)
            case CatchupRequest():
                self._on_catchup_request(message)
            case CatchupResponse():
                self._on_catchup_response(message)
            case _:
                return

    def _on_timer(self, name: str) -> None:
        self._running.discard(name)
        if name == VOTE_WAIT:
            self._expired |= self._waiting
            self._waiting.clear()
            self._propose()
        elif name == BATCH_WAIT:
            self._batch_due = True
            self._propose()
        elif name == PROGRESS:
            self._want_catchup(poll=True)  # perhaps we missed batches, not the primary
            if self.active and self.primary != self.me and self._has_orderable():
                self._start_view_change(self.view + 1)
            else:
                if self.active and self.primary != self.me:
                    # Nothing executed for a whole period: tell every node what we voted,
                    # so that all backups can tell whether the primary could order it.
                    self._share_votes(self._requests)
                self._update_progress_timer()
        elif name == VIEW_CHANGE and not self.active:
            # 2f+1 nodes want this view or a later one, yet no NEW-VIEW came: try the next.
            voters = [vc for vc in self._view_changes.values() if vc.new_view >= self.vc_target]
            if len(voters) >= self.manifest.quorum:
                self._vc_timeout = min(2 * self._vc_timeout, self.config.max_view_change_timeout)
                self._start_view_change(self.vc_target + 1)
            else:
                self._send_view_change()
                self._want_catchup(poll=True)  # we may be stuck because we are behind
        elif name == CATCH_UP:
            self._want_catchup()

    # --- requests, votes, model updates -------------------------------------------------

    def _on_client_requests(self, requests: list[Request], refuse: bool = True) -> None:
        """Accepts fresh, well-signed requests within the limits; tells the client why the
        others were refused (when ``refuse``: the client sent them to us itself)."""

        def refuse_with(head: RequestHeader, reason: str, transient: bool = False) -> None:
            if refuse:
                self._out.append(Refuse(head.client, head.request_id, reason, transient))

        candidates: list[Request] = []
        seen: set[bytes] = set()
        retransmitted = False
        gid, held, by_client, replies = self.gid, self._requests, self._by_client, self._replies
        windows = self.state.clients
        room = L.MAX_PENDING_REQUESTS - len(held)  # for new requests, this call's included
        for request in requests:
            head = request.header
            digest = head.digest
            if head.group_id != gid or digest in seen:
                continue
            seen.add(digest)
            if not request.data_matches():
                refuse_with(head, "the input bytes do not match the signed input digest")
                continue
            if digest in held:  # a retransmission: help the stragglers
                mine = self._my_votes.get(digest)
                if mine is not None:
                    self._share_votes((digest,))
                retransmitted = True
                continue
            client, request_id = head.client, head.request_id
            if replies:
                cached = replies.get((client, request_id))
                if cached is not None:
                    kept, index = cached
                    entry = kept.entry_of(index, digest)
                    if entry is not None:
                        self._out.append(Reply(client, kept.tree, ((index, entry),)))
                        continue
            window = windows.get(client)
            if window is not None and not window.fresh(request_id):
                refuse_with(head, f"request id {request_id} was ordered already or is "
                                   f"below the client's replay window (ids must stay within "
                                   f"MAX_INFLIGHT_PER_CLIENT={L.MAX_INFLIGHT_PER_CLIENT} of "
                                   "the oldest unordered one)")
                continue
            pending = by_client.get(client)
            if pending is not None and len(pending) >= L.MAX_INFLIGHT_PER_CLIENT:
                refuse_with(head, f"client has {len(pending)} requests pending "
                                   f"(MAX_INFLIGHT_PER_CLIENT={L.MAX_INFLIGHT_PER_CLIENT})",
                            transient=True)
                continue
            if len(candidates) >= room:
                refuse_with(head, f"node busy: {L.MAX_PENDING_REQUESTS} requests pending "
                                   "(MAX_PENDING_REQUESTS)", transient=True)
                continue
            if pending is None and len(by_client) >= L.MAX_CLIENTS:
                refuse_with(head, f"{L.MAX_CLIENTS} clients have requests pending "
                                   "(MAX_CLIENTS)", transient=True)
                continue
            candidates.append(request)
        bad = set(_core.verify_requests([r.header.check_item(r.header.client) for r in candidates]))
        for i in sorted(bad):
            refuse_with(candidates[i].header, "the client signature does not verify")
        accepted = tuple(r for i, r in enumerate(candidates) if i not in bad)
        for request in accepted:
            self._requests[request.digest] = request
            head = request.header
            self._by_client.setdefault(head.client, {})[request.digest] = head.request_id
        if accepted:
            self._out.append(RequestInference(accepted, self.state.versions[self.me]))
        if accepted or retransmitted:
            # Only a request whose votes came first may be orderable at once.
            quorum, votes = self.manifest.quorum, self._votes
            early = any((known := votes.get(r.digest)) is not None
                        and len(known.by_node) >= quorum for r in accepted)
            self._after_new_work(orderable=None if early else 0)

    def _on_local_votes(self, version: bytes, votes: list) -> None:
        current = self.state.versions[self.me]
        if version != current:  # computed before our model switched: recompute
            stale = tuple(self._requests[v.request] for v in votes if v.request in self._requests)
            if stale:
                self._out.append(RequestInference(stale, current))
            return
        votes = [v for v in votes if v.request in self._requests]
        for start in range(0, len(votes), L.MAX_VOTES_PER_MESSAGE):
            chunk = tuple(votes[start : start + L.MAX_VOTES_PER_MESSAGE])
            message = Votes(self.gid, self.me, version, chunk).signed(self.key)
            for vote in chunk:
                self._my_votes[vote.request] = message
            MEMO.put(message.encoded, message)  # a PRE-PREPARE will bring these bytes back
            self._send_votes(message)
            self._on_votes(message, verified=True)

    def _send_votes(self, message: Votes) -> None:
        """Our VOTES go to the primary alone: only its batcher counts them, and a backup
        checks those a PRE-PREPARE carries (n - 1 messages per inference batch, not n(n - 1)).
        The primary keeps its own. During a view change they go to every node, as they do
        for a request that waits too long (:meth:`_share_votes`)."""
        if not self.active:
            self._broadcast(message)
        elif self.primary != self.me:
            self._out.append(Send(self.primary, message))

    def _share_votes(self, digests: Iterable[bytes]) -> None:
        """Broadcasts our VOTES for these pending requests (each message once): with 2f+1
        nodes doing so, every backup knows the primary could order them, and suspects it if
        it still does not. Done when a client re-sends (by every node, so that all learn the
        same), and by a backup each ``progress`` period that passes with nothing executed
        (so a lost share, or a vote recomputed for a new model version, goes out again)."""
        for message in self._my_votes_for(digests):
            self._broadcast(message)

    def _my_votes_for(self, digests: Iterable[bytes]) -> list[Votes]:
        """Our VOTES messages that carry these requests' votes, each once, in first-use order."""
        messages: dict[bytes, Votes] = {}
        for digest in digests:
            mine = self._my_votes.get(digest)
            if mine is not None:
                messages[mine.digest] = mine
        return list(messages.values())

    def _on_votes(self, message: Votes, verified: bool = False,
                  ordered: frozenset[bytes] | None = None) -> None:
        """Counts a node's VOTES. With ``ordered`` (the requests of a PRE-PREPARE that
        carried them), a vote for another request counts only while we still track that
        request: we forget executed ones, and must not bring their votes back."""
        node = message.node
        if node >= self.manifest.n or node in self.convicted and node != self.me:
            return
        if not verified and message.digest not in self._verified:
            if not message.verify(self.manifest.node_key(node)):
                return
            self._remember_verified(message.digest)
        quorum, n = self.manifest.quorum, self.manifest.n
        orderable, wake, wait = 0, False, False
        # Only the primary holding a batch back counts (see _after_new_work).
        counting = self.active and self.primary == self.me and self._short is not None
        versions = self._countable_versions() if counting else None
        version = message.model_version
        current = version == self.state.versions[node]  # (a vote of it replaces another)
        all_votes, voted, unproposed = self._votes, self._voted, self._unproposed
        in_slots = self._slots.requests
        for request, label, score in message.votes:
            known = all_votes.get(request)
            if known is None:
                if ordered is not None and request not in ordered:
                    continue
                if len(all_votes) >= L.MAX_PENDING_REQUESTS:
                    evicted = all_votes.popitem(last=False)[0]
                    voted.pop(evicted, None)
                    unproposed.pop(evicted, None)
                    self._released.discard(evicted)
                known = all_votes[request] = _Votes()
            by_node = known.by_node
            old = by_node.get(node)
            if old is not None and old[0].model_version == version:
                if (old[1], old[2]) != (label, score):
                    self._evidence(Evidence.of_votes(old[0], message))
                    return
                continue
            if old is None or current:
                by_node[node] = (message, label, score)
                count = len(by_node)
                if count >= quorum:
                    voted[request] = None
                    if request not in in_slots:
                        unproposed[request] = None
                    if not counting:
                        continue
                    if versions is None or any(m.model_version != versions[voter]
                                               for voter, (m, _, _) in by_node.items()):
                        wake = True  # some votes may not count: let the batcher look
                    elif old is not None:
                        wake = True  # a vote of another version replaced: look again
                    elif count >= n or request in self._expired:
                        orderable += 1  # it may go in the next batch now
                    elif count == quorum and request in self._requests:
                        # Its wait for the rest starts now, as the batcher would start it.
                        self._waiting.add(request)
                        wait = True
        if wait and VOTE_WAIT not in self._running:
            self._set_timer(VOTE_WAIT, self.config.vote_wait)
        self._after_new_work(orderable=None if wake or not counting else orderable)

    def _countable_versions(self) -> list[bytes] | None:
        """The model versions the batcher counts votes by, when new votes may be counted
        instead of assembling a held-back batch again (see :meth:`_after_new_work`): the
        executed versions, while no model update is pending or in flight and no node is
        convicted (the batcher counts only current votes, of no convicted node); else None,
        and any request that reaches a quorum wakes the batcher."""
        if self.convicted or self._updates or any(
                slot.batch.updates for seq, slot in self._slots.items() if seq > self.state.seq):
            return None
        return self.state.versions

    def _on_update(self, update: ModelUpdate, local: bool) -> None:
        node = update.node
        if node >= self.manifest.n or update.counter <= self.state.counters[node]:
            return
        pending = self._updates.get(node)
        if pending is not None and pending.counter >= update.counter:
            return
        if not update.verify(self.manifest.owner_key(node)):
            return
        self._updates[node] = update
        if local or node == self.me:
            self._broadcast(update)
        self._after_new_work()

    def _after_new_work(self, orderable: int | None = None) -> None:
        """Lets the primary propose. ``orderable``: the new work (votes; or requests, none
        with a quorum of votes yet) made that many requests orderable: while a held-back
        batch lacks more than that, assembling it again would hold it again, and is skipped;
        so is assembling again while nothing was orderable at the last assembly
        (``_starved``) and nothing became so."""
        if self.active and self.primary == self.me:
            if orderable is not None and self._short is not None and (
                    self._paced or self._starved or BATCH_WAIT in self._running):
                self._newly_orderable += orderable
                lacking, messages = self._short
                if (self._newly_orderable < lacking and messages
                        + self._newly_orderable * self.manifest.n <= L.MAX_BATCH_VOTE_MESSAGES):
                    self._update_progress_timer()
                    return
            self._propose()
        self._update_progress_timer()

    def _current_votes(self, digest: bytes, versions: list[bytes]) -> dict[int, Votes]:
        known = self._votes.get(digest)
        if known is None:
            return {}
        return {
            node: msg
            for node, (msg, _, _) in known.by_node.items()
            if msg.model_version == versions[node] and node not in self.convicted
        }

    def _has_orderable(self) -> bool:
        """Whether something could be ordered now (the primary owes us progress)."""
        versions = self.state.versions
        if any(u.counter > self.state.counters[u.node] for u in self._updates.values()):
            return True
        return any(
            len(self._current_votes(d, versions)) >= self.manifest.quorum for d in self._requests
        )

    def _update_progress_timer(self) -> None:
        """Runs while work is pending: a backup suspects the primary when something could be
        ordered; any replica polls a peer in case it is the one behind."""
        if not self.active:
            self._cancel_timer(PROGRESS)
        elif PROGRESS not in self._running and (self._requests or self._updates):
            self._set_timer(PROGRESS, self.config.request_timeout)

    # --- the primary's ordering batcher -------------------------------------------------

    def _projected(self, seq: int) -> GroupState | None:
        """The state after every batch before ``seq`` (accepted or committed), if all known.

        Read-only for the caller. The last projection is kept and reused, or extended by the
        batches after it, instead of being rebuilt from the executed state each time: it
        stays valid while the view is the same and the executed state is one it passed
        through (same sequence number and state digest, a hash chain of every batch before).
        """
        state = self.state
        if seq <= state.seq + 1:
            return state
        kept = self._projection
        if (kept is not None and kept.view == self.view and kept.seq <= seq
                and kept.digests.get(state.seq) == state.digest):
            if kept.seq == seq:
                return kept.state
            start, projected, digests = kept.seq, kept.state.copy(), dict(kept.digests)
        else:
            start, projected, digests = state.seq + 1, state.copy(), {state.seq: state.digest}
        for s in range(start, seq):
            slot = self._slots.get(s)
            if slot is not None:
                projected.apply(slot.derived, s, slot.root)
            else:
                cb = self._committed.get(s)
                if cb is None:
                    return None
                derived = derive(cb.batch, self.manifest)
                projected.apply(derived, s, derived.root)
            digests[s] = projected.digest
        for old in [s for s in digests if s < state.seq]:
            del digests[old]
        self._projection = _Projection(seq, self.view, digests, projected)
        return projected

    def _keep_projection(self, seq: int, before: GroupState, after: GroupState) -> None:
        """The slot at ``seq`` was just stored, checked by computing ``after`` from
        ``before`` (the projection to ``seq``): keep ``after`` as the projection to seq + 1,
        so that the next batch's check does not apply this one again."""
        state, kept = self.state, self._projection
        if before is state and seq == state.seq + 1:
            digests = {state.seq: state.digest}
        elif (kept is not None and kept.state is before and kept.seq == seq
                and kept.view == self.view):
            digests = dict(kept.digests)
        else:
            return
        digests[seq] = after.digest
        self._projection = _Projection(seq + 1, self.view, digests, after)

    def _propose(self) -> None:
        if self._proposing:
            return  # called back from a batch this very call proposed: it goes on anyway
        self._short, self._paced, self._starved, self._proposing = None, False, False, True
        try:
            self._propose_batches()
        finally:
            self._proposing = False

    def _propose_batches(self) -> None:
        while self.active and self.primary == self.me:
            seq = self.next_seq
            if seq > self.stable_seq + self.config.window:
                return
            if seq > self.state.seq + self.config.pipeline_depth:
                return
            projected = self._projected(seq)
            if projected is None:
                return
            assembled = self._assemble(projected)
            if assembled is None:
                # Nothing orderable: wait for a request to become so (not every VOTES and
                # intake batch need a scan of every pending request).
                self._short, self._newly_orderable, self._starved = (1, 0), 0, True
                return
            batch, full = assembled
            if self._hold_back(seq, batch, full):
                return
            try:
                derived = derive(batch, self.manifest)
            except BatchError:
                batch = Batch(batch.requests[:1], batch.votes, batch.updates)
                derived = derive(batch, self.manifest)
            after = projected.after(derived, seq, derived.root)
            if isinstance(after, str):
                return
            statement = self._statement(
                Kind.PRE_PREPARE, self.view, seq, derived.size, derived.root
            )
            if not self._may_sign(statement):
                return
            self._batch_due = False
            self._cancel_timer(BATCH_WAIT)
            message = PrePrepare(statement, self.key.sign(statement.encoded), batch)
            slot = Slot(self.view, seq, batch, derived, message.signature)
            self._slots[seq] = slot
            self._keep_projection(seq, projected, after)
            self.next_seq = seq + 1
            self._broadcast(message)
            self._maybe_prepare(slot)

    def _hold_back(self, seq: int, batch: Batch, full: bool = False) -> bool:
        """Whether to wait for a fuller batch (never when a limit cut it short: ``full``,
        it is as full as it gets; nor while the requests in flight and this batch's are
        fewer than ``hold_min``): with ``eager_depth`` batches already in flight,
        a batch of fewer than ``batch_fill`` requests waits (at most ``batch_wait``) for more,
        and each further batch in flight asks for ``batch_fill`` more. At low load every
        request is proposed at once; under load (or with long round trips, which keep many
        batches in flight), batches grow instead of the number of batches, and so does the
        work each protocol message amortizes. And while ``eager_depth`` batches in flight
        are not prepared yet, the next one waits (without a timer) for one of them to be:
        it could not be prepared before them, and meanwhile it gathers requests; far apart,
        where the prepare phase advances one batch per one-way delay, this is what keeps
        batches large and few."""
        if full or self._batch_due or batch.updates:
            return False
        if self._in_flight_requests(seq) + len(batch.requests) < self.config.hold_min:
            # Too little load for waiting to gather a batch (``hold_min``): holding these
            # back would only add a wait to every request, and far apart a batch waiting
            # for its predecessor to be prepared makes the next one wait in turn.
            return False
        largest = self.config.max_batch_entries
        if len(batch.requests) < largest and self._unprepared(seq) >= self.config.eager_depth:
            # Paced by the prepare phase: a batch proposed now could not be prepared before
            # those (each PREPAREs only after its predecessor is prepared), so it gathers
            # requests until one of them is (then _check_prepared proposes again).
            self._short = (largest - len(batch.requests), len(batch.votes))
            self._newly_orderable, self._paced = 0, True
            if BATCH_WAIT in self._running:
                self._cancel_timer(BATCH_WAIT)  # a fill-wait's timer must not cut it short
            return True
        in_flight = seq - self.state.seq - 1
        beyond = max(0, in_flight - self.config.eager_depth)
        fill = min(self.config.batch_fill * (1 + beyond), largest)
        if in_flight < self.config.eager_depth or len(batch.requests) >= fill:
            return False
        if BATCH_WAIT not in self._running:
            self._set_timer(BATCH_WAIT, self.config.batch_wait)
        self._short, self._newly_orderable = (fill - len(batch.requests), len(batch.votes)), 0
        self._paced = False
        return True

    def _in_flight_requests(self, seq: int) -> int:
        """Requests in the batches in flight below ``seq`` (proposed, not executed)."""
        slots = self._slots
        return sum(len(slot.batch.requests) for s in range(self.state.seq + 1, seq)
                   if (slot := slots.get(s)) is not None)

    def _unprepared(self, seq: int) -> int:
        """Batches in flight below ``seq`` not yet prepared here."""
        slots = self._slots
        return sum(1 for s in range(self.state.seq + 1, seq)
                   if (slot := slots.get(s)) is not None and not slot.prepared)

    def _on_held(self, digest: bytes) -> None:
        self._unproposed.pop(digest, None)
        self._released.discard(digest)

    def _on_released(self, digest: bytes) -> None:
        if digest in self._voted:  # so _released stays within _voted (and its bound)
            self._released.add(digest)

    def _unproposed_now(self) -> OrderedDict[bytes, None]:
        """``_unproposed``, first rebuilt from ``_voted`` if a request left its last slot
        and is still to be ordered (a view change; an executed request is forgotten)."""
        if self._released:
            in_flight = self._slots.requests
            if any(d in self._voted and d not in in_flight for d in self._released):
                self._unproposed = OrderedDict(
                    (d, None) for d in self._voted if d not in in_flight)
            self._released.clear()
        return self._unproposed

    def _assemble(self, projected: GroupState) -> tuple[Batch, bool] | None:
        """The next batch: ready requests (2f+1 current votes; all n or the wait is over)
        and pending model updates; and whether a limit (entries, VOTES messages) cut it
        short."""
        in_flight = self._slots.requests
        quorum, n = self.manifest.quorum, self.manifest.n
        headers: list[RequestHeader] = []
        messages: dict[bytes, Votes] = {}
        used: set[tuple[bytes, int]] = set()
        full = False
        largest = self.config.max_batch_entries
        requests, all_votes, expired = self._requests, self._votes, self._expired
        versions, convicted, waiting = projected.versions, self.convicted, self._waiting
        for digest in self._unproposed_now():
            if len(headers) >= largest:
                full = True
                break
            known = all_votes.get(digest)
            if known is None:
                continue
            if digest in waiting and len(known.by_node) < n and digest not in expired:
                # Still fewer than n votes and its wait not over: it waits on, whatever the
                # checks below would find (each of them would skip it too). The batcher looks
                # at every unproposed request each time it runs: this is most of them.
                continue
            request = requests.get(digest)
            if request is None or digest in in_flight:
                continue  # its votes came before it, or it is proposed already
            head = request.header
            key = (head.client, head.request_id)
            if key in used or not projected.fresh(*key):
                continue
            # The votes that count: of the projected model version, from nodes not convicted
            # (as _current_votes, without its dict).
            votes = [m for node, (m, _, _) in known.by_node.items()
                     if m.model_version == versions[node] and node not in convicted]
            if len(votes) < quorum:
                continue
            if len(votes) < n and digest not in expired:
                if digest not in waiting:
                    waiting.add(digest)
                    if VOTE_WAIT not in self._running:
                        self._set_timer(VOTE_WAIT, self.config.vote_wait)
                continue
            new = [m for m in votes if m.digest not in messages]  # one VOTES per node
            if len(messages) + len(new) > L.MAX_BATCH_VOTE_MESSAGES:
                full = True
                break
            for m in new:
                messages[m.digest] = m
            headers.append(head)
            used.add(key)
        updates = tuple(
            u
            for _, u in sorted(self._updates.items())
            if u.counter > projected.counters[u.node]
            and not any(u in s.batch.updates for s in self._slots.values())
        )
        if not headers and not updates:
            return None
        return Batch(tuple(headers), tuple(messages.values()), updates), full

    # --- normal case: pre-prepare, prepare, commit --------------------------------------

    def _note_ahead(self, message: PrePrepare | Prepare | Commit) -> None:
        """A signed message beyond our window: we are behind; catch up."""
        if message.seq > self.known_top and message.verify(self.manifest.node_key(message.node)):
            self.known_top = message.seq
            self._want_catchup()

    def _on_pre_prepare(self, message: PrePrepare) -> None:
        s = message.statement
        if not self.active or s.view != self.view:
            return self._keep_for_next_view(message)
        if s.node != self.primary or s.node == self.me:
            return
        if s.seq > self.stable_seq + self.config.window:
            return self._note_ahead(message)
        if not self._in_window(s.seq) or s.seq <= self.state.seq:
            return
        slot = self._slots.get(s.seq)
        if slot is not None:
            if slot.root != s.digest and message.verify(self.manifest.node_key(s.node)):
                ours = Statement(
                    Kind.PRE_PREPARE, self.gid, s.node, slot.view, slot.seq,
                    slot.derived.size, slot.root,
                )  # fmt: skip
                self._evidence(
                    Evidence.of_statements(ours, slot.proposal_signature, s, message.signature)
                )
            return
        if self._projected(s.seq) is None:
            if len(self._early) < L.MAX_FUTURE_MESSAGES:
                self._early.setdefault(s.seq, message)
            return
        self._accept_pre_prepare(message)
        while self._accept_early() is not None:
            pass

    def _accept_early(self) -> int | None:
        """Accepts a buffered PRE-PREPARE whose predecessors are now known."""
        for seq in sorted(self._early):
            if self._projected(seq) is not None:
                message = self._early.pop(seq)
                if message.view == self.view and seq not in self._slots and seq > self.state.seq:
                    self._accept_pre_prepare(message)
                return seq
        return None

    def _accept_pre_prepare(self, message: PrePrepare) -> None:
        s, batch = message.statement, message.batch
        items = [message.check_item(self.manifest.node_key(s.node))]
        items += [
            v.check_item(self.manifest.node_key(v.node))
            for v in batch.votes
            if v.node < self.manifest.n and v.digest not in self._verified
        ]
        items += [
            u.check_item(self.manifest.owner_key(u.node))
            for u in batch.updates
            if u.node < self.manifest.n
        ]
        if not self._verify(items):
            return
        # Client signatures under their own rule (_core.verify_requests), as at intake.
        unheld = [h.check_item(h.client) for h in batch.requests if not self._holds(h)]
        if unheld and _core.verify_requests(unheld):
            return
        try:
            derived = derive(batch, self.manifest)
        except BatchError:
            # Two VOTES of one node that disagree (on any request) are evidence.
            for v in batch.votes:
                self._on_votes(v, verified=True)
            return
        if (derived.root, derived.size) != (s.digest, s.size):
            return
        projected = self._projected(s.seq)
        if projected is None:
            return
        after = projected.after(derived, s.seq, derived.root)
        if isinstance(after, str):
            return
        for v in batch.votes:
            self._remember_verified(v.digest)
        slot = Slot(s.view, s.seq, batch, derived, message.signature)
        self._slots[s.seq] = slot
        self._keep_projection(s.seq, projected, after)
        self._maybe_prepare(slot)
        self._count_included(batch)

    def _count_included(self, batch: Batch) -> None:
        """Counts the (verified) VOTES an accepted PRE-PREPARE carries as if they had come
        to us: other nodes' VOTES reach a backup this way, and two of one node that
        disagree, in one batch or with one seen before, are evidence. A VOTES message covers
        a whole inference batch, whose other requests other batches order: votes for those
        count only while we still track the request (executed ones are forgotten)."""
        ordered = frozenset(h.digest for h in batch.requests)
        for v in batch.votes:
            self._on_votes(v, verified=True, ordered=ordered)

    def _maybe_prepare(self, slot: Slot) -> None:
        """PREPAREs ``slot`` once its predecessor is fixed: executed, committed, or prepared
        in this view. Then a prepared batch always follows the predecessor it was checked
        against (a prepared predecessor survives every view change, PBFT's invariant), so
        no certified entry can be void at execution."""
        if slot.prepare_sent or not self._predecessor_fixed(slot.seq):
            return
        slot.prepare_sent = True
        self._send_prepare(slot)

    def _predecessor_fixed(self, seq: int) -> bool:
        previous = seq - 1
        if previous <= self.state.seq or previous in self._committed:
            return True
        slot = self._slots.get(previous)
        return slot is not None and slot.prepared

    def _prepare_successor(self, seq: int) -> None:
        successor = self._slots.get(seq + 1)
        if successor is not None:
            self._maybe_prepare(successor)

    def _send_prepare(self, slot: Slot) -> None:
        statement = self._statement(Kind.PREPARE, slot.view, slot.seq, slot.derived.size, slot.root)
        if not self._may_sign(statement):
            return
        message = Prepare(statement, self.key.sign(statement.encoded), slot.proposal_signature)
        self._broadcast(message)
        self._on_prepare(message, verified=True)

    def _on_prepare(self, message: Prepare, verified: bool = False) -> None:
        s = message.statement
        if s.node >= self.manifest.n:
            return
        if not self.active or s.view != self.view:
            return self._keep_for_next_view(message)
        if s.seq > self.stable_seq + self.config.window:
            return self._note_ahead(message)
        if not self._in_window(s.seq):
            return
        known = self._prepares.setdefault(s.slot, {})
        if s.node in known and known[s.node] == message:
            return
        slot = self._slots.get(s.seq)
        ours = _matches(slot, s)
        if not verified:
            if ours and slot is not None and slot.prepared and s.node not in known:
                return  # prepared already: a first, matching PREPARE of a node adds nothing
            items = [message.check_item(self.manifest.node_key(s.node))]
            if not (ours and slot.proposal_signature == message.proposal_signature):
                # (the proposal signature of a PRE-PREPARE we accepted was checked then)
                primary_key = self.manifest.node_key(self.primary)
                items.append((message.proposal(self.primary).encoded,
                              message.proposal_signature, primary_key))
            if not self._verify(items):
                return
        if slot is not None and slot.view == s.view and slot.root != s.digest:
            ours = Statement(
                Kind.PRE_PREPARE, self.gid, self.primary, slot.view, slot.seq,
                slot.derived.size, slot.root,
            )  # fmt: skip
            self._evidence(
                Evidence.of_statements(
                    ours,
                    slot.proposal_signature,
                    message.proposal(self.primary),
                    message.proposal_signature,
                )
            )
        known.setdefault(s.node, message)
        signed = s.encoded + message.signature
        quorums = self._prepare_tracker.add_votes([(s.view, s.seq, s.digest, s.node, signed)])
        self._prepare_quorums.update(quorums)
        self._drain_trackers()
        self._check_prepared(s.seq)

    def _check_prepared(self, seq: int) -> None:
        slot = self._slots.get(seq)
        if (
            slot is None
            or slot.prepared
            or (slot.view, seq, slot.root) not in self._prepare_quorums
        ):
            return
        # The tracker counts by root; a proof needs 2f+1 whole statements like ours (a
        # faulty node's PREPARE of the right root and another size must not count).
        matching = tuple(
            p for p in self._prepares.get((slot.view, seq), {}).values()
            if _matches(slot, p.statement)
        )[: self.manifest.quorum]
        if len(matching) < self.manifest.quorum:
            return
        slot.prepared = True
        self._prepare_successor(seq)
        proof = PreparedProof(slot.view, seq, slot.batch, matching)
        self._prepared[seq] = proof
        self.ledger.save_prepared(proof)
        statement = self._statement(Kind.COMMIT, slot.view, seq, slot.derived.size, slot.root)
        if self._may_sign(statement):
            message = Commit(statement, self.key.sign(statement.encoded))
            self._broadcast(message)
            self._on_commit(message, verified=True)
        if self._paced:
            self._propose()  # the batch held back for this one goes now (after our COMMIT)

    def _on_commit(self, message: Commit, verified: bool = False) -> None:
        s = message.statement
        if s.node >= self.manifest.n:
            return
        if not self.active or s.view != self.view:
            return self._keep_for_next_view(message)
        if s.seq > self.stable_seq + self.config.window:
            return self._note_ahead(message)
        if not self._in_window(s.seq) or s.seq <= self.state.seq:
            return
        known = self._commits.setdefault(s.slot, {})
        if s.node in known and known[s.node] == message:
            return
        slot = self._slots.get(s.seq)
        if not verified and slot is not None and slot.committed and _matches(slot, s) \
                and s.node not in known:
            return  # committed already: a first, matching COMMIT of a node adds nothing
        if not verified and not message.verify(self.manifest.node_key(s.node)):
            return
        known.setdefault(s.node, message)
        signed = s.encoded + message.signature
        quorums = self._commit_tracker.add_votes([(s.view, s.seq, s.digest, s.node, signed)])
        self._commit_quorums.update(quorums)
        self._drain_trackers()
        if quorums and s.seq not in self._slots:
            # 2f+1 nodes committed a batch whose PRE-PREPARE we lack (our link from the
            # primary is down, or we missed it): fetch it now, not a progress period later.
            self.known_top = max(self.known_top, s.seq)
            self._want_catchup()
        self._check_committed(s.seq)

    def _check_committed(self, seq: int) -> None:
        slot = self._slots.get(seq)
        if (
            slot is None
            or slot.committed
            or (slot.view, seq, slot.root) not in self._commit_quorums
        ):
            return
        matching = tuple(
            c for c in self._commits.get((slot.view, seq), {}).values()
            if _matches(slot, c.statement)
        )[: self.manifest.quorum]
        if len(matching) < self.manifest.quorum:
            return  # (a COMMIT of the right root and another size does not certify it)
        slot.committed = True
        self._committed[seq] = CommittedBatch(slot.view, seq, slot.batch, matching)
        self._prepare_successor(seq)
        self._execute()

    # --- execution ----------------------------------------------------------------------

    def _execute(self) -> None:
        progressed = False
        while self.state.seq + 1 in self._committed:
            cb = self._committed.pop(self.state.seq + 1)
            slot = self._slots.get(cb.seq)
            if slot is not None and slot.batch == cb.batch:
                derived = slot.derived
            else:
                derived = derive(cb.batch, self.manifest)
            self._execute_batch(cb, derived)
            self._prepare_successor(cb.seq)
            progressed = True
        if self._committed and min(self._committed) > self.state.seq + 1:
            self.known_top = max(self.known_top, max(self._committed))
            self._want_catchup()
        if progressed:
            self._after_progress()

    def _after_progress(self) -> None:
        self._cancel_timer(PROGRESS)
        self._update_progress_timer()
        while self._accept_early() is not None:
            pass
        if self.active and self.primary == self.me:
            self.next_seq = max(self.next_seq, self.state.seq + 1)
            self._propose()

    def _execute_batch(self, cb: CommittedBatch, derived: Derived) -> None:
        """Applies committed batch ``cb`` (the next one), persists it, certifies and replies."""
        if not self._replaying:
            self.ledger.append_committed(cb)
        valid_entries, valid_updates = self.state.apply(derived, cb.seq, derived.root)
        self._slots.pop(cb.seq, None)
        self._committed.pop(cb.seq, None)
        self.known_top = max(self.known_top, cb.seq)
        valid = set(valid_entries)
        certified, void, replies = [], [], []
        for i, entry in enumerate(derived.entries):
            if i not in valid:
                void.append(entry)
                continue
            certified.append((i, entry))
            self._forget_request(entry.request, entry.client)
        if not self._replaying and certified:
            tree = commit_tree(self.gid, cb.view, cb.seq, derived.leaves, cb.commits)
            kept = KeptBatch.of(tree, derived.leaves)
            by_client: dict[bytes, list[tuple[int, RequestEntry]]] = {}
            cache = self._replies
            for item in certified:
                entry = item[1]
                cache[(entry.client, entry.request_id)] = (kept, item[0])
                mine = by_client.get(entry.client)
                if mine is None:
                    by_client[entry.client] = [item]
                else:
                    mine.append(item)
            replies = [Reply(client, tree, tuple(items)) for client, items in by_client.items()]
            while len(cache) > L.MAX_REPLY_CACHE:
                cache.popitem(last=False)
        certified = [entry for _, entry in certified]
        windows = self.state.clients
        for client in {e.client for e in certified}:
            pending, window = self._by_client.get(client), windows.get(client)
            if pending and window is not None:  # ids this batch used, or left below the window
                fresh = window.fresh
                for digest in [d for d, rid in pending.items() if not fresh(rid)]:
                    self._forget_request(digest, client)
        updates = tuple(derived.updates[i] for i in valid_updates)
        for update in updates:
            pending = self._updates.get(update.node)
            if pending is not None and pending.counter <= update.counter:
                del self._updates[update.node]
            if update.node == self.me and not self._replaying:
                self._switch_model(update.model_version)
        if self._replaying:
            return
        if cb.seq % self.config.snapshot_interval == 0:
            self.ledger.save_snapshot(cb.seq, self.state.encode(self.gid))
        self._out.append(
            Deliver(cb.view, cb.seq, derived.root, tuple(certified), updates, tuple(void))
        )
        self._out.extend(replies)
        if cb.seq % self.config.checkpoint_interval == 0:
            statement = self._statement(Kind.CHECKPOINT, 0, cb.seq, 0, self.state.digest)
            message = Checkpoint(statement, self.key.sign(statement.encoded))
            self._broadcast(message)
            self._on_checkpoint(message, verified=True)

    def _forget_request(self, digest: bytes, client: bytes) -> None:
        self._requests.pop(digest, None)
        self._votes.pop(digest, None)
        self._voted.pop(digest, None)
        self._unproposed.pop(digest, None)
        self._released.discard(digest)
        self._my_votes.pop(digest, None)
        self._waiting.discard(digest)
        self._expired.discard(digest)
        pending = self._by_client.get(client)
        if pending is not None:
            pending.pop(digest, None)
            if not pending:
                del self._by_client[client]

    def _switch_model(self, version: bytes) -> None:
        """Our own update was ordered: switch, and recompute votes of the old version."""
        self._out.append(ActivateModel(version))
        stale = tuple(
            self._requests[d]
            for d, message in self._my_votes.items()
            if message.model_version != version and d in self._requests
        )
        if stale:
            self._out.append(RequestInference(stale, version))

    # --- checkpoints ----------------------------------------------------------------------

    def _on_checkpoint(self, message: Checkpoint, verified: bool = False) -> None:
        s = message.statement
        if s.node >= self.manifest.n or s.seq % self.config.checkpoint_interval or s.view:
            return
        if not self._in_window(s.seq) or s.size:
            return
        known = self._checkpoints.setdefault(s.seq, {})
        if s.node in known:
            old = known[s.node]
            if old.root != s.digest and message.verify(self.manifest.node_key(s.node)):
                self._evidence(
                    Evidence.of_statements(old.statement, old.signature, s, message.signature)
                )
            return
        if not verified and not message.verify(self.manifest.node_key(s.node)):
            return
        known[s.node] = message
        matching = tuple(c for c in known.values() if c.root == s.digest)
        if len(matching) >= self.manifest.quorum:
            self._make_stable(s.seq, matching[: self.manifest.quorum])

    def _make_stable(self, seq: int, proof: tuple[Checkpoint, ...]) -> None:
        if seq <= self.stable_seq:
            return
        self.stable_seq, self._stable_proof = seq, proof
        self._projection = None  # it may rest on slots dropped here
        for table in (self._slots, self._early, self._prepared, self._checkpoints):
            for s in [s for s in table if s <= seq]:
                del table[s]
        for s in [s for s in self._committed if s <= min(seq, self.state.seq)]:
            del self._committed[s]
        for table in (self._prepares, self._commits):
            for key in [k for k in table if k[1] <= seq]:
                del table[key]
        self._next_view = {k: m for k, m in self._next_view.items() if k[2] > seq}
        for quorums in (self._prepare_quorums, self._commit_quorums):
            quorums.difference_update({q for q in quorums if q[1] <= seq})
        self._prepare_tracker.forget_up_to(seq)
        self._commit_tracker.forget_up_to(seq)
        self._signed = {k: v for k, v in self._signed.items() if k[2] > seq}
        self.ledger.save_checkpoint(proof)
        self.ledger.truncate(seq)
        if self.state.seq < seq:
            self.known_top = max(self.known_top, seq)
            self._want_catchup()
        if self.active and self.primary == self.me:
            self.next_seq = max(self.next_seq, seq + 1)
            self._propose()

    # --- view change --------------------------------------------------------------------

    def _start_view_change(self, view: int) -> None:
        if view <= self.vc_target:
            return
        self.active = False
        self.vc_target = view
        self._next_view = {k: m for k, m in self._next_view.items() if m.view >= view}
        self._cancel_timer(PROGRESS)
        self._cancel_timer(VOTE_WAIT)
        self._cancel_timer(BATCH_WAIT)
        self._batch_due = False
        self._send_view_change()
        self._maybe_new_view()

    def _keep_for_next_view(self, message: PrePrepare | Prepare | Commit) -> None:
        """Keeps a PRE-PREPARE, PREPARE or COMMIT of the view we are moving to (the one we
        wait for a NEW-VIEW of; while active, the next one) until we install that view, then
        handles it (:meth:`_replay_next_view`). The nodes that get the NEW-VIEW first PREPARE
        the re-proposed batches, and the new primary proposes, at once: their messages often
        arrive before the NEW-VIEW does, and nobody sends them again. Dropped, they cost a
        node that installed the view late its prepared quorum (with f nodes silent, 2f+1
        needs every other node's PREPARE) and with it the view, and the next view loses the
        same race. Bounded: one message per kind, node and sequence number in the window,
        PRE-PREPAREs only from the view's primary, the signature checked first."""
        s = message.statement
        target = self.vc_target if not self.active else self.view + 1
        if s.view != target or s.node == self.me or not self._in_window(s.seq):
            return
        if s.kind == Kind.PRE_PREPARE and s.node != self.manifest.primary(s.view):
            return
        key = (s.kind, s.node, s.seq)
        old = self._next_view.get(key)
        if old is not None and old.view == s.view:
            return  # the first one counts (a second one, if it differs, when in the view)
        if not message.verify(self.manifest.node_key(s.node)):
            return
        self._next_view[key] = message

    def _replay_next_view(self) -> None:
        """Handles the kept messages of the view just installed (PRE-PREPAREs, PREPAREs,
        then COMMITs, each in sequence order) and drops those of earlier views."""
        kept = sorted(
            (m for m in self._next_view.values() if m.view == self.view),
            key=lambda m: (m.statement.kind != Kind.PRE_PREPARE, m.statement.kind == Kind.COMMIT,
                           m.seq, m.node),
        )
        self._next_view = {k: m for k, m in self._next_view.items() if m.view > self.view}
        for message in kept:
            if not self.active or message.view != self.view:
                return  # (a message moved us on: the rest are of a view we left)
            if isinstance(message, PrePrepare):
                self._on_pre_prepare(message)
            elif isinstance(message, Prepare):
                self._on_prepare(message)
            else:
                self._on_commit(message)

    def _send_view_change(self) -> None:
        own = self._view_changes.get(self.me)
        if own is None or own.new_view != self.vc_target:
            self.ledger.save_view(self.vc_target)
            # Proofs of the view asked for itself are left out (a VIEW-CHANGE with one is
            # invalid): only a replica restarted in its view holds some. Asking for that view
            # again, it needs that view's NEW-VIEW, not a new selection; and they go in its
            # VIEW-CHANGE for any later view.
            prepared = tuple(p for s, p in sorted(self._prepared.items())
                             if s > self.stable_seq and p.view < self.vc_target)
            own = ViewChange(
                self.gid, self.me, self.vc_target, self.stable_seq, self._stable_proof, prepared
            ).signed(self.key)
            self._view_changes[self.me] = own
        self._broadcast(own)
        self._set_timer(VIEW_CHANGE, self._vc_timeout)

    def _on_view_change(self, vc: ViewChange) -> None:
        if vc.node >= self.manifest.n or vc.node == self.me:
            return
        if vc.new_view <= self.view and self.active:
            if self._last_new_view is not None and vc.new_view <= self._last_new_view.view:
                self._out.append(Send(vc.node, self._last_new_view))  # help it into our view
            return
        old = self._view_changes.get(vc.node)
        if old is not None and old.new_view >= vc.new_view:
            return
        cfg = self.config
        if not proofs.valid_view_change(self.manifest, vc, cfg.checkpoint_interval, cfg.window):
            return
        self._view_changes[vc.node] = vc
        current = self.vc_target if not self.active else self.view
        higher = sorted(v.new_view for v in self._view_changes.values() if v.new_view > current)
        if len(higher) >= self.manifest.f + 1:
            self._start_view_change(higher[0])
        self._maybe_new_view()

    def _maybe_new_view(self) -> None:
        view = self.vc_target
        if self.active or self.manifest.primary(view) != self.me:
            return
        voters = sorted(
            (vc for vc in self._view_changes.values() if vc.new_view == view),
            key=lambda vc: vc.node,
        )
        if len(voters) < self.manifest.quorum or self.me not in {vc.node for vc in voters}:
            return
        chosen = tuple(voters[: self.manifest.quorum])
        base, items = proofs.select(chosen)
        proposals = []
        for seq, batch in items:
            derived = derive(batch, self.manifest)
            statement = self._statement(Kind.PRE_PREPARE, view, seq, derived.size, derived.root)
            if not self._may_sign(statement):
                return
            signature = self.key.sign(statement.encoded)
            proposals.append(Proposal(seq, derived.size, derived.root, signature))
        message = NewView(self.gid, self.me, view, chosen, tuple(proposals)).signed(self.key)
        self._broadcast(message)
        self._install_new_view(message, base, items)

    def _on_new_view(self, message: NewView) -> None:
        view = message.view
        if message.node != self.manifest.primary(view) or message.node == self.me:
            return
        if (self.active and view <= self.view) or (not self.active and view < self.vc_target):
            return
        changes = message.view_changes
        nodes = {vc.node for vc in changes}
        if len(nodes) != len(changes) or len(nodes) < self.manifest.quorum:
            return
        if any(vc.new_view != view for vc in changes):
            return
        if not message.verify(self.manifest.node_key(message.node)):
            return
        cfg = self.config
        for vc in changes:
            if not proofs.valid_view_change(self.manifest, vc, cfg.checkpoint_interval, cfg.window):
                return
        base, items = proofs.select(changes)
        if len(items) != len(message.proposals):
            return
        checks = []
        for (seq, batch), proposal in zip(items, message.proposals, strict=True):
            derived = derive(batch, self.manifest)
            if (proposal.seq, proposal.size, proposal.root) != (seq, derived.size, derived.root):
                return
            statement = Statement(
                Kind.PRE_PREPARE, self.gid, message.node, view, seq, derived.size, derived.root
            )
            checks.append(
                (statement.encoded, proposal.signature, self.manifest.node_key(message.node))
            )
        if not self._verify(checks):
            return
        self.ledger.save_view(view)
        self._install_new_view(message, base, items)

    def _install_new_view(
        self, message: NewView, base: ViewChange, items: list[tuple[int, Batch]]
    ) -> None:
        self._drain_trackers()
        self.view = self.vc_target = message.view
        self.active = True
        self._last_new_view = message
        self._vc_timeout = self.config.view_change_timeout
        self._cancel_timer(VIEW_CHANGE)
        self._slots.clear()
        self._projection = None
        self._early.clear()
        self._prepares.clear()
        self._commits.clear()
        self._prepare_quorums.clear()
        self._commit_quorums.clear()
        self._new_trackers()
        self._waiting.clear()
        self._view_changes = {n: v for n, v in self._view_changes.items() if v.new_view > self.view}
        if base.stable_seq > self.stable_seq:
            self._make_stable(base.stable_seq, base.checkpoint_proof)
        signatures = {p.seq: p.signature for p in message.proposals}
        for seq, batch in items:
            if seq <= self.state.seq or seq in self._committed:
                continue
            derived = derive(batch, self.manifest)
            slot = Slot(self.view, seq, batch, derived, signatures[seq])
            self._slots[seq] = slot
            self._maybe_prepare(slot)
        top = items[-1][0] if items else base.stable_seq
        self.next_seq = max(top, self.state.seq, self.stable_seq) + 1
        if self.primary != self.me:
            # The new primary counts only the votes it holds: give it ours for what is
            # still pending (sent to the old primary, or to everyone during the change).
            pending = (d for d in self._my_votes if d in self._requests)
            for message in self._my_votes_for(pending):
                self._out.append(Send(self.primary, message))
        if self.state.seq < base.stable_seq:
            self.known_top = max(self.known_top, base.stable_seq)
            self._want_catchup()
        self._after_new_work()
        self._replay_next_view()

    # --- catch-up -----------------------------------------------------------------------

    def _catchup_request(self) -> CatchupRequest:
        return CatchupRequest(self.gid, self.me, self.state.seq + 1).signed(self.key)

    def _want_catchup(self, poll: bool = False) -> None:
        """While behind (or to ``poll`` whether we are), ask the next peer for committed
        batches, at most once per catch-up interval."""
        if CATCH_UP in self._running or (self.known_top <= self.state.seq and not poll):
            return
        self._catchup_peer = (self._catchup_peer + 1) % self.manifest.n
        if self._catchup_peer == self.me:
            self._catchup_peer = (self._catchup_peer + 1) % self.manifest.n
        self._out.append(Send(self._catchup_peer, self._catchup_request()))
        self._set_timer(CATCH_UP, self.config.catchup_interval)

    def _on_catchup_request(self, message: CatchupRequest) -> None:
        if message.node >= self.manifest.n or message.node == self.me:
            return
        if message.from_seq > self.state.seq + 1:
            return
        if not message.verify(self.manifest.node_key(message.node)):
            return
        batches = self.ledger.committed(message.from_seq, message.from_seq + L.MAX_CATCHUP_BATCHES)
        response = CatchupResponse(self.gid, self.me, tuple(batches), self._stable_proof)
        self._out.append(Send(message.node, response.signed(self.key)))

    def _on_catchup_response(self, message: CatchupResponse) -> None:
        if message.node >= self.manifest.n:
            return
        before = self.state.seq
        committed_view = 0
        for cb in message.batches:
            if cb.seq <= self.state.seq:
                continue
            if cb.seq != self.state.seq + 1:
                break
            derived = proofs.valid_committed(self.manifest, cb)
            if derived is None:
                break
            self._execute_batch(cb, derived)
            committed_view = max(committed_view, cb.view)
        if committed_view > (self.view if self.active else self.vc_target):
            # 2f+1 nodes committed in a later view than ours: we missed its NEW-VIEW (or
            # restarted before it). Asking for that view makes a node in it send its NEW-VIEW.
            self._start_view_change(committed_view)
        proof = message.checkpoint_proof
        if proof:
            seq = proof[0].seq
            checks = proofs.checkpoint_checks(self.manifest, seq, proof)
            if seq > self.stable_seq and checks is not None and self._verify(checks):
                if seq % self.config.checkpoint_interval == 0:
                    self.known_top = max(self.known_top, seq)
                    self._make_stable(seq, proof)
        if self.state.seq > before:
            self._execute()
            self._after_progress()
            if self.known_top > self.state.seq:  # more to fetch from this peer
                self._out.append(Send(message.node, self._catchup_request()))
                self._set_timer(CATCH_UP, self.config.catchup_interval)
