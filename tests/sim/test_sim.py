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


def _burst(config, requests: int = 48):
    """Two clients send ``requests`` at once over a clean network; returns the world."""
    from .world import World

    world = World(seed=3, config=config)
    for i in range(requests):
        world.at(0.0005 * i, lambda c=i % 2: world.submit(c))
    world.run_until(10.0, world.all_certified)
    assert world.all_certified()
    return world


def test_under_load_batches_grow_instead_of_their_number():
    import dataclasses

    from .world import SIM_CONFIG

    config = dataclasses.replace(SIM_CONFIG, pipeline_depth=8, max_batch_entries=16,
                                 eager_depth=1, batch_fill=8, batch_wait=0.05)
    eager = dataclasses.replace(config, eager_depth=8)  # never holds a batch back
    held = [n.ledger.last_seq() for n in _burst(config).nodes]
    every = [n.ledger.last_seq() for n in _burst(eager).nodes]
    assert max(held) < min(every), (held, every)


def test_a_lone_request_is_proposed_at_once():
    import dataclasses

    from .world import SIM_CONFIG, World

    # A batch wait of a whole second would show: a lone request never waits for it.
    config = dataclasses.replace(SIM_CONFIG, eager_depth=1, batch_fill=8, batch_wait=1.0)
    world = World(seed=4, config=config)
    world.submit(0)
    world.run_until(0.5, world.all_certified)
    assert world.all_certified() and world.nodes[0].ledger.last_seq() == 1
