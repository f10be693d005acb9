"""Garbage-collector settings for long-running processes (nodes, plain servers, load
generators).

A node allocates many short-lived objects per message, and after start-up its heap holds a
few hundred thousand long-lived ones (JAX, Flax, the model, the code). With CPython's
default settings the young generation is collected every 700 allocations and every full
collection walks the whole start-up heap (80-140 ms measured on a digit-model node: a
latency spike). :func:`settle` moves what start-up left alive out of the collector's sight
(``gc.freeze``) and collects the young generation less often. Reference counting still frees
everything that is not in a cycle at once; cycles are still found, just in larger rounds.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 20_000
"""Allocations (minus frees) between two young-generation collections (CPython: 700)."""
OLDER_GENERATION_THRESHOLD = 10
"""Collections of the generation below between two of an older one (CPython: 10)."""


def settle() -> None:
    """Call once start-up is done: collects, freezes the survivors, sets the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, OLDER_GENERATION_THRESHOLD,
                     OLDER_GENERATION_THRESHOLD)
