"""The address book: where members may be reachable, and when to dial them next.

Rules:
- Addresses come from mDNS, static peers (config, `--peer`), invite hints and peer exchange; all of
  them lead to the same kind of session.
- A node we already have a session with is never dialed. Static peers are retried forever with
  exponential backoff (with jitter from the injected rng); other addresses are forgotten after
  `forget_after_failures` failures in a row.
- The book is bounded (`addresses_max`, `addresses_per_node_max`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.config import CoreLimits
from mesh.core.events import Address

FORGET_AFTER_FAILURES = 8


@dataclass
class Candidate:
    """One address we may dial."""

    address: Address  # (host, port)
    node_id: str | None  # the node there, once known
    source: str  # where we learned it
    static: bool  # configured by the user: never forgotten
    next_attempt: float  # earliest time to dial
    backoff_s: float  # delay after the next failure
    failures: int = 0  # failures in a row
    inflight: bool = False  # a dial is running


class AddressBook:
    """Candidates keyed by address."""

    def __init__(self, limits: CoreLimits, rng: random.Random) -> None:
        self._limits = limits
        self._rng = rng
        self._by_address: dict[Address, Candidate] = {}

    def __len__(self) -> int:
        return len(self._by_address)

    def learn(self, address: Address, node_id: str | None, source: str, now: float, delay_s: float = 0.0) -> None:
        """Remember an address (or refresh what we know of it)."""
        known = self._by_address.get(address)
        if known is not None:
            known.node_id = node_id or known.node_id
            known.static = known.static or source == "static"
            return
        if len(self._by_address) >= self._limits.addresses_max:
            self._evict_one()
            if len(self._by_address) >= self._limits.addresses_max:
                return
        if node_id is not None and len(self.addresses_of(node_id)) >= self._limits.addresses_per_node_max:
            return
        self._by_address[address] = Candidate(
            address=address, node_id=node_id, source=source, static=source == "static",
            next_attempt=now + delay_s, backoff_s=self._limits.dial_backoff_min_s,
        )

    def _evict_one(self) -> None:
        """Drop the non-static candidate that failed most."""
        victims = [c for c in self._by_address.values() if not c.static and not c.inflight]
        if victims:
            worst = max(victims, key=lambda c: (c.failures, c.address))
            del self._by_address[worst.address]

    def addresses_of(self, node_id: str) -> list[Address]:
        return [c.address for c in self._by_address.values() if c.node_id == node_id]

    def due(self, now: float, skip_nodes: set[str], slots: int) -> list[Candidate]:
        """Candidates to dial now, at most `slots`, none for a node in `skip_nodes`."""
        chosen: list[Candidate] = []
        nodes_chosen: set[str] = set()
        for candidate in sorted(self._by_address.values(), key=lambda c: (c.next_attempt, c.address)):
            if len(chosen) >= slots or candidate.next_attempt > now:
                break
            node = candidate.node_id
            if candidate.inflight or (node is not None and (node in skip_nodes or node in nodes_chosen)):
                continue
            candidate.inflight = True
            chosen.append(candidate)
            if node is not None:
                nodes_chosen.add(node)
        return chosen

    def inflight_count(self) -> int:
        return sum(1 for c in self._by_address.values() if c.inflight)

    def dial_failed(self, address: Address, now: float) -> None:
        candidate = self._by_address.get(address)
        if candidate is None:
            return
        candidate.inflight = False
        candidate.failures += 1
        if candidate.failures >= FORGET_AFTER_FAILURES and not candidate.static:
            del self._by_address[address]
            return
        jitter = 0.5 + self._rng.random()
        candidate.next_attempt = now + candidate.backoff_s * jitter
        candidate.backoff_s = min(candidate.backoff_s * 2, self._limits.dial_backoff_max_s)

    def dial_finished(self, address: Address | None, node_id: str, now: float) -> None:
        """A dial produced a session (or a session ended): reset the backoff."""
        if address is None or address not in self._by_address:
            return
        candidate = self._by_address[address]
        candidate.inflight = False
        candidate.failures = 0
        candidate.node_id = node_id
        candidate.backoff_s = self._limits.dial_backoff_min_s
        candidate.next_attempt = now + self._limits.dial_backoff_min_s

    def forget_node(self, node_id: str) -> None:
        """Drop every address of a node (it was revoked)."""
        for address in self.addresses_of(node_id):
            del self._by_address[address]

    def next_deadline(self, skip_nodes: set[str]) -> float | None:
        times = [
            c.next_attempt for c in self._by_address.values()
            if not c.inflight and (c.node_id is None or c.node_id not in skip_nodes)
        ]
        return min(times) if times else None
