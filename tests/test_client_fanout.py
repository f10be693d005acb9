"""The order a request leaves the client in: backups first, the primary of the highest view
a verified certificate came from last; and each pass's writes in the order they were queued."""

import dataclasses

import trio
from dropbear import _core
from dropbear.agreement import make_entry
from dropbear.certificate import build
from dropbear.client import Client, _Pending
from dropbear.net import PassFlush
from dropbear.wire import Commit, EntryVote, Kind, Request, Statement
from sim.group import make_group

GROUP = make_group(4)
M = GROUP.manifest


def order(client: Client) -> list[int]:
    return [client.links.index(link) for link in client._fanout]


def certified(client: Client, request_id: int, view: int):
    """A pending request of ``client`` and a certificate for it from batch 3 of ``view``."""
    request = Request.create(client.key, M.group_id, request_id, "uint8", (1,), b"\x01")
    client._pending[request_id] = _Pending(request)
    votes = [EntryVote(node, M.nodes[node].model_version, 1, 0.5) for node in range(4)]
    entry = make_entry(request.header, votes, M.threshold)
    leaves = [entry.encoded]
    root = _core.merkle_root(leaves)
    commits = [Commit(Statement(Kind.COMMIT, M.group_id, node, view, 3, 1, root)).signed(
        GROUP.node_keys[node]) for node in range(3)]
    return build(M.group_id, view, 3, leaves, 0, entry, commits)


def test_the_primary_of_the_highest_view_seen_gets_a_request_last() -> None:
    client = Client(M, _core.SigningKey.generate())
    assert order(client) == [1, 2, 3, 0]  # view 0: node 0 is the primary
    client._accept(certified(client, 7, view=5))
    assert client._pending[7].done.is_set()
    assert order(client) == [2, 3, 0, 1]  # view 5: node 1
    client._accept(certified(client, 8, view=2))  # an older view changes nothing
    assert client._pending[8].done.is_set()
    assert order(client) == [2, 3, 0, 1]


def test_a_certificate_that_does_not_verify_moves_no_view() -> None:
    client = Client(M, _core.SigningKey.generate())
    cert = certified(client, 7, view=5)
    client._accept(dataclasses.replace(cert, signatures=cert.signatures[:1]))  # 1 of 2f+1
    assert not client._pending[7].done.is_set()
    assert order(client) == [1, 2, 3, 0]


class _Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def put(self, payload: bytes) -> bool:
        return True

    def flush(self) -> None:
        self.log.append(self.name)


async def test_a_pass_writes_the_outboxes_in_the_order_they_were_first_put_to() -> None:
    log: list[str] = []
    a, b, c = (_Recorder(name, log) for name in "abc")
    flush = PassFlush()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush.run)
        for outbox in (b, a, c, b, a):
            flush.put(outbox, b"frame")  # type: ignore[arg-type]
        await trio.sleep(0.01)
        for outbox in (c, a):
            flush.put(outbox, b"frame")  # type: ignore[arg-type]
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert log == ["b", "a", "c", "c", "a"]
