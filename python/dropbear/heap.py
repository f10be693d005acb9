"""Garbage-collector settings for long-running processes (nodes, plain servers, load
generators).

A node allocates many short-lived objects per message, and after start-up its heap holds a
few hundred thousand long-lived ones (JAX, Flax, the model, the code). With CPython's
default settings the young generation is collected every 700 allocations and every full
collection walks the whole start-up heap (80-140 ms measured on a digit-model node: a
latency spike). :func:`settle` moves what start-up left alive out of the collector's sight
(``gc.freeze``) and collects the young generation less often. Reference counting still frees
everything that is not in a cycle at once; cycles are still found, just in larger rounds,
except among frozen objects: when a node drops a model version that was frozen with the
start-up heap, :func:`resettle` collects once over everything.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 20_000
"""Allocations (minus frees) between two young-generation collections (CPython: 700)."""
OLDER_GENERATION_THRESHOLD = 10
"""Collections of the generation below between two of an older one (CPython: 10)."""


_settled = False


def settle() -> None:
    """Call once start-up is done: collects, freezes the survivors, sets the thresholds."""
    global _settled
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, OLDER_GENERATION_THRESHOLD,
                     OLDER_GENERATION_THRESHOLD)
    _settled = True


def resettle() -> None:
    """Call after a long-lived object graph was dropped (a node's previous model version):
    the frozen heap may hold its cycles, which only a full collection over an unfrozen heap
    frees. Unfreezes, collects (one pause of a full collection) and freezes again. Does
    nothing in a process that never settled."""
    if not _settled:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
