"""Deterministic simulation of a Dropbear model group (``python -m tests.sim --seed N``)."""
