"""GroupProcesses.wait_ready, against a stand-in client (no node processes)."""

from types import SimpleNamespace

import pytest
import trio
from dropbear.client import ClientError
from dropbear.launcher import GroupProcesses, NodeProcess


class LateLinks:
    """Every node answers at once, but the links of nodes 0-2 to node 3 (the last to start,
    its model the slowest to load) come up only after their reconnect backoff: here after
    each node's fifth status query."""

    def __init__(self, n: int = 4) -> None:
        self.n = n
        self.queries = [0] * n

    def links_up(self, node: int) -> list[int]:
        late = node != 3 and self.queries[node] <= 5
        return [p for p in range(self.n) if p != node and not (late and p == 3)]

    async def status(self, node: int, timeout: float = 5.0) -> dict:
        self.queries[node] += 1
        await trio.sleep(0)
        return {"node": node, "peers_connected": self.links_up(node)}


def _group(n: int, running: set[int]) -> GroupProcesses:
    group = object.__new__(GroupProcesses)
    group.manifest = SimpleNamespace(n=n)
    group.nodes = [NodeProcess(i, f"node-{i}.log") for i in range(n)]  # type: ignore[arg-type]
    for node in group.nodes:
        node.process = SimpleNamespace(returncode=None if node.node_id in running else 0)
    return group


def test_wait_ready_waits_until_the_links_to_a_late_node_are_up():
    """The demo streamed as soon as every node answered: node 3 then got no PRE-PREPARE
    until node 0's link to it reconnected (up to 3 s later), refused the client's
    requests meanwhile (its first 64 still pending) and voted in no certificate."""
    client = LateLinks()
    group = _group(4, running={0, 1, 2, 3})
    trio.run(group.wait_ready, client)
    assert all(client.links_up(node) == [p for p in range(4) if p != node] for node in range(4))


def test_wait_ready_ignores_links_to_a_node_that_is_not_running():
    class NoLinksTo3(LateLinks):
        def links_up(self, node: int) -> list[int]:
            return [p for p in range(self.n) if p not in (node, 3)]

    client = NoLinksTo3()
    group = _group(4, running={0, 1, 2})
    trio.run(group.wait_ready, client, [0, 1, 2])
    assert client.queries[3] == 0


def test_wait_ready_raises_when_a_node_exits_while_waiting_for_links():
    class Exits(LateLinks):
        async def status(self, node: int, timeout: float = 5.0) -> dict:
            if node == 3 and self.queries[3] >= 1:
                group.nodes[3].process.returncode = 1
                raise ClientError("node 3 is gone")
            return await super().status(node, timeout)

    client = Exits()
    group = _group(4, running={0, 1, 2, 3})
    try:
        trio.run(group.wait_ready, client)
    except RuntimeError as error:
        assert "node 3 exited" in str(error)
    else:
        raise AssertionError("wait_ready returned although node 3 exited")


def test_wait_ready_raises_when_a_waited_for_node_exits_during_the_link_phase():
    """Node 3 answered, then exits (and is reaped) while node 0 is asked about its links:
    waiting for node 3 must not end as if it were ready."""
    class ExitsQuietly(LateLinks):
        async def status(self, node: int, timeout: float = 5.0) -> dict:
            if node == 0 and self.queries[3] >= 1:
                group.nodes[3].process.returncode = 1
            return await super().status(node, timeout)

    client = ExitsQuietly()
    group = _group(4, running={0, 1, 2, 3})
    with pytest.raises(RuntimeError, match="node 3 exited"):
        trio.run(group.wait_ready, client, [3])
