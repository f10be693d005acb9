"""The deterministic simulator: seeded schedules with faults and Byzantine roles.

A failure names its seed; rerun it alone with ``python -m tests.sim --seed N``.
"""

import pytest

from .scenario import ROLES, run


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        first = metafunc.config.getoption("--first-seed")
        count = metafunc.config.getoption("--seeds")
        seeds = range(first, first + count)
        metafunc.parametrize("seed", seeds, ids=[f"seed={s}" for s in seeds])


def test_seeded_schedule(seed):
    run(seed)


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("role", ROLES)
def test_each_byzantine_role(role, n):
    primary_role = role.endswith("primary")
    roles = {0 if primary_role else 1: role}
    if n == 7:
        roles[5] = "wrong-label"
    outcomes = [run(seed, n=n, roles=dict(roles)) for seed in range(3)]
    assert all(o.certificates > 0 for o in outcomes)
    if role in ("equivocating-primary", "twins") and roles.get(0) == role:
        assert any(o.evidence for o in outcomes), "equivocation was never caught"


def test_silent_primary_is_replaced():
    outcome = run(11, n=4, roles={0: "silent-primary"})
    assert outcome.certificates > 0


def test_twin_primaries_are_caught():
    outcomes = [run(seed, n=4, roles={0: "twins"}) for seed in range(4)]
    assert any(o.evidence for o in outcomes)


def test_same_seed_same_run():
    assert str(run(7)) == str(run(7))
