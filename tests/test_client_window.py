"""The per-client replay window: ids below the window or already ordered are refused."""

from dropbear.consensus.state import ClientWindow
from dropbear.limits import MAX_INFLIGHT_PER_CLIENT as W
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5 * W), max_size=300))
def test_window_matches_its_definition(ids: list[int]) -> None:
    window, used = ClientWindow(), []
    for request_id in ids:
        if not window.fresh(request_id):
            continue
        window.use(request_id)
        used.append(request_id)
        low = max(0, max(used) - W + 1)
        # Fresh exactly when at or above the window's floor and not used yet.
        for probe in range(max(0, low - 3), max(used) + 3):
            assert window.fresh(probe) == (probe >= low and probe not in used), probe
        assert all(i >= window.low for i in window.ordered)
        assert len(window.ordered) <= W
        assert window.bits.bit_length() <= W  # a few dozen bytes, however far ids go


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**63), st.sets(st.integers(0, W - 1), max_size=W))
def test_a_window_holds_its_ordered_ids_as_bits(low: int, offsets: set[int]) -> None:
    ids = sorted(low + i for i in offsets)
    window = ClientWindow.of(low, reversed(ids))
    assert window.ordered == ids
    assert window.copy() == window and window.copy() is not window
    assert all(not window.fresh(i) for i in ids)
    assert all(window.fresh(low + i) for i in range(W) if i not in offsets)
    assert not window.fresh(low - 1) or low == 0


def test_a_window_refuses_an_ordered_id_below_its_low() -> None:
    import pytest

    with pytest.raises(ValueError, match="ordered id 4 below the window's low 5"):
        ClientWindow.of(5, [7, 4])
