"""Runs a model group as one OS process per node, under one trio launcher.

Used by ``dropbear up``, ``make demo`` and the multi-process tests. Each node runs
``python -m dropbear node --id K --manifest ...`` with its output in
``<group>/logs/node-K.log``, in its own session (so that a terminal's Ctrl-C reaches the
launcher only). On cancellation (Ctrl-C, SIGTERM, the end of a test) every node gets one
SIGTERM, then SIGKILL if it has not exited after NODE_STOP_GRACE_S; a node whose launcher
dies (even by SIGKILL) stops by itself within a second: no orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dropbear import control
from dropbear.client import Client, ClientError
from dropbear.deploy import MANIFEST_FILE
from dropbear.manifest import Manifest

NODE_STOP_GRACE_S = 5.0
"""Seconds a node has to exit after SIGTERM before it is killed."""
NODE_START_TIMEOUT_S = 180.0
"""Seconds every node has to load its model, compile it and answer a status query."""


@dataclass
class NodeProcess:
    node_id: int
    log_path: Path
    process: trio.Process | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class GroupProcesses:
    """The node processes of one group directory."""

    def __init__(self, group_dir: Path, *, models_dir: Path = Path("models"),
                 extra_args: Sequence[str] = (), node_args: dict[int, Sequence[str]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.group_dir = Path(group_dir)
        self.manifest = Manifest.load(self.group_dir / MANIFEST_FILE)
        self.models_dir = Path(models_dir)
        self.extra_args = list(extra_args)
        self.node_args = node_args or {}
        self.env = {**os.environ, **(env or {})}
        logs = self.group_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.nodes = [NodeProcess(i, logs / f"node-{i}.log") for i in range(self.manifest.n)]
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[int, trio.CancelScope] = {}

    def command(self, node_id: int) -> list[str]:
        return [sys.executable, "-m", "dropbear", "node", "--id", str(node_id),
                "--manifest", str(self.group_dir / MANIFEST_FILE),
                "--models-dir", str(self.models_dir), "--exit-with-parent", *self.extra_args,
                *self.node_args.get(node_id, ())]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Starts every node and supervises them until cancelled; then stops them all."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for node in self.nodes:
                await self.start_node(node.node_id)
            task_status.started()

    async def start_node(self, node_id: int) -> None:
        assert self._nursery is not None, "run() the group first"
        await self._nursery.start(self._supervise, self.nodes[node_id])

    async def _supervise(self, node: NodeProcess, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with open(node.log_path, "ab") as log, trio.CancelScope() as scope:
            self._scopes[node.node_id] = scope
            process = await trio.lowlevel.open_process(
                self.command(node.node_id), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
            node.process = process
            task_status.started()
            try:
                await process.wait()
            finally:
                if process.returncode is None:
                    with trio.CancelScope(shield=True):
                        await _stop(process)
                node.exit_codes.append(process.returncode)
            self._scopes.pop(node.node_id, None)

    async def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to a node (SIGKILL: a crash) and waits until it is gone."""
        process = self.nodes[node_id].process
        if process is not None and process.returncode is None:
            process.send_signal(sig)
            await process.wait()

    async def wait_ready(self, client: Client, nodes: Sequence[int] | None = None,
                         timeout: float = NODE_START_TIMEOUT_S) -> None:
        """Waits until every node (or ``nodes``) answers a status query, then until every
        running node's links to the other running nodes are connected.

        A node dials its peers from its start, with exponential backoff (up to
        NET_RECONNECT_BACKOFF_MAX_S, with jitter); one that starts long after the others
        (a slow model to load) is reached by their links only a few seconds after it
        answers. Until the primary's link is up, that node gets no PRE-PREPARE: it cannot
        execute the requests it accepted, so it refuses a busy client's next ones (its
        MAX_INFLIGHT_PER_CLIENT are pending) and its votes are in no certificate. The links
        of every running node count, also those of nodes not in ``nodes``; a node of
        ``nodes`` that exits meanwhile raises RuntimeError."""
        wanted = sorted(range(self.manifest.n) if nodes is None else nodes)
        pending = set(wanted)
        with trio.fail_after(timeout):
            while pending:
                for node in sorted(pending):
                    self._check_running(node)
                    try:
                        await client.status(node, timeout=1.0)
                        pending.discard(node)
                    except ClientError:
                        await trio.sleep(0.2)
            while not await self._links_up(client):
                for node in wanted:
                    self._check_running(node)
                await trio.sleep(0.1)
            for node in wanted:
                self._check_running(node)

    def _check_running(self, node: int) -> None:
        if not self.nodes[node].running:
            raise RuntimeError(f"node {node} exited with {self.nodes[node].exit_codes}; "
                               f"see {self.nodes[node].log_path}")

    async def _links_up(self, client: Client) -> bool:
        """Whether every running node reports its links to every other running node up."""
        running = {node.node_id for node in self.nodes if node.running}
        for node in sorted(running):
            try:
                status = await client.status(node, timeout=1.0)
            except ClientError:
                self._check_running(node)
                return False
            if not running - {node} <= set(status.get("peers_connected", ())):
                return False
        return True


async def _stop(process: trio.Process) -> None:
    process.terminate()
    with trio.move_on_after(NODE_STOP_GRACE_S):
        await process.wait()
        return
    process.kill()
    await process.wait()


async def set_fault(client: Client, node: int, mode: str) -> str:
    """Tells a node started with --fault-injection to play ``mode`` (e.g. flip-labels)."""
    ack = await client.control(node, control.Control.FAULT, {"mode": mode})
    if not ack.get("ok"):
        raise ClientError(f"node {node} refused fault {mode!r}: {ack.get('message')}")
    return str(ack.get("message"))
