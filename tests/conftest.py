"""Shared pytest options: ``--seeds N`` sets how many simulator schedules to run."""


def pytest_addoption(parser):
    parser.addoption(
        "--seeds",
        type=int,
        default=200,
        help="number of seeded simulator schedules (tests/sim); raise it for soak runs",
    )
    parser.addoption(
        "--first-seed", type=int, default=0, help="first simulator seed (with --seeds)"
    )
