"""The replicated state and the rules a batch must follow (DESIGN.md properties 3 and 4).

:func:`derive` turns a batch into its Merkle leaves without looking at any state, so every
replica computes the same root. :class:`GroupState` is what the ordered log implies (model
versions, update counters, each client's replay window, the state digest) and says which
entries are valid at their point of the order.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from dropbear import _core
from dropbear.cached import cached_property
from dropbear.limits import MAX_CLIENTS, MAX_INFLIGHT_PER_CLIENT
from dropbear.manifest import Manifest
from dropbear.wire import (
    DIGEST_BYTES,
    Batch,
    Kind,
    ModelUpdate,
    Reader,
    RequestEntry,
    RequestHeader,
    UpdateEntry,
    WireError,
    Writer,
    read_header,
)
from dropbear.wire import header as write_header


class BatchError(ValueError):
    """A batch that no honest primary proposes; the message names the rule broken."""


@dataclass(frozen=True)
class Derived:
    """A batch's entries and updates, its leaves and root."""

    entries: tuple[RequestEntry, ...]
    headers: tuple[RequestHeader, ...]
    updates: tuple[ModelUpdate, ...]
    voters: tuple[tuple[int, bytes], ...] | None = None
    """The (node, model version) of every VOTES of the batch, when known (:func:`derive`):
    the entries' votes are all taken from these, so if each is its node's current version,
    so is every vote, and applying the batch need not read the entries' votes (one stale
    VOTES, even one no entry used, sends it back to reading them)."""

    @cached_property
    def leaves(self) -> list[bytes]:
        """Request entries in batch order, then update entries."""
        return [e.encoded for e in self.entries] + [UpdateEntry(u).encoded for u in self.updates]

    @cached_property
    def root(self) -> bytes:
        return _core.merkle_root(self.leaves)

    @property
    def size(self) -> int:
        return len(self.leaves)


def derive(batch: Batch, manifest: Manifest) -> Derived:
    """The entries of ``batch``: each request with every vote the batch's VOTES give it.

    Stateless rules: one group; distinct requests; at most one vote per node and request
    (identical repeats collapse); at least 2f+1 votes per request. Signatures are checked by
    the caller. The agreed label is :func:`~dropbear.agreement.make_entry`'s (plurality,
    ties to the lowest label). This runs for every batch on every node, so the Rust core
    does it (``_core.derive_entries``): it reads the VOTES and headers and makes each
    :class:`~dropbear.wire.RequestEntry` with its canonical encoding, from which the entry
    reads its votes if they are ever asked for (a node's hot path does not ask).
    """
    gid = manifest.group_id
    try:
        entries = _core.derive_entries(gid, manifest.n, manifest.quorum, manifest.threshold,
                                       batch.votes, batch.requests, RequestEntry)
    except ValueError as error:
        raise BatchError(str(error)) from None
    for update in batch.updates:
        if update.group_id != gid or update.node >= manifest.n:
            raise BatchError(f"update of node {update.node} is not of this group")
    return Derived(entries, batch.requests, batch.updates,
                   tuple((m.node, m.model_version) for m in batch.votes))


@dataclass
class ClientWindow:
    """A client's replay window: ids below ``low`` and those ordered are used. Bit ``i`` of
    ``bits`` is set when id ``low + i`` was ordered; :meth:`use` keeps the highest ordered
    id within MAX_INFLIGHT_PER_CLIENT of ``low``, so a window is a few dozen bytes whatever
    the limit."""

    low: int = 0
    bits: int = 0

    @classmethod
    def of(cls, low: int, ordered: Iterable[int]) -> ClientWindow:
        """The window of ``low`` whose ordered ids (none below ``low``) are ``ordered``."""
        bits = 0
        for request_id in ordered:
            if request_id < low:
                raise ValueError(f"ordered id {request_id} below the window's low {low}")
            bits |= 1 << (request_id - low)
        return cls(low, bits)

    @property
    def ordered(self) -> list[int]:
        """The ordered ids at or above ``low``, increasing."""
        bits, low = self.bits, self.low
        return [low + i for i in range(bits.bit_length()) if bits >> i & 1]

    def fresh(self, request_id: int) -> bool:
        return request_id >= self.low and not self.bits >> (request_id - self.low) & 1

    def use(self, request_id: int) -> None:
        if request_id < self.low:
            return  # used already: below the window
        low = request_id - MAX_INFLIGHT_PER_CLIENT + 1
        if low > self.low:  # slide: the ids passed drop out
            self.bits >>= low - self.low
            self.low = low
        self.bits |= 1 << (request_id - self.low)

    def copy(self) -> ClientWindow:
        return ClientWindow(self.low, self.bits)


_WINDOW_HEAD = struct.Struct(">32sQH")
"""A client window in a state snapshot: client key, low, count of the ordered ids."""


@dataclass
class GroupState:
    """What the ordered log up to ``seq`` implies; identical on every honest replica."""

    versions: list[bytes]
    counters: list[int]
    clients: OrderedDict[bytes, ClientWindow] = field(default_factory=OrderedDict)
    seq: int = 0
    digest: bytes = bytes(32)
    _owned: set[bytes] = field(default_factory=set, repr=False, compare=False)
    """Clients whose windows this state made or copied itself (the rest it shares with the
    state it was copied from, and copies before changing)."""

    @classmethod
    def genesis(cls, manifest: Manifest) -> GroupState:
        return cls([n.model_version for n in manifest.nodes], [0] * manifest.n)

    def copy(self) -> GroupState:
        """A copy to project pending batches onto. Client windows are copied on write: both
        states now share every window, so neither changes one in place any more."""
        self._owned.clear()
        return GroupState(
            list(self.versions), list(self.counters), OrderedDict(self.clients), self.seq,
            self.digest,
        )  # fmt: skip

    def fresh(self, client: bytes, request_id: int) -> bool:
        window = self.clients.get(client)
        return window is None or window.fresh(request_id)

    def entry_problem(self, entry: RequestEntry) -> str | None:
        """Why ``entry`` may not be ordered next, or None."""
        if not self.fresh(entry.client, entry.request_id):
            return f"request id {entry.request_id} of client {entry.client.hex()[:16]} was used"
        for vote in entry.votes:
            if vote.model_version != self.versions[vote.node]:
                return f"vote of node {vote.node} from model {vote.model_version.hex()[:16]}"
        return None

    def encode(self, group_id: bytes) -> bytes:
        """The canonical bytes of this state (a node's restart snapshot, docs/ledger.md).

        ``01 | 40 | group id | seq u64 | digest | node count u16 | (version | counter u64)* |
        client count u32 | (client key | low u64 | id count u16 | id u64 *)*``: clients from
        least to most recently used (the order MAX_CLIENTS evicts them in), ids increasing.
        """
        w = Writer()
        write_header(w, Kind.STATE_SNAPSHOT, group_id)
        w.u64(self.seq)
        w.fixed(self.digest, DIGEST_BYTES, "state digest")
        w.u16(len(self.versions))
        for version, counter in zip(self.versions, self.counters, strict=True):
            w.fixed(version, DIGEST_BYTES, "model version")
            w.u64(counter)
        w.u32(len(self.clients))
        for client, window in self.clients.items():
            ids = window.ordered
            w.record(_WINDOW_HEAD, "client window", client, window.low, len(ids))
            for request_id in ids:
                w.u64(request_id)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes, manifest: Manifest) -> GroupState:
        """The state :meth:`encode` wrote for ``manifest``'s group; WireError names what is
        malformed (another group or group size, counts past their limits, ids out of order
        or below their window)."""
        r = Reader(data)
        if read_header(r, Kind.STATE_SNAPSHOT) != manifest.group_id:
            raise WireError("state snapshot of another group")
        seq = r.u64("seq")
        digest = r.fixed(DIGEST_BYTES, "state digest")
        if r.u16("node count") != manifest.n:
            raise WireError(f"state snapshot is not of {manifest.n} nodes")
        versions, counters = [], []
        for _ in range(manifest.n):
            versions.append(r.fixed(DIGEST_BYTES, "model version"))
            counters.append(r.u64("update counter"))
        clients: OrderedDict[bytes, ClientWindow] = OrderedDict()
        for _ in range(r.count("client count", MAX_CLIENTS)):
            client, low, count = r.record(_WINDOW_HEAD, "client window")
            if client in clients:
                raise WireError(f"client {client.hex()[:16]} twice in a state snapshot")
            if count > MAX_INFLIGHT_PER_CLIENT:
                raise WireError(f"{count} ordered ids for one client, limit "
                                f"{MAX_INFLIGHT_PER_CLIENT}")
            ids = [r.u64("request id") for _ in range(count)]
            # As ClientWindow.use leaves it: at least one id, increasing, none below low,
            # and the highest one sets low (low = highest - MAX_INFLIGHT_PER_CLIENT + 1).
            top = low + MAX_INFLIGHT_PER_CLIENT - 1
            if not ids or ids != sorted(set(ids)) or ids[0] < low or ids[-1] > top:
                raise WireError(f"ordered ids of client {client.hex()[:16]} not increasing "
                                f"within its window {low}..{top}")
            if low > 0 and ids[-1] != top:
                raise WireError(f"client {client.hex()[:16]}: window low {low} without id "
                                f"{top}")
            clients[client] = ClientWindow.of(low, ids)
        r.end("state snapshot")
        return cls(versions, counters, clients, seq, digest)

    def update_problem(self, update: ModelUpdate) -> str | None:
        if update.counter <= self.counters[update.node]:
            return f"update counter {update.counter} of node {update.node} was used"
        return None

    def apply_entry(self, entry: RequestEntry) -> None:
        self._window_to_change(entry.client).use(entry.request_id)

    def _window_to_change(self, client: bytes) -> ClientWindow:
        """``client``'s window, this state's own (made, or copied from the state it shares
        it with) and now the most recently used, the least recently used beyond MAX_CLIENTS
        evicted."""
        clients, owned = self.clients, self._owned
        window = clients.get(client)
        if window is None:
            window = clients[client] = ClientWindow()
            while len(clients) > MAX_CLIENTS:
                owned.discard(clients.popitem(last=False)[0])
        else:
            if client not in owned:
                window = clients[client] = window.copy()
            clients.move_to_end(client)
        owned.add(client)
        return window

    def apply_update(self, update: ModelUpdate) -> None:
        self.versions[update.node] = update.model_version
        self.counters[update.node] = update.counter

    def apply(self, derived: Derived, seq: int, root: bytes) -> tuple[list[int], list[int]]:
        """Executes batch ``seq``: valid entries and updates take effect, in leaf order.

        Returns the indices of the valid entries and of the valid updates.
        """
        valid_entries = self._apply_entries(derived, strict=False)
        assert not isinstance(valid_entries, str)
        valid_updates = []
        for i, update in enumerate(derived.updates):
            if self.update_problem(update) is None:
                self.apply_update(update)
                valid_updates.append(i)
        self.seq = seq
        self.digest = _chain(self.digest, seq, root)
        return valid_entries, valid_updates

    def after(self, derived: Derived, seq: int, root: bytes) -> GroupState | str:
        """The state after batch ``seq`` if all of it is valid at this state (strict, for
        backups: the same state :meth:`apply` gives then), else why it is not."""
        probe = self.copy()
        problem = probe._apply_entries(derived, strict=True)
        if isinstance(problem, str):
            return problem
        for update in derived.updates:
            problem = probe.update_problem(update)
            if problem:
                return problem
            probe.apply_update(update)
        probe.seq = seq
        probe.digest = _chain(self.digest, seq, root)
        return probe

    def _apply_entries(self, derived: Derived, strict: bool) -> list[int] | str:
        """:meth:`apply_entry` for each entry without an :meth:`entry_problem`, in order (one
        loop, for every batch on every node); the indices of those applied, or (``strict``)
        the first problem. The entries' votes are read only if a VOTES of the batch is not of
        its node's current model version (or the batch's VOTES are not known)."""
        clients, versions = self.clients, self.versions
        voters = derived.voters
        current = voters is not None and all(versions[node] == version
                                             for node, version in voters)
        applied = []
        for i, entry in enumerate(derived.entries):
            client, request_id = entry.client, entry.request_id
            window = clients.get(client)
            if window is None or window.fresh(request_id):
                for vote in () if current else entry.votes:
                    if vote[1] != versions[vote[0]]:
                        break
                else:  # fresh, and every vote of its node's current model
                    self._window_to_change(client).use(request_id)
                    applied.append(i)
                    continue
            if strict:
                problem = self.entry_problem(entry)  # the message, for the rare failing entry
                assert problem is not None
                return problem
        return applied


def _chain(digest: bytes, seq: int, root: bytes) -> bytes:
    """The state digest after batch ``seq`` of Merkle root ``root``: a hash chain."""
    return _core.sha256(digest + struct.pack(">Q", seq) + root)
