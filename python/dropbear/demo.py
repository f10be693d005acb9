"""`make demo`: a 4-node model group on loopback answering the digits test set.

Each node is its own OS process hosting a different trained digit model. The client
streams the 450 test images, gets a certificate for each, and verifies every one with the
group manifest alone. Then node 3 turns Byzantine (it flips every label it votes) and the
same images are streamed again: the certified results stay accurate while that node's
own answers are wrong.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio
from tqdm import tqdm

from dropbear import certificate
from dropbear.client import Client, Result
from dropbear.deploy import MANIFEST_FILE, init_group, key_path, read_key
from dropbear.inference.train import load_digits_split
from dropbear.launcher import GroupProcesses, set_fault
from dropbear.manifest import Manifest

GROUP_DIR = Path("run/demo-group")
BYZANTINE_NODE = 3
DEMO_IN_FLIGHT = 64
"""Requests the demo keeps in flight (a client may have MAX_INFLIGHT_PER_CLIENT, 256): enough
to fill batches, few enough that the slowest model (the ResNet) keeps up on two cores and
votes in every entry (with 256, its votes reached 337 of 450 entries in one run)."""


@dataclass
class Phase:
    """The outcome of streaming the test set once."""

    name: str
    results: list[tuple[int, Result]] = field(default_factory=list)
    verified: int = 0
    seconds: float = 0.0

    def node_accuracy(self, node: int) -> tuple[float, int]:
        votes = [(r.votes[node], truth) for truth, r in self.results if node in r.votes]
        return (float(np.mean([v == t for v, t in votes])) if votes else float("nan"), len(votes))

    def certified_accuracy(self) -> float:
        return float(np.mean([r.label == truth for truth, r in self.results]))

    def reached_share(self) -> float:
        return float(np.mean([r.reached for _, r in self.results]))

    def reached_accuracy(self) -> float:
        hits = [r.label == truth for truth, r in self.results if r.reached]
        return float(np.mean(hits)) if hits else float("nan")


async def stream(client: Client, manifest: Manifest, images: np.ndarray, labels: np.ndarray,
                 name: str) -> Phase:
    """Sends every image (DEMO_IN_FLIGHT at once) and verifies each certificate against the
    manifest."""
    phase = Phase(name)
    limiter = trio.CapacityLimiter(DEMO_IN_FLIGHT)
    start = time.perf_counter()
    with tqdm(total=len(images), desc=name, unit="req", leave=True) as bar:

        async def one(i: int) -> None:
            async with limiter:
                result = await client.infer(images[i])
            certificate.verify(result.certificate, manifest)  # raises if it does not verify
            phase.verified += 1
            phase.results.append((int(labels[i]), result))
            bar.update(1)

        async with trio.open_nursery() as nursery:
            for i in range(len(images)):
                nursery.start_soon(one, i)
    phase.seconds = time.perf_counter() - start
    return phase


def median_latency(phase: Phase) -> float:
    return statistics.median(r.latency_s for _, r in phase.results)


def pct(x: float) -> str:
    return "   n/a" if x != x else f"{100 * x:5.1f}%"


def report(manifest: Manifest, phases: list[Phase]) -> None:
    width = 26
    print()
    print(f"{'':<40}" + "".join(f"{p.name:>{width}}" for p in phases))
    for node, info in enumerate(manifest.nodes):
        row = f"node {node} {info.model:<16} model accuracy"
        cells = []
        for p in phases:
            acc, n = p.node_accuracy(node)
            mark = " (Byzantine)" if p is phases[-1] and node == BYZANTINE_NODE else ""
            cells.append(f"{pct(acc)} of {n}{mark}")
        print(f"{row:<40}" + "".join(f"{c:>{width}}" for c in cells))
    rows = [
        ("certified plurality accuracy", lambda p: pct(p.certified_accuracy())),
        (f"reached threshold q={manifest.threshold}", lambda p: pct(p.reached_share())),
        ("accuracy where q was reached", lambda p: pct(p.reached_accuracy())),
        ("certificates verified", lambda p: f"{p.verified}/{len(p.results)}"),
        ("certified requests/s", lambda p: f"{len(p.results) / p.seconds:.0f}"),
        ("median latency", lambda p: f"{1e3 * median_latency(p):.0f} ms"),
    ]
    for label, cell in rows:
        print(f"{label:<40}" + "".join(f"{cell(p):>{width}}" for p in phases))
    print()


async def run(group_dir: Path) -> list[Phase]:
    manifest = Manifest.load(group_dir / MANIFEST_FILE)
    split = load_digits_split()
    images, labels = split.x_test.astype(np.float32), split.y_test
    group = GroupProcesses(group_dir, extra_args=["--fault-injection", "--log-level", "INFO"])
    client = Client(manifest, read_key(key_path(group_dir, "client")))
    phases = []
    async with trio.open_nursery() as nursery:
        client.start(nursery)
        t = time.perf_counter()
        await nursery.start(group.run)
        print(f"Started {manifest.n} node processes (logs in {group_dir / 'logs'}); "
              "loading and compiling their models ...")
        await group.wait_ready(client)
        print(f"Every node serves ({time.perf_counter() - t:.0f} s).\n")
        phases.append(await stream(client, manifest, images, labels, "honest group"))
        message = await set_fault(client, BYZANTINE_NODE, "flip-labels")
        print(f"\nFault injected: {message} (every label it votes is shifted by one).")
        phases.append(await stream(client, manifest, images, labels,
                                   f"node {BYZANTINE_NODE} Byzantine"))
        nursery.cancel_scope.cancel()
    codes = {n.node_id: n.exit_codes for n in group.nodes}
    if any(code != [0] for code in codes.values()):
        raise SystemExit(f"a node did not stop cleanly: exit codes {codes}")
    print(f"\nEvery node stopped cleanly (exit codes {codes}).")
    report(manifest, phases)
    return phases


def main() -> None:
    start = time.perf_counter()
    shutil.rmtree(GROUP_DIR, ignore_errors=True)
    manifest = init_group(GROUP_DIR, base_port=0, name="dropbear-demo")
    print(f"Dropbear demo: group {manifest.group_id.hex()[:16]} of n={manifest.n} nodes "
          f"(f={manifest.f}, threshold q={manifest.threshold}) in {GROUP_DIR}")
    for i, info in enumerate(manifest.nodes):
        print(f"  node {i} on {info.address}: {info.model} (version "
              f"{info.model_version.hex()[:12]})")
    phases = trio.run(run, GROUP_DIR)
    honest, byzantine = phases
    ok = (
        byzantine.node_accuracy(BYZANTINE_NODE)[0] < 0.2
        and byzantine.certified_accuracy() >= honest.certified_accuracy() - 0.02
        and all(p.verified == len(p.results) for p in phases)
    )
    print(f"Certified accuracy with an honest group {pct(honest.certified_accuracy())}, with "
          f"node {BYZANTINE_NODE} Byzantine {pct(byzantine.certified_accuracy())}; node "
          f"{BYZANTINE_NODE}'s own answers {pct(byzantine.node_accuracy(BYZANTINE_NODE)[0])}.")
    print(f"Demo finished in {time.perf_counter() - start:.0f} s.")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
