"""Sweeps offered load against the certified group and the unreplicated baseline, and plots.

    .venv/bin/python benches/plot_results.py            # sweep (about 3 minutes) and plot
    .venv/bin/python benches/plot_results.py --plot-only

Writes benches/results/sweep.jsonl (one line per target and offered rate, latencies
included), benches/results/throughput_vs_offered.png and benches/results/latency_cdf.png.

The rates go past the certified group's capacity, so the plot shows where it stops keeping
0.8 of the unreplicated servers' answers at the same offered load. Both sides use 8 client
keys and at most 512 requests in flight (MAX_OUTSTANDING), so that the load generator's
window does not shed what the group could still answer, and past saturation what would
exceed it is shed (counted) rather than queued without end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = RESULTS / "sweep.jsonl"
RATES = (50, 100, 200, 300, 450, 600, 900, 1200, 1600, 2000, 2400)
CLIENT_KEYS = 8
MAX_OUTSTANDING = 512
CDF_RATE = 100


def sweep(rates: tuple[float, ...], duration: float) -> None:
    from loadgen import GroupTarget, PlainTarget, digit_inputs

    inputs = digit_inputs()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(SWEEP, "w") as out:
        for make in (lambda: PlainTarget(clients=CLIENT_KEYS),
                     lambda: GroupTarget(nodes=4, clients=CLIENT_KEYS)):
            with make() as target:
                for rate in rates:
                    result = target.run(inputs, rate=float(rate), duration=duration,
                                        warmup=1.5, progress=False, drain=1.0,
                                        max_outstanding=MAX_OUTSTANDING)
                    print(result.line(), flush=True)
                    out.write(json.dumps({**result.summary(), "latencies": [
                        round(x, 6) for x in result.latencies]}) + "\n")
                    out.flush()


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in SWEEP.read_text().splitlines() if line.strip()]
    by_target: dict[str, list[dict]] = {}
    for row in rows:
        by_target.setdefault(row["target"], []).append(row)

    fig, (ax, share, lat) = plt.subplots(1, 3, figsize=(16, 4.2))
    top = max(r["load"] for r in rows)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="offered = answered")
    for name, points in by_target.items():
        points.sort(key=lambda r: r["load"])
        ax.plot([r["load"] for r in points], [r["throughput_rps"] for r in points],
                marker="o", label=name)
        lat.plot([r["load"] for r in points], [r["p50_ms"] for r in points], marker="o",
                 label=f"{name} p50")
        lat.plot([r["load"] for r in points], [r["p99_ms"] for r in points], marker="x",
                 linestyle="--", label=f"{name} p99")
    plain = {r["load"]: r["throughput_rps"] for r in by_target.get("plain x4", [])}
    for name, points in by_target.items():
        if name == "plain x4":
            continue
        shared = [r for r in points if plain.get(r["load"])]
        share.plot([r["load"] for r in shared],
                   [r["throughput_rps"] / plain[r["load"]] for r in shared], marker="o",
                   label=f"{name} / plain x4")
    share.axhline(0.8, color="grey", linestyle=":", label="0.8 target")
    share.set_ylim(0, 1.05)
    share.set_xlabel("offered load (requests/s, open loop)")
    share.set_ylabel("answered, certified group / unreplicated")
    share.set_title("Share of the unreplicated throughput")
    share.legend()
    share.grid(alpha=0.3)
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("answered requests/s (dropbear: certified)")
    ax.set_title("Throughput against offered load (4 digit models)")
    ax.legend()
    ax.grid(alpha=0.3)
    lat.set_xlabel("offered load (requests/s)")
    lat.set_ylabel("latency (ms)")
    lat.set_yscale("log")
    lat.set_title("Latency against offered load")
    lat.legend(fontsize=8)
    lat.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput_vs_offered.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in by_target.items():
        for row in points:
            if row["load"] == CDF_RATE and row["latencies"]:
                xs = np.sort(np.array(row["latencies"]) * 1e3)
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{name}")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Latency CDF at {CDF_RATE} requests/s offered (4 digit models)")
    ax.axvline(10, color="grey", linestyle=":", label="10 ms target")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_cdf.png", dpi=110)
    plt.close(fig)
    print(f"wrote {RESULTS / 'throughput_vs_offered.png'} and {RESULTS / 'latency_cdf.png'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    if not args.plot_only:
        sweep(RATES, args.duration)
    plot()
    return 0


if __name__ == "__main__":
    sys.exit(main())
