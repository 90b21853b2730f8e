"""Bounds on what strangers can hold open: connections that have not proven membership yet, and
the process's file descriptors.

Rules:
- The listen port is open to anyone, so a connection costs us a descriptor before it has proven
  anything. At most `per_source_max` such unproven connections per source address and `total_max`
  in all are kept. A new one over its source's bound sheds that source's oldest; over the total
  bound, the oldest of the source holding the most. A flood then mostly displaces its own stale
  connections, and a member's handshake, which lasts milliseconds, gets through.
- A connection leaves the gate once its handshake ends, either way. Proven sessions are bounded
  by the core (`sessions_max`).
- The descriptor budget: the agent raises its soft `RLIMIT_NOFILE` to the hard limit (capped),
  keeps FDS_RESERVED of them for the store, the state, the HTTP side and threads, and lets
  unproven connections use a quarter of the rest at most.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

PREAUTH_TOTAL_MAX = 256  # unproven connections in all (whatever the descriptor budget)
PREAUTH_PER_SOURCE_MAX = 16  # unproven connections from one address
PREAUTH_TOTAL_MIN = 16  # even under a tiny descriptor limit
FDS_WANTED = 65536  # the soft descriptor limit the agent asks for (never above the hard limit)
FDS_RESERVED = 128  # descriptors kept for the store, the state log, HTTP listeners and threads


class PreAuthGate:
    """Unproven connections by age; `admit` says which ones to shed."""

    def __init__(self, total_max: int = PREAUTH_TOTAL_MAX, per_source_max: int = PREAUTH_PER_SOURCE_MAX) -> None:
        self.total_max = total_max
        self.per_source_max = per_source_max
        self._all: OrderedDict[Hashable, str] = OrderedDict()  # key -> source, oldest first
        self._by_source: dict[str, OrderedDict[Hashable, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def admit(self, key: Hashable, source: str) -> list[Hashable]:
        """Track a new unproven connection; the keys of the connections to shed for it."""
        shed: list[Hashable] = []
        mine = self._by_source.setdefault(source, OrderedDict())
        while len(mine) >= self.per_source_max:
            shed.append(self._drop(next(iter(mine))))
        while len(self._all) >= self.total_max:
            heaviest = max(self._by_source.values(), key=len)
            shed.append(self._drop(next(iter(heaviest))))
        self._all[key] = source
        self._by_source.setdefault(source, OrderedDict())[key] = None
        return shed

    def done(self, key: Hashable) -> None:
        """The connection's handshake ended (or it was shed, or it closed)."""
        if key in self._all:
            self._drop(key)

    def _drop(self, key: Hashable) -> Hashable:
        source = self._all.pop(key)
        mine = self._by_source[source]
        del mine[key]
        if not mine:
            del self._by_source[source]
        return key


def raise_fd_limit(wanted: int = FDS_WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (the hard limit caps it); (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def preauth_total_max(fd_soft_limit: int) -> int:
    """Unproven connections the descriptor budget affords."""
    spare = max(0, fd_soft_limit - FDS_RESERVED)
    return max(PREAUTH_TOTAL_MIN, min(PREAUTH_TOTAL_MAX, spare // 4))
