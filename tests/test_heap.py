"""heap.settle: the collector settings of long-running processes (in a child process, since
they are process-wide)."""

import json
import subprocess
import sys

from dropbear import heap

SCRIPT = """
import gc, json, weakref
from dropbear import heap

class Node:
    pass

before = gc.get_freeze_count()
kept = [Node() for _ in range(1000)]
heap.settle()
frozen = gc.get_freeze_count()
cycle = Node()
cycle.self = cycle  # garbage only the collector can free
alive = weakref.ref(cycle)
del cycle
gc.collect()
print(json.dumps({"threshold": gc.get_threshold(), "before": before, "frozen": frozen,
                  "cycle_freed": alive() is None}))
"""


def test_settle_freezes_the_start_up_heap_and_cycles_are_still_collected():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    found = json.loads(out)
    assert found["threshold"] == [heap.YOUNG_GENERATION_THRESHOLD,
                                  heap.OLDER_GENERATION_THRESHOLD,
                                  heap.OLDER_GENERATION_THRESHOLD]
    assert found["before"] == 0 and found["frozen"] >= 1000
    assert found["cycle_freed"]


RESETTLE = """
import gc, json, weakref
from dropbear import heap

class Model:
    pass

heap.resettle()  # never settled: nothing happens
unsettled = gc.get_freeze_count()
old = Model()
old.self = old  # a long-lived object graph with a cycle, frozen at start-up
alive = weakref.ref(old)
heap.settle()
del old
gc.collect()
leaked = alive() is not None  # frozen: the collector does not see it
heap.resettle()
print(json.dumps({"unsettled": unsettled, "leaked": leaked, "freed": alive() is None,
                  "frozen": gc.get_freeze_count() > 0}))
"""


def test_resettle_frees_the_cycles_of_a_dropped_frozen_graph():
    out = subprocess.run([sys.executable, "-c", RESETTLE], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == {"unsettled": 0, "leaked": True, "freed": True, "frozen": True}
