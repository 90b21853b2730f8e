"""The hub's upload slots: under contention every mesh gets an equal share, idle slots go to
whoever wants them, and cancellation never leaks a slot."""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.drivers.fairshare import FairShare


def test_a_mesh_with_many_senders_cannot_starve_one_with_few() -> None:
    async def main() -> Counter:
        share = FairShare(slots_total=4)
        done: Counter = Counter()

        async def send(key: str) -> None:
            async with share.slot(key):
                await trio.sleep(1)  # one chunk's time on the wire
                done[key] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(send, "flood")
            await trio.sleep(0.5)  # the flood holds every slot and 96 wait
            for _ in range(10):
                nursery.start_soon(send, "small")
            await trio.sleep(6)
            snapshot = Counter(done)
            nursery.cancel_scope.cancel()
        return snapshot

    done = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # after the first round, slots alternate: the small mesh gets half of them while it waits
    assert done["small"] >= 8 and done["flood"] <= done["small"] + 8


def test_one_mesh_alone_may_take_every_slot() -> None:
    async def main() -> int:
        share = FairShare(slots_total=3)
        peak = 0

        async def send() -> None:
            nonlocal peak
            async with share.slot("only"):
                peak = max(peak, share.taken)
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            for _ in range(9):
                nursery.start_soon(send)
        assert share.taken == 0
        return peak

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.01, 2), st.booleans()), min_size=1, max_size=40),
       st.integers(1, 5))
def test_slots_never_exceed_the_total_and_cancellation_returns_them(jobs, slots_total: int) -> None:
    async def main() -> None:
        share = FairShare(slots_total)

        async def send(key: str, seconds: float, cancel: bool) -> None:
            with trio.move_on_after(seconds / 2 if cancel else 1000):
                async with share.slot(key):
                    assert share.taken <= slots_total
                    await trio.sleep(seconds)

        async with trio.open_nursery() as nursery:
            for key, seconds, cancel in jobs:
                nursery.start_soon(send, key, seconds, cancel)
        assert share.taken == 0 and not share._waiting

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
