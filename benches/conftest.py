"""Shared bench plumbing: every suite measures Dropbear beside a baseline in the same run.

Mark each benchmark with ``benchmark.extra_info["role"] = "baseline"`` or ``"dropbear"``
and a ``benchmark.group``; at the end of the run this prints, per group, how many times
faster Dropbear was than the baseline (ratio of mean times for the same work).
"""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not getattr(session, "benchmarks", None):
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        role = bench.extra_info.get("role")
        if role and bench.stats is not None:
            groups.setdefault(bench.group or bench.name, {})[role] = bench.stats.mean
    lines = []
    for group, means in sorted(groups.items()):
        if "baseline" in means and "dropbear" in means:
            ratio = means["baseline"] / means["dropbear"]
            lines.append(f"  {group:<40} dropbear is {ratio:6.2f}x the baseline's speed")
    if lines:
        terminalreporter.write_sep("=", "dropbear vs baseline (same run)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def role(benchmark):
    """Tags a benchmark as the baseline or the Dropbear side of its group."""

    def tag(name: str) -> None:
        benchmark.extra_info["role"] = name

    return tag
