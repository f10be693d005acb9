"""Byzantine model agreement: a request's votes to the agreed label (DESIGN.md property 3).

The agreed label is the plurality label, ties broken towards the lowest label; the entry
also says whether that label reached the group's agreement threshold ``q``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dropbear.wire import EntryVote, RequestEntry, RequestHeader


def default_threshold(f: int) -> int:
    """The default agreement threshold ``q = 2f + 1``: a majority of the honest models."""
    return 2 * f + 1


@dataclass(frozen=True)
class Agreement:
    """The agreed label, how many votes it got, the threshold and whether it was reached."""

    label: int
    votes_for_label: int
    counts: tuple[tuple[int, int], ...]
    threshold: int
    reached: bool


def _counts(labels: Iterable[int]) -> dict[int, int]:
    """How many times each label occurs (a plain dict: cheaper than a Counter, and a client
    checks every certificate's entry with it)."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _plurality(counts: Mapping[int, int]) -> tuple[int, int]:
    """The most frequent label and its count, ties to the lowest label."""
    if not counts:
        raise ValueError("agreement needs at least one vote")
    label, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return label, count


def agree(labels: Iterable[int], threshold: int) -> Agreement:
    """Plurality of ``labels``, ties to the lowest label; ``reached`` iff count >= threshold."""
    counts = _counts(labels)
    label, count = _plurality(counts)
    return Agreement(
        label=label,
        votes_for_label=count,
        counts=tuple(sorted(counts.items())),
        threshold=threshold,
        reached=count >= threshold,
    )


def make_entry(request: RequestHeader, votes: Sequence[EntryVote], threshold: int) -> RequestEntry:
    """The entry (Merkle leaf) of ``request`` with ``votes`` (one per node, any order)."""
    ordered = tuple(sorted(votes, key=_by_node))
    label, count = _plurality(_counts(v.label for v in ordered))
    return RequestEntry(request.digest, request.client, request.request_id, ordered, label,
                        threshold, count >= threshold)


def _by_node(vote: EntryVote) -> int:
    return vote.node


def check_entry(entry: RequestEntry, quorum: int, threshold: int, nodes: int) -> str | None:
    """Why ``entry`` is not a well-formed agreement of a group, or None when it is.

    Checks: votes from at least ``quorum`` distinct nodes below ``nodes``, the group's
    threshold, and the label and reached flag recomputed from the votes.
    """
    votes = entry.votes
    voters = {v.node for v in votes}
    if len(voters) != len(votes) or any(not 0 <= v < nodes for v in voters):
        named = [v.node for v in votes]
        return f"entry votes name nodes {named}, not distinct nodes below {nodes}"
    if len(votes) < quorum:
        return f"entry has {len(votes)} votes, needs {quorum}"
    if entry.threshold != threshold:
        return f"entry threshold {entry.threshold}, the group's is {threshold}"
    label, count = _plurality(_counts(v.label for v in votes))  # agree() without its record
    if (entry.label, entry.reached) != (label, count >= threshold):
        return (
            f"entry says label {entry.label} reached={entry.reached}, "
            f"votes give {label} reached={count >= threshold}"
        )
    return None
