"""Load generator: certified requests/s, latency percentiles and CPU per request.

Drives a running Dropbear group (or the unreplicated baseline of plain_server.py) with
either a **closed loop** (N requests outstanding at all times) or an **open loop** (a fixed
offered rate, whatever the answers do), for a fixed duration or request count, and reports

- requests/s answered within the measuring window (for a group: certified — every answer
  is a certificate the client verified against the manifest),
- latency p50/p95/p99 (open loop: from the request's scheduled time, so queueing in the
  client counts),
- CPU seconds per request: user + system time of every server process plus this process
  (the client), over the same window.

Used by bench_group.py, and from the command line::

    python benches/loadgen.py group --nodes 4 --null-model --closed 256 --duration 10
    python benches/loadgen.py group --nodes 4 --open 200 --duration 10
    python benches/loadgen.py plain --open 200 --duration 10
    python benches/loadgen.py attach --dir dropbear-group --closed 64 --duration 10

``group`` and ``plain`` start the processes themselves (and stop them after); ``attach``
drives a group already running (``dropbear up``), finding its node processes by their
command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dropbear import _core, heap  # noqa: E402
from dropbear.client import Client, ClientError  # noqa: E402
from dropbear.deploy import MANIFEST_FILE, free_ports, init_group, key_path, read_key  # noqa: E402
from dropbear.launcher import GroupProcesses  # noqa: E402
from dropbear.limits import MAX_INFLIGHT_PER_CLIENT  # noqa: E402
from dropbear.manifest import Manifest  # noqa: E402
from plain_server import PlainClient  # noqa: E402

Infer = Callable[[np.ndarray], Awaitable[Any]]

DIGIT_MODELS = ("digits-cnn", "digits-mlp", "digits-resnet", "digits-vit")
NODE_LOG_LEVEL = "WARNING"


def digit_inputs() -> np.ndarray:
    """The 450 digits test images, (n, 8, 8, 1) float32: the requests every run sends."""
    from dropbear.inference.train import load_digits_split

    return load_digits_split().x_test.astype(np.float32)


# --- measuring --------------------------------------------------------------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (and their threads) so far."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


@dataclass
class LoadResult:
    """One load run; latencies in seconds, one per request answered in the window."""

    target: str
    mode: str
    """"closed" or "open"."""
    load: float
    """Outstanding requests (closed) or offered requests/s (open)."""
    window_s: float
    completed: int
    errors: int = 0
    shed: int = 0
    """Open loop: sends skipped because max_outstanding requests were already in flight."""
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    votes: list[int] = field(default_factory=list, repr=False)
    """For a group: how many nodes' votes each certified entry carries (2f+1 to n; fewer
    than n when a node's vote came after the vote wait)."""
    keys: int = 0
    """Client keys the load used."""

    @property
    def throughput(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else math.nan

    @property
    def cpu_per_request(self) -> float:
        return (self.server_cpu_s + self.client_cpu_s) / max(1, self.completed)

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target, "mode": self.mode, "load": self.load,
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(1e3 * self.percentile(50), 2),
            "p95_ms": round(1e3 * self.percentile(95), 2),
            "p99_ms": round(1e3 * self.percentile(99), 2),
            "cpu_ms_per_request": round(1e3 * self.cpu_per_request, 3),
            "server_cpu_ms_per_request": round(1e3 * self.server_cpu_s / max(1, self.completed),
                                               3),
            "completed": self.completed, "errors": self.errors, "shed": self.shed,
            "window_s": round(self.window_s, 3), "client_keys": self.keys,
            "votes_per_certificate": (round(float(np.mean(self.votes)), 3) if self.votes
                                      else None),
        }

    def line(self) -> str:
        s = self.summary()
        return (f"{self.target:<28} {self.mode:>6} {self.load:>7g}  "
                f"{s['throughput_rps']:>8.1f} req/s  p50 {s['p50_ms']:>7.1f} ms  "
                f"p95 {s['p95_ms']:>7.1f} ms  p99 {s['p99_ms']:>7.1f} ms  "
                f"cpu {s['cpu_ms_per_request']:>6.2f} ms/req  errors {self.errors} "
                f"shed {self.shed}  keys {self.keys}"
                + (f"  votes {s['votes_per_certificate']:.2f}" if self.votes else ""))


def keys_for(outstanding: int, per_key: int = MAX_INFLIGHT_PER_CLIENT) -> int:
    """Client keys a closed loop of ``outstanding`` requests uses: ``per_key`` in flight
    each (at most MAX_INFLIGHT_PER_CLIENT, 256, the most a node accepts), at least one."""
    if not 0 < per_key <= MAX_INFLIGHT_PER_CLIENT:
        raise ValueError(f"{per_key} requests in flight per key: give 1.."
                         f"{MAX_INFLIGHT_PER_CLIENT} (MAX_INFLIGHT_PER_CLIENT)")
    return max(1, -(-outstanding // per_key))


async def drive(
    infers: Sequence[Infer],
    inputs: np.ndarray,
    *,
    target: str = "target",
    closed: int | None = None,
    rate: float | None = None,
    duration: float = 10.0,
    requests: int | None = None,
    warmup: float = 1.0,
    max_outstanding: int | None = None,
    per_key: int = MAX_INFLIGHT_PER_CLIENT,
    server_pids: Sequence[int] = (),
    progress: bool = True,
    drain: float = 2.0,
) -> LoadResult:
    """Runs one load and measures it.

    ``closed=N``: N workers, each sending its next request when the last was answered.
    ``rate=R``: requests are started R per second on schedule (at most ``max_outstanding``
    in flight, by default ``per_key`` per key: 256 since the twentieth round, 64 before;
    past it a send is shed and counted). ``infers`` are the clients, used round
    robin: a closed loop of N uses the first ``ceil(N / per_key)`` of them (give at least
    that many; ``per_key`` defaults to MAX_INFLIGHT_PER_CLIENT, 256, the most a Dropbear
    client may have in flight) and an open loop all. Fewer keys than that would cap the load;
    more spread each batch's certificates over more REPLYs, one per client and batch (12 keys
    of 64 instead of 3 of 256 at N = 768 cost 8% of the throughput). After ``warmup``
    seconds the measuring window opens; it closes after ``duration`` seconds or once
    ``requests`` requests were answered in it.
    """
    if (closed is None) == (rate is None):
        raise ValueError("give exactly one of closed= (outstanding) or rate= (offered req/s)")
    if closed is not None:
        infers = infers[:keys_for(closed, per_key)]
    if max_outstanding is None:
        max_outstanding = per_key * len(infers)
    mode, load = ("closed", float(closed)) if closed is not None else ("open", float(rate))
    result = LoadResult(target, mode, load, 0.0, 0, keys=len(infers))
    t0 = trio.current_time()
    window_open = t0 + warmup
    window_close = window_open + duration
    finished = trio.Event()
    measured = trio.Event()
    me = os.getpid()
    cpu_start: dict[str, float] = {}
    outstanding = 0
    counter = 0

    async def one(scheduled: float) -> None:
        nonlocal outstanding, counter
        i = counter
        counter += 1
        outstanding += 1
        try:
            answer = await infers[i % len(infers)](inputs[i % len(inputs)])
        except ClientError:
            if scheduled >= window_open:
                result.errors += 1
            return
        finally:
            outstanding -= 1
        now = trio.current_time()
        if window_open <= scheduled and now <= window_close and not finished.is_set():
            result.completed += 1
            result.latencies.append(now - scheduled)
            if (votes := getattr(answer, "votes", None)) is not None:
                result.votes.append(len(votes))
            if requests is not None and result.completed >= requests:
                finished.set()

    async def worker() -> None:
        while not finished.is_set():
            await one(trio.current_time())

    async def scheduler(nursery: trio.Nursery) -> None:
        assert rate is not None
        sent = 0
        while not finished.is_set():
            now = trio.current_time()
            due = int((now - t0) * rate) + 1 - sent
            for k in range(due):
                if outstanding >= max_outstanding:
                    if now >= window_open:
                        result.shed += 1
                else:
                    nursery.start_soon(one, t0 + (sent + k) / rate)
            sent += max(0, due)
            await trio.sleep_until(t0 + sent / rate)

    async def clock(bar: tqdm | None) -> None:
        nonlocal window_close
        await trio.sleep_until(window_open)
        cpu_start["server"] = cpu_seconds(server_pids)
        cpu_start["client"] = cpu_seconds([me])
        shown = 0
        with trio.move_on_at(window_close):
            while not finished.is_set():
                with trio.move_on_after(0.25):
                    await finished.wait()
                if bar is not None:
                    bar.update(result.completed - shown)
                    shown = result.completed
        window_close = min(window_close, trio.current_time())
        result.server_cpu_s = cpu_seconds(server_pids) - cpu_start["server"]
        result.client_cpu_s = cpu_seconds([me]) - cpu_start["client"]
        if bar is not None:
            bar.update(result.completed - shown)
        finished.set()
        measured.set()

    total = requests if requests is not None else None
    bar = (tqdm(total=total, desc=f"{target} {mode} {load:g}", unit="req", leave=False,
                mininterval=0.5) if progress else None)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clock, bar)
            if closed is not None:
                for _ in range(closed):
                    nursery.start_soon(worker)
            else:
                nursery.start_soon(scheduler, nursery)
            await measured.wait()
            # Requests still in flight are not waited for past a short drain (their answers
            # would not count anyway; the drain only lets the servers settle).
            with trio.move_on_after(drain):
                while outstanding:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        if bar is not None:
            bar.close()
    result.window_s = window_close - window_open
    return result


# --- targets: a Dropbear group, the plain servers ---------------------------------------------


class Target:
    """Processes to load, run in a trio loop of their own (a background thread), so that one
    started group serves several measurements (pytest fixtures, the CLI's sweeps)."""

    name = "target"

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self.infers: list[Infer] = []

    async def _serve(self, ready: Callable[[], None]) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def start(self) -> Target:
        box: queue.Queue[BaseException | None] = queue.Queue()

        async def main() -> None:
            self._stop = trio.Event()

            def ready() -> None:
                self._token = trio.lowlevel.current_trio_token()
                box.put(None)

            await self._serve(ready)

        def thread() -> None:
            try:
                trio.run(main)
            except BaseException as error:  # surfaced to start()
                box.put(error)

        self._thread = threading.Thread(target=thread, name=self.name, daemon=True)
        self._thread.start()
        error = box.get()
        if error is not None:
            raise RuntimeError(f"{self.name} did not start: {error!r}") from error
        heap.settle()  # the same collector settings as the servers measured
        return self

    def run(self, inputs: np.ndarray, **kwargs: Any) -> LoadResult:
        """:func:`drive` against this target (blocking)."""
        assert self._token is not None, "start() first"
        return trio.from_thread.run(
            lambda: drive(self.infers, inputs, target=self.name, server_pids=self.pids(),
                          **kwargs),
            trio_token=self._token)

    def close(self) -> None:
        if self._stop is not None and self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._stop = None
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> Target:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class GroupTarget(Target):
    """A Dropbear group of ``nodes`` processes on loopback, and ``clients`` client keys."""

    def __init__(self, group_dir: Path | None = None, *, nodes: int = 4, null_model: bool = False,
                 site_delay: float = 0.0, clients: int = 4, node_args: Sequence[str] = (),
                 models_dir: Path = ROOT / "models", name: str | None = None) -> None:
        super().__init__()
        self._tmp = None
        if group_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="dropbear-bench-")
            group_dir = Path(self._tmp)
        self.group_dir = Path(group_dir)
        f = (nodes - 1) // 3
        init_group(self.group_dir, f=f, nodes=nodes, base_port=0, models_dir=models_dir,
                   name="dropbear-bench")
        self.manifest = Manifest.load(self.group_dir / MANIFEST_FILE)
        args = ["--log-level", NODE_LOG_LEVEL, *node_args]
        if null_model:
            args.append("--null-model")
        if site_delay:
            args += ["--site-delay", str(site_delay)]
        self.processes = GroupProcesses(self.group_dir, models_dir=models_dir, extra_args=args)
        self.clients = clients
        self.name = name or (f"dropbear n={nodes}" + (" null" if null_model else "")
                             + (f" sites {1e3 * site_delay:g}ms" if site_delay else ""))

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.processes.nodes if n.process is not None]

    async def _serve(self, ready: Callable[[], None]) -> None:
        assert self._stop is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.processes.run)
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(
                    Client.connect(self.manifest, _core.SigningKey.generate()))
                    for _ in range(self.clients)]
                await self.processes.wait_ready(clients[0])
                self.infers = [c.infer for c in clients]
                ready()
                await self._stop.wait()
            nursery.cancel_scope.cancel()

    def close(self) -> None:
        super().close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class AttachedGroup(Target):
    """A group already running (``dropbear up``): clients only; nodes found by command line."""

    def __init__(self, group_dir: Path, clients: int = 4) -> None:
        super().__init__()
        self.group_dir = Path(group_dir)
        self.manifest = Manifest.load(self.group_dir / MANIFEST_FILE)
        self.clients = clients
        self.name = f"dropbear n={self.manifest.n} (attached)"
        self._client_key = read_key(key_path(self.group_dir, "client"))

    def pids(self) -> list[int]:
        manifest = str(self.group_dir / MANIFEST_FILE)
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if "node" in cmd and any(arg.endswith(manifest) for arg in cmd):
                found.append(p.pid)
        return found

    async def _serve(self, ready: Callable[[], None]) -> None:
        assert self._stop is not None
        async with contextlib.AsyncExitStack() as stack:
            keys = [self._client_key] + [_core.SigningKey.generate()
                                         for _ in range(self.clients - 1)]
            clients = [await stack.enter_async_context(Client.connect(self.manifest, k))
                       for k in keys]
            with trio.fail_after(30):
                while not all(link.connected for c in clients for link in c.links):
                    await trio.sleep(0.05)
            self.infers = [c.infer for c in clients]
            ready()
            await self._stop.wait()


class PlainTarget(Target):
    """The unreplicated baseline: one plain_server.py process per model, the same batching
    as the nodes; every request goes to every server (the group's inference work)."""

    def __init__(self, models: Sequence[str] = DIGIT_MODELS, *, answers: int | None = None,
                 clients: int = 1, null_model: bool = False, server_args: Sequence[str] = (),
                 models_dir: Path = ROOT / "models", name: str | None = None) -> None:
        super().__init__()
        self.models = list(models)
        if null_model:
            server_args = [*server_args, "--null-model"]
        self.ports = free_ports(len(self.models))
        self.answers = answers
        self.clients = clients
        self.server_args = list(server_args)
        self.models_dir = models_dir
        self.name = name or f"plain x{len(self.models)}" + (" null" if null_model else "")
        self._processes: list[trio.Process] = []

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    async def _serve(self, ready: Callable[[], None]) -> None:
        assert self._stop is not None
        script = str(Path(__file__).resolve().parent / "plain_server.py")
        async with trio.open_nursery() as nursery:
            for model, port in zip(self.models, self.ports, strict=True):
                process = await trio.lowlevel.open_process(
                    [sys.executable, script, "--model", model, "--port", str(port),
                     "--models-dir", str(self.models_dir), *self.server_args],
                    stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
                self._processes.append(process)
            try:
                addresses = [("127.0.0.1", port) for port in self.ports]
                async with contextlib.AsyncExitStack() as stack:
                    clients = []
                    for _ in range(self.clients):
                        clients.append(await stack.enter_async_context(
                            PlainClient.connect(addresses, self.answers, timeout=180)))
                    self.infers = [c.infer for c in clients]
                    ready()
                    await self._stop.wait()
            finally:
                for process in self._processes:
                    process.terminate()
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    for process in self._processes:
                        await process.wait()
                nursery.cancel_scope.cancel()


# --- command line -----------------------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Dropbear load generator",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("target", choices=["group", "plain", "attach"])
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--closed", type=int, nargs="+", metavar="N",
                      help="closed loop: N requests outstanding (several: a sweep)")
    load.add_argument("--open", type=float, nargs="+", metavar="RATE",
                      help="open loop: offered requests/s (several: a sweep)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per load")
    parser.add_argument("--requests", type=int, help="stop a load after this many answers")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--null-model", action="store_true")
    parser.add_argument("--site-delay", type=float, default=0.0,
                        help="seconds between nodes at different sites (node K at site K mod 3)")
    parser.add_argument("--clients", type=int,
                        help="client keys (default: enough for the largest closed loop at "
                             "--per-key each, at least 4)")
    parser.add_argument("--per-key", type=int, default=MAX_INFLIGHT_PER_CLIENT,
                        help="closed loops: requests in flight per client key (default and "
                             "most: MAX_INFLIGHT_PER_CLIENT, 256); fewer means more keys")
    parser.add_argument("--answers", type=int, help="plain: answers a request waits for "
                                                    "(default: every server)")
    parser.add_argument("--dir", type=Path, help="attach: the running group's directory")
    parser.add_argument("--node-args", default="", help="extra `dropbear node` flags")
    parser.add_argument("--json", type=Path, help="append each result as a JSON line here")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    if args.clients is None:
        args.clients = max(4, keys_for(max(args.closed or [0]), args.per_key))
    if args.target == "group":
        target: Target = GroupTarget(nodes=args.nodes, null_model=args.null_model,
                                     site_delay=args.site_delay, clients=args.clients,
                                     node_args=args.node_args.split())
    elif args.target == "plain":
        models = [DIGIT_MODELS[i % len(DIGIT_MODELS)] for i in range(args.nodes)]
        target = PlainTarget(models, answers=args.answers, null_model=args.null_model)
    else:
        if args.dir is None:
            raise SystemExit("attach needs --dir GROUP_DIR")
        target = AttachedGroup(args.dir, clients=args.clients)
    inputs = digit_inputs()
    loads = [("closed", n) for n in args.closed or []] + [("open", r) for r in args.open or []]
    started = time.perf_counter()
    with target:
        print(f"{target.name}: ready in {time.perf_counter() - started:.0f} s; server pids "
              f"{target.pids()}")
        for mode, value in loads:
            kwargs = ({"closed": int(value), "per_key": args.per_key} if mode == "closed"
                      else {"rate": value})
            result = target.run(inputs, duration=args.duration, requests=args.requests,
                                warmup=args.warmup, progress=not args.no_progress, **kwargs)
            print(result.line(), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**result.summary(),
                                        "latencies": [round(x, 6) for x in result.latencies]})
                            + "\n")
    return 0


__all__ = ["AttachedGroup", "GroupTarget", "LoadResult", "PlainTarget", "Target",
           "cpu_seconds", "digit_inputs", "drive"]


if __name__ == "__main__":
    sys.exit(main())
