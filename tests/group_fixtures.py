"""Helpers for the multi-process tests: a group of real node processes shared by several
tests, and a raw client that sends whatever bytes a test wants.

A :class:`RunningGroup` supervises its node processes with
:class:`dropbear.launcher.GroupProcesses` in a trio loop of its own (a background thread),
so that one group can outlive a single test's trio run (pytest-trio gives every test its own).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from dropbear import _core, control
from dropbear.client import Client
from dropbear.deploy import MANIFEST_FILE, key_path, read_key
from dropbear.launcher import GroupProcesses
from dropbear.manifest import Manifest
from dropbear.net import LocalIdentity, PeerIdentity, PeerLink, Role, Sender
from dropbear.node import split_address
from dropbear.wire import Reply, WireError, decode

NODE_ARGS = ("--max-batch-size", "8", "--log-level", "INFO")
"""Small executor batches: fewer buckets to compile, so nodes start sooner."""
START_TIMEOUT_S = 150.0


def log_tails(group_dir: Path, lines: int = 15) -> str:
    """The last lines of every node's log (for assertion messages)."""
    out = []
    for path in sorted((Path(group_dir) / "logs").glob("node-*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


class RunningGroup:
    """Node processes of ``group_dir`` under GroupProcesses, in a background trio loop."""

    def __init__(self, group_dir: Path, *, models_dir: Path, extra_args: Sequence[str] = (),
                 node_args: dict[int, Sequence[str]] | None = None) -> None:
        self.group_dir = Path(group_dir)
        self.manifest = Manifest.load(self.group_dir / MANIFEST_FILE)
        self.client_key = read_key(key_path(self.group_dir, "client"))
        self.processes = GroupProcesses(self.group_dir, models_dir=models_dir,
                                        extra_args=[*NODE_ARGS, *extra_args],
                                        node_args=node_args)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.error: BaseException | None = None
        self.versions: dict[int, set[bytes]] = {
            i: {info.model_version} for i, info in enumerate(self.manifest.nodes)}
        """The model versions each node may vote with (tests that update a model add theirs)."""

    def start(self) -> RunningGroup:
        ready: queue.Queue[BaseException | None] = queue.Queue()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.processes.run)
                async with Client.connect(self.manifest, self.client_key) as client:
                    await self.processes.wait_ready(client, timeout=START_TIMEOUT_S)
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                ready.put(None)
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        def thread() -> None:
            try:
                trio.run(main)
            except BaseException as error:  # reported to start() or stop()
                self.error = error
                ready.put(error)

        self._thread = threading.Thread(target=thread, name="group-processes", daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            self._thread.join()
            raise RuntimeError(f"the group did not start: {error!r}\n"
                               f"{log_tails(self.group_dir)}") from error
        return self

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Runs ``fn(*args)`` in the group's trio loop (blocking this thread)."""
        assert self._token is not None, "start() the group first"
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    async def acall(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """:meth:`call` from another trio loop (a test's), without blocking it."""
        return await trio.to_thread.run_sync(self.call, fn, *args)

    async def kill(self, node: int, sig: int) -> None:
        await self.acall(self.processes.kill, node, sig)

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.processes.nodes if n.process is not None]

    def running(self) -> list[int]:
        return [n.node_id for n in self.processes.nodes if n.running]

    def stop(self) -> dict[int, list[int]]:
        """Stops every node (SIGTERM, then SIGKILL after a grace period); their exit codes."""
        if self._thread is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "the launcher did not stop"
        if self.error is not None:
            raise self.error
        return {n.node_id: list(n.exit_codes) for n in self.processes.nodes}


@dataclass
class Received:
    node: int
    frame: bytes
    message: Any = None
    """A decoded wire message, or ``(Control, body)`` for a control frame, or None."""


@dataclass
class RawClient:
    """A client that sends whatever frames a test builds, over authenticated connections to
    every node (dropbear.net, as the real client), and records everything the nodes send."""

    manifest: Manifest
    key: _core.SigningKey
    received: list[Received] = field(default_factory=list)
    links: list[PeerLink] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        me = LocalIdentity(self.key, Role.CLIENT)
        self.links = [
            PeerLink(split_address(info.address), self.manifest.group_id, me, self._authorize,
                     self._on_frame)
            for info in self.manifest.nodes
        ]

    def _authorize(self, peer: PeerIdentity) -> bool:
        return (peer.role is Role.NODE and peer.node_id is not None
                and self.manifest.node_key(peer.node_id) == peer.public_key)

    async def _on_frame(self, peer: PeerIdentity, frame: bytes, sender: Sender) -> None:
        message: Any = None
        if control.is_control(frame):
            try:
                message = control.decode(frame)
            except control.ControlError:
                message = None
        else:
            try:
                message = decode(frame)
            except WireError:
                message = None
        assert peer.node_id is not None
        self.received.append(Received(peer.node_id, frame, message))
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links:
                nursery.start_soon(link.run)
            with trio.fail_after(10):
                while not all(link.connected for link in self.links):
                    await trio.sleep(0.02)
            task_status.started()

    def send_all(self, frame: bytes) -> None:
        for link in self.links:
            assert link.send(frame)

    def replies(self, request_id: int | None = None) -> list[Reply]:
        out = [r.message for r in self.received if isinstance(r.message, Reply)]
        if request_id is not None:
            out = [r for r in out
                   if any(c.entry.request_id == request_id for c in r.certificates)]
        return out

    def rejects(self) -> list[tuple[int, int | None, str]]:
        """``(node, request id, reason)`` of every REJECT received."""
        return [(r.node, r.message[1].get("request_id"), str(r.message[1].get("reason")))
                for r in self.received
                if isinstance(r.message, tuple) and r.message[0] is control.Control.REJECT]

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Waits until ``condition()`` holds; False after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while not condition():
                await self._changed.wait()
            return True
        return False
