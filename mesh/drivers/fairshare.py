"""Fair shares of a hub's upload between its meshes.

A hub's meshes share one uplink. Each chunk a mesh's agent sends holds a slot for as long as its
bytes take to leave; at most `slots_total` chunk sends run at once, hub-wide. While every slot is
taken, a freed slot goes to the waiting mesh that holds the fewest (ties: the one that waited
longest), so a mesh with a hundred hungry edges gets the same share of the uplink as a mesh with
two, and neither can starve the other. With a single mesh waiting, it may take every slot: a
share is a floor under contention, not a cap when the link is idle.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Hashable

import trio

SLOTS_TOTAL_DEFAULT = 16  # chunk sends in flight on a hub (enough to fill a gigabit uplink)


class FairShare:
    """Slots for chunk sends, shared fairly between keys (meshes)."""

    def __init__(self, slots_total: int = SLOTS_TOTAL_DEFAULT) -> None:
        self.slots_total = slots_total
        self.in_use: Counter[Hashable] = Counter()  # key -> slots it holds
        self._waiting: dict[Hashable, deque[trio.Event]] = {}  # key -> its waiters, oldest first
        self._arrival: dict[Hashable, int] = {}  # key -> when it began waiting (ties: longest first)
        self._ticks = 0

    @property
    def taken(self) -> int:
        return sum(self.in_use.values())

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable) -> AsyncIterator[None]:
        """Hold one slot for `key` while the body runs."""
        if self.taken < self.slots_total and not self._waiting:
            self.in_use[key] += 1
        else:
            await self._wait(key)
        try:
            yield
        finally:
            self.in_use[key] -= 1
            if not self.in_use[key]:
                del self.in_use[key]
            self._hand_on()

    async def _wait(self, key: Hashable) -> None:
        event = trio.Event()
        queue = self._waiting.setdefault(key, deque())
        if not queue:
            self._ticks += 1
            self._arrival[key] = self._ticks
        queue.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed a slot just as we were cancelled: give it back
                self.in_use[key] -= 1
                if not self.in_use[key]:
                    del self.in_use[key]
                self._hand_on()
            else:
                self._forget(key, event)
            raise

    def _forget(self, key: Hashable, event: trio.Event) -> None:
        queue = self._waiting.get(key)
        if queue is not None and event in queue:
            queue.remove(event)
            if not queue:
                del self._waiting[key]
                del self._arrival[key]

    def _hand_on(self) -> None:
        """Give free slots to the waiting keys that hold the fewest."""
        while self._waiting and self.taken < self.slots_total:
            key = min(self._waiting, key=lambda k: (self.in_use[k], self._arrival[k]))
            queue = self._waiting[key]
            event = queue.popleft()
            if not queue:
                del self._waiting[key]
                del self._arrival[key]
            self.in_use[key] += 1
            event.set()
