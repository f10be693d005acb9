"""Certified throughput and latency beside unreplicated serving, measured in the same run.

Each benchmark group holds a "baseline" and a "dropbear" side (the ``role`` fixture); the
timed work is the same fixed number of answered requests on both, so the summary's
"dropbear is Nx the baseline's speed" is the ratio of throughputs (for the latency group,
both sides send the same requests at the same low rate, so time is equal by construction
and extra_info's p50s are the figures to read). Every side's throughput, p50/p95/p99 and
CPU per request are in ``extra_info`` (``--benchmark-json`` keeps them).

    .venv/bin/python -m pytest benches/bench_group.py --benchmark-enable -q

Processes are started once per target (outside the timed part) and each load is bounded
by a request count and a duration cap; the whole file runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (  # noqa: E402
    DIGIT_MODELS,
    GroupTarget,
    PlainTarget,
    Target,
    digit_inputs,
    keys_for,
)

WARMUP_S = 1.5
CAP_S = 20.0
"""No timed load runs longer than this, whatever its request count."""


@pytest.fixture(scope="module")
def inputs():
    return digit_inputs()


_targets: dict[str, Target] = {}


@pytest.fixture(scope="module")
def targets():
    """Started targets by key, shared by this module's benchmarks and stopped at its end."""
    yield _get
    for target in _targets.values():
        target.close()
    _targets.clear()


def _get(key: str) -> Target:
    if key not in _targets:
        kind, _, rest = key.partition(":")
        options = dict(part.split("=") for part in rest.split(",") if part)
        n = int(options.get("n", 4))
        null = options.get("null") == "1"
        if kind == "plain":
            models = [DIGIT_MODELS[i % len(DIGIT_MODELS)] for i in range(n)]
            target: Target = PlainTarget(models, null_model=null)
        else:
            target = GroupTarget(nodes=n, null_model=null,
                                 site_delay=float(options.get("delay", 0)),
                                 clients=int(options.get("clients", 4)))
        _targets[key] = target.start()
    return _targets[key]


def measure(benchmark, role, side, target: Target, inputs, **load):
    """Warms ``target`` up (untimed), then times one bounded load and records its figures."""
    role(side)
    target.run(inputs, duration=WARMUP_S, warmup=0.0, progress=False, drain=1.0, **load)
    result = benchmark.pedantic(
        lambda: target.run(inputs, warmup=0.0, duration=CAP_S, progress=False, drain=0.0,
                           **load),
        rounds=1, iterations=1)
    summary = result.summary()
    benchmark.extra_info.update(summary)
    print(f"\n  {side:<8} {result.line()}")
    return result


# --- ordering cost: null model, n=4 ---------------------------------------------------------


ORDERING_LOADS = (256, 512, 768)
"""Requests outstanding in the ordering-cost sweep. A closed loop of N keeps N requests in
flight; how many the group can batch per PRE-PREPARE, and so how many protocol messages,
signatures and fsyncs each request shares, grows with N until the CPU is saturated (256:
about 81 requests a batch, 512: about 145, in the nineteenth round). A load of N uses
ceil(N / 256) client keys (256 in flight each, MAX_INFLIGHT_PER_CLIENT; loadgen.drive)."""

MANY_KEYS_PER_KEY = 64
"""In flight per key in the many-clients run: the largest load from 12 keys instead of 3
(64 was MAX_INFLIGHT_PER_CLIENT until the twentieth round)."""

NULL_GROUP = f"group:n=4,null=1,clients={keys_for(max(ORDERING_LOADS), MANY_KEYS_PER_KEY)}"


@pytest.mark.parametrize("outstanding", ORDERING_LOADS)
@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_ordering_cost_null_model(benchmark, role, targets, inputs, side, outstanding):
    """Certified req/s of a null-model group of 4 against 4 plain null servers, each at
    the same closed-loop loads. Issue target: 5,000 certified req/s (the sweep's best)."""
    benchmark.group = f"ordering cost (null model, n=4, closed {outstanding})"
    target = targets("plain:n=4,null=1" if side == "baseline" else NULL_GROUP)
    measure(benchmark, role, side, target, inputs, closed=outstanding, requests=20_000)


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_ordering_cost_many_clients(benchmark, role, targets, inputs, side):
    """The sweep's largest load from four times as many client keys (12 of 64 in flight
    each): every key costs the group a signed REPLY per batch and node, and its client a
    check of each batch's commit signatures. The baseline is the plain null servers at the
    same load again (their client is one connection per server, whatever the keys)."""
    outstanding = max(ORDERING_LOADS)
    benchmark.group = (f"ordering cost (null model, n=4, closed {outstanding}, "
                       f"{keys_for(outstanding, MANY_KEYS_PER_KEY)} client keys)")
    target = targets("plain:n=4,null=1" if side == "baseline" else NULL_GROUP)
    measure(benchmark, role, side, target, inputs, closed=outstanding,
            per_key=MANY_KEYS_PER_KEY, requests=20_000)


# --- overhead against unreplicated serving: digit models ------------------------------------


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_overhead_saturated(benchmark, role, targets, inputs, side):
    """Four digit models, the same batching: plain servers (every request to all four)
    against the certified group, both saturated by a closed loop of 256."""
    benchmark.group = "overhead vs unreplicated (digits, closed 256)"
    target = targets("plain:n=4" if side == "baseline" else "group:n=4")
    measure(benchmark, role, side, target, inputs, closed=256, requests=3000)


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_overhead_offered_load(benchmark, role, targets, inputs, side):
    """The same at a fixed offered load (open loop, 200 req/s): both must keep up."""
    benchmark.group = "overhead vs unreplicated (digits, open 200/s)"
    target = targets("plain:n=4" if side == "baseline" else "group:n=4")
    measure(benchmark, role, side, target, inputs, rate=200.0, requests=1000)


# --- latency at low load -----------------------------------------------------------------------


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_latency_low_load(benchmark, role, targets, inputs, side):
    """p50 at 20 req/s offered (open loop) for the digit models. Issue target: p50 <= 10 ms."""
    benchmark.group = "latency at low load (digits, open 20/s)"
    target = targets("plain:n=4" if side == "baseline" else "group:n=4")
    measure(benchmark, role, side, target, inputs, rate=20.0, requests=100)


# --- scaling: n = 4, 7, 10 with the null model ------------------------------------------------


@pytest.mark.parametrize("n", [7, 10])
@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_scaling_null_model(benchmark, role, targets, inputs, side, n):
    """Certified req/s of null-model groups of 7 and 10 (baseline: the group of 4, in the
    same run; the ordering-cost group holds n=4 itself)."""
    benchmark.group = f"scaling null model: n={n} against n=4"
    target = targets(NULL_GROUP if side == "baseline" else f"group:n={n},null=1")
    measure(benchmark, role, side, target, inputs, closed=256, requests=1000)
    if side == "dropbear":
        _targets.pop(f"group:n={n},null=1").close()  # 10 processes on 2 cores: free them


# --- three sites: 20 ms one way between sites (40 ms round trip) -------------------------------


@pytest.mark.parametrize("side", ["baseline", "dropbear"])
def test_three_sites(benchmark, role, targets, inputs, side):
    """A null-model group of 4 over 3 "sites" (node K at site K mod 3, frames between sites
    held 20 ms) against the same group on plain loopback: throughput must hold.

    Both sides keep 1,024 requests outstanding (4 client keys): a closed loop caps
    throughput at outstanding / latency, and the sites' round trips add latency. With 512
    outstanding the sites group answered in about 0.2 s, so its window capped it near
    2,500 req/s while loopback was CPU-bound; that measured the load generator's window, not
    whether the pipeline hides the distance (benches/HISTORY.md, "Fourteenth round").
    """
    benchmark.group = "three sites (null model, n=4, 20 ms between sites)"
    key = "group:n=4,null=1,clients=4" + ("" if side == "baseline" else ",delay=0.02")
    measure(benchmark, role, side, targets(key), inputs, closed=1024, requests=5000)
    _targets.pop(key).close()  # 4 more processes on 2 cores: free them
