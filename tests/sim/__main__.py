"""Replays simulator schedules: ``python -m tests.sim --seed N`` or ``--seeds COUNT``."""

import argparse
import sys
import time

from .invariants import InvariantViolation
from .scenario import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seed", type=int, help="run this one seed and print its outcome")
    parser.add_argument("--seeds", type=int, default=100, help="run seeds 0..COUNT-1")
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    seeds = (
        [args.seed]
        if args.seed is not None
        else range(args.first_seed, args.first_seed + args.seeds)
    )
    failed = []
    start = time.perf_counter()
    for seed in seeds:
        try:
            outcome = run(seed)
        except InvariantViolation as error:
            failed.append(seed)
            print(f"FAIL {error}")
            continue
        if args.seed is not None:
            print(outcome)
    elapsed = time.perf_counter() - start
    print(
        f"{len(seeds)} seeds, {len(failed)} failed {failed[:20]}, "
        f"{len(seeds) / elapsed:.1f} seeds/s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
