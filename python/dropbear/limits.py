"""Every bound of Dropbear, named in one place (DESIGN.md, "Explicit limits").

A flood from a Byzantine client or node fills one of these bounds and is refused; nothing
grows without limit. Each module imports its limits from here.
"""

# --- consensus core (dropbear._core) ---------------------------------------------------
QUORUM_MAX_SLOTS = 4096
"""(view, seq) slots a QuorumTracker follows at once."""
