"""Interleaved A/B runs: a git revision's ``python/`` against the working tree's, one load
generator run each, alternating, so that the machine's drift hits both sides alike.

    .venv/bin/python benches/ab.py --old HEAD~1 --pairs 4 -- \\
        group --nodes 4 --null-model --closed 256 --duration 10 --warmup 2

Everything after ``--`` goes to ``loadgen.py`` (one load only). The old side runs from a
``git worktree`` of ``--old`` (made in a temporary directory and removed at the end) with
the working tree's built extension copied in, so a change to the Rust code is not what
this compares, unless ``--old-extension`` names the A side's own build (a copy of
``python/dropbear/_core*.so`` kept from before the change). Otherwise only ``python/``
differs between the sides: both run the working tree's ``benches/`` (the load generator,
the plain servers), so a change under ``benches/`` needs runs by hand. Prints each run,
then both sides' medians, their ratio, and the median of the pairs' own new/old ratios
(the figure to read when the machine's speed drifted during the runs).

    cp python/dropbear/_core.abi3.so /tmp/core-old.so   # before rebuilding
    .venv/bin/python benches/ab.py --old HEAD --old-extension /tmp/core-old.so -- \\
        group --nodes 4 --open 20 --duration 10 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("throughput_rps", "p50_ms", "p95_ms", "cpu_ms_per_request", "server_cpu_ms_per_request",
           "votes_per_certificate")
HIGHER_IS_BETTER = {"throughput_rps", "votes_per_certificate"}


def run_once(python_dir: Path, loadgen_args: list[str], out: Path) -> dict:
    """One load generator run with ``python_dir`` first on the path; its summary."""
    out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(python_dir))
    subprocess.run([sys.executable, str(ROOT / "benches" / "loadgen.py"), *loadgen_args,
                    "--no-progress", "--json", str(out)], check=True, env=env, cwd=ROOT)
    lines = out.read_text().splitlines()
    if len(lines) != 1:
        raise SystemExit(f"ab: give loadgen one load, not {len(lines)}")
    return json.loads(lines[0])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: ab.py --old REV [--pairs N] -- LOADGEN ARGS")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of the A side")
    parser.add_argument("--pairs", type=int, default=4, help="runs per side (default 4)")
    parser.add_argument("--old-extension", type=Path,
                        help="the A side's built dropbear._core (default: the working tree's)")
    args = parser.parse_args(argv[:split])
    loadgen_args = argv[split + 1:]
    if args.pairs < 1:
        raise SystemExit("ab: --pairs must be at least 1")
    extension = next((ROOT / "python" / "dropbear").glob("_core*.so"), None)
    if extension is None:
        raise SystemExit("ab: build the extension first (make test or make demo)")
    old_extension = args.old_extension or extension
    if not old_extension.is_file():
        raise SystemExit(f"ab: --old-extension {old_extension} is not a file")
    with tempfile.TemporaryDirectory(prefix="dropbear-ab-") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), args.old],
                       check=True, cwd=ROOT)
        try:
            shutil.copy2(old_extension, old_tree / "python" / "dropbear" / extension.name)
            results: dict[str, list[dict]] = {"old": [], "new": []}
            sides = {"old": old_tree / "python", "new": ROOT / "python"}
            for pair in range(args.pairs):
                for side, python_dir in sides.items():
                    summary = run_once(python_dir, loadgen_args, Path(tmp) / "run.json")
                    results[side].append(summary)
                    print(f"{pair + 1} {side}  " + "  ".join(
                        f"{k} {summary[k]:.2f}" for k in FIGURES
                        if summary.get(k) is not None), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)],
                           check=False, cwd=ROOT)
    for key in FIGURES:
        if any(r.get(key) is None for r in results["old"] + results["new"]):
            continue  # (votes: a plain baseline has none)
        old = statistics.median(r[key] for r in results["old"])
        new = statistics.median(r[key] for r in results["new"])
        higher_is_better = key in HIGHER_IS_BETTER
        pairs = list(zip(results["old"], results["new"], strict=True))
        better = sum((n[key] > o[key]) if higher_is_better else (n[key] < o[key])
                     for o, n in pairs)
        # Each pair's own ratio: the two runs of a pair are a minute apart, so a drift of the
        # machine's speed over the whole A/B moves it less than the ratio of the medians.
        paired = statistics.median(n[key] / o[key] for o, n in pairs if o[key])
        print(f"median {key}: old {old:.2f}  new {new:.2f}  new/old {new / old:.3f}  "
              f"pairs' median ratio {paired:.3f}  (new better in {better} of {args.pairs} "
              "pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
