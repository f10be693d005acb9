"""The node's small parts: its timers and its inference slots."""

import pytest
import trio
from dropbear.node import Slots, Timers


def test_a_timer_cancelled_by_handling_an_earlier_one_does_not_fire():
    timers = Timers()
    timers.set("vote-wait", 1.0)
    timers.set("batch-wait", 1.5)
    timers.set("progress", 9.0)
    assert timers.pop_due(2.0) == "vote-wait"  # earliest first
    timers.cancel("batch-wait")  # what handling vote-wait may do
    assert timers.pop_due(2.0) is None
    timers.set("progress", 1.0)  # re-set earlier
    assert timers.pop_due(2.0) == "progress" and timers.pop_due(10.0) is None


async def test_timers_wake_the_loop_at_the_deadline_or_when_one_is_set():
    timers = Timers()
    start = trio.current_time()
    timers.set("t", start + 0.05)
    await timers.wait_for_change()
    assert trio.current_time() - start >= 0.05 and timers.pop_due(trio.current_time()) == "t"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.wait_for_change)
        await trio.sleep(0.01)
        timers.set("u", trio.current_time() + 60)  # the waiter returns at once
    assert trio.current_time() - start < 1.0


async def test_slots_are_taken_whole_and_first_come_first_served():
    slots = Slots(10)
    await slots.take(7)
    order = []

    async def taker(name, n):
        await slots.take(n)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker, "big", 6)
        await trio.sleep(0.01)
        nursery.start_soon(taker, "small", 1)  # would fit now, but waits its turn
        await trio.sleep(0.01)
        assert order == [] and slots.used == 7
        slots.give(7)
    assert order == ["big", "small"] and slots.used == 7
    with pytest.raises(ValueError, match="cannot take 11 of 10"):
        await slots.take(11)
