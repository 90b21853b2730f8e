"""Pieces of the simulated network beyond one host's links: shared media, sites, topologies.

Theory of operation:
- A `Pipe` is a FIFO resource with a rate: a Wi-Fi access point's airtime, or a site's WAN uplink
  or downlink. A bulk write waits for what is queued before it; a small write (a control message)
  skips the queue, as on the host links (see `mesh.testing.sim`), but its bytes still count.
  Pipes are a fluid model: a transfer's arrival is the latest of its stages' finish times, so
  the slowest stage sets the throughput, and a shared stage divides it between its users.
- A `Medium` is one access point's channel. Every station's traffic goes through the AP, so a
  transfer between two stations of one AP takes the airtime twice (up to the AP, down again), and
  a transfer between a station and a wired host once.
- A `Site` is a venue or a co-op hub's neighbourhood: its hosts reach each other directly; between
  sites, bytes cross the sender site's WAN uplink and the receiver site's downlink and take the
  link latency (and loss) of the WAN. Only *public* hosts (hubs with a static address) can be
  reached from another site; the rest sit behind the venue's NAT.
- Topologies are seeded: `random_k_out` gives every node k distinct random others to discover, so
  a thousand-node mesh has a sparse, connected session graph (as peer-exchange caps make it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Pipe:
    """A shared FIFO resource with a rate (airtime, a WAN link)."""

    name: str  # for descriptions and errors
    bytes_per_s: float  # its capacity
    free_at: float = 0.0  # when what is queued on it has gone through
    bytes_total: int = 0  # bytes that went through it (airtime bytes count once per crossing)

    def reserve(self, now: float, nbytes: int, small: bool, crossings: int = 1) -> float:
        """Queue `nbytes` (crossing it `crossings` times) at `now`; when they are through."""
        duration = nbytes * crossings / self.bytes_per_s
        busy = max(now, self.free_at)
        self.free_at = busy + duration
        self.bytes_total += nbytes * crossings
        return (now if small else busy) + duration


@dataclass(frozen=True)
class Site:
    """A venue or a hub's neighbourhood behind one WAN link."""

    name: str  # site name
    wan_latency_s: float  # one-way latency from this site to the WAN core
    wan_loss: float  # probability that a segment crossing its WAN link is lost


def random_k_out(names: list[str], k: int, rng: random.Random) -> dict[str, list[str]]:
    """Every node gets `k` distinct random others to discover (a sparse random graph)."""
    chosen: dict[str, list[str]] = {}
    for name in names:
        others = [n for n in rng.sample(names, min(len(names), k + 1)) if n != name][:k]
        chosen[name] = others
    return chosen


def connected(edges: dict[str, list[str]]) -> bool:
    """True if the undirected graph of `edges` is connected."""
    neighbours: dict[str, set[str]] = {n: set() for n in edges}
    for a, bs in edges.items():
        for b in bs:
            neighbours[a].add(b)
            neighbours.setdefault(b, set()).add(a)
    if not neighbours:
        return True
    start = next(iter(neighbours))
    seen, frontier = {start}, [start]
    while frontier:
        frontier = [b for a in frontier for b in neighbours[a] if b not in seen and not seen.add(b)]
    return len(seen) == len(neighbours)


def mbit(value: float) -> float:
    """Megabits per second -> bytes per second."""
    return value * 1_000_000 / 8


__all__ = ["Pipe", "Site", "connected", "mbit", "random_k_out"]
