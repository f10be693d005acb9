"""dropbear._core.QuorumTracker: quorum once, equivocation evidence, forgetting, bounds."""

from __future__ import annotations

import random

import pytest
from dropbear import _core

A, B = b"\xaa" * 32, b"\xbb" * 32


def test_quorum_is_reported_exactly_once() -> None:
    tracker = _core.QuorumTracker(4, 3)
    assert tracker.add_votes([(0, 1, A, 0, None), (0, 1, A, 1, None)]) == []
    assert tracker.add_votes([(0, 1, A, 1, None)]) == []  # a duplicate counts once
    assert tracker.count(0, 1, A) == 2
    assert tracker.add_votes([(0, 1, A, 2, None), (0, 1, A, 3, None)]) == [(0, 1, A)]
    assert tracker.add_votes([(0, 1, A, 3, None)]) == []
    assert tracker.count(0, 1, A) == 4


def test_quorums_per_view_and_digest_are_separate() -> None:
    tracker = _core.QuorumTracker(4, 2)
    reached = tracker.add_votes(
        [(0, 5, A, 0, None), (1, 5, B, 0, None), (0, 5, A, 1, None), (1, 5, B, 2, None)]
    )
    assert reached == [(0, 5, A), (1, 5, B)]


def test_any_vote_order_reports_each_quorum_once() -> None:
    rng = random.Random(7)
    votes = [(v, s, A if s % 2 else B, n, None) for v in range(2) for s in range(50)
             for n in range(4)]
    for _ in range(20):
        rng.shuffle(votes)
        tracker = _core.QuorumTracker(4, 3)
        reached = []
        for i in range(0, len(votes), 37):
            reached += tracker.add_votes(votes[i : i + 37])
        assert sorted(reached) == sorted({(v, s, d) for v, s, d, _, _ in votes})


def test_equivocation_is_refused_and_kept_as_evidence() -> None:
    tracker = _core.QuorumTracker(4, 3)
    tracker.add_votes([(2, 9, A, 1, b"signed A"), (2, 9, B, 1, b"signed B")])
    assert tracker.count(2, 9, A) == 1
    assert tracker.count(2, 9, B) == 0
    evidence = tracker.take_evidence()
    assert evidence == [((2, 9, A, 1, b"signed A"), (2, 9, B, 1, b"signed B"))]
    assert tracker.take_evidence() == []
    # The same node may vote again in another view.
    tracker.add_votes([(3, 9, B, 1, None)])
    assert tracker.count(3, 9, B) == 1


def test_forget_up_to_drops_slots_and_ignores_late_votes() -> None:
    tracker = _core.QuorumTracker(4, 3)
    tracker.add_votes([(0, s, A, 0, None) for s in range(1, 11)])
    assert len(tracker) == 10
    assert tracker.forget_up_to(6) == 6
    assert len(tracker) == 4
    assert tracker.count(0, 3, A) == 0
    assert tracker.add_votes([(0, 3, A, n, None) for n in range(4)]) == []
    assert len(tracker) == 4
    assert tracker.add_votes([(0, 7, A, n, None) for n in range(1, 3)]) == [(0, 7, A)]


def test_limits_and_bad_input_are_clear_errors() -> None:
    tracker = _core.QuorumTracker(4, 3, max_slots=2)
    tracker.add_votes([(0, 1, A, 0, None), (0, 2, A, 0, None)])
    with pytest.raises(ValueError, match=r"quorum tracker is full: 2 \(view, seq\) slots"):
        tracker.add_votes([(0, 3, A, 0, None)])
    with pytest.raises(IndexError, match="node 4 is out of range for a group of 4 nodes"):
        tracker.add_votes([(0, 1, A, 4, None)])
    with pytest.raises(ValueError, match="digest must be 32 bytes, got 3"):
        tracker.add_votes([(0, 1, b"abc", 0, None)])
    with pytest.raises(ValueError, match="threshold 5 must be between 1 and the group size 4"):
        _core.QuorumTracker(4, 5)
    # The tracker still works after the errors.
    assert tracker.add_votes([(0, 1, A, n, None) for n in (1, 2)]) == [(0, 1, A)]
