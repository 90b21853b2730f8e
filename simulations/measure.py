"""Figures of a run: completion times, upload shares, state convergence, and their lower bounds.

Bounds (the same run's parameters):
- distribution: max(F/u_seed, F/d_min, N*F/(u_seed + sum u_i)) over the nodes that must receive
  F bytes, plus the terms of shared pipes the run has (an access point's airtime must carry every
  byte a station receives; a site's WAN downlink must carry F). Where a file moves in few parts
  over links of one speed (coop's hubs), `parts_bound_s` adds what the fluid bound leaves out:
  a part is forwarded only once it has all arrived.
- push gossip: log2 N + ln N rounds (Pittel); our cores flood every change to every ready peer,
  so on a connected session graph the floor is the origin's eccentricity (reported as well).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from mesh.core.events import DataReceived
from mesh.testing.sim import NodeHandle, World


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (deterministic, no interpolation)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9), "max": max(values, default=0.0)}


def gossip_bound_rounds(nodes: int) -> float:
    return math.log2(nodes) + math.log(nodes) if nodes > 1 else 0.0


def distribution_bound(file_bytes: int, receivers: int, seed_up: float, down_min: float | None,
                       others_up: float, extra: dict[str, float] | None = None) -> dict[str, float]:
    """The lower-bound terms (seconds) and their max under "bound_s"."""
    terms = {"F/u_seed": file_bytes / seed_up}
    if down_min:
        terms["F/d_min"] = file_bytes / down_min
    terms["N*F/(u_seed+sum_u)"] = receivers * file_bytes / (seed_up + others_up)
    terms.update(extra or {})
    terms["bound_s"] = max(terms.values())
    return terms


def parts_bound_s(file_bytes: int, part_bytes_min: int, clients: int, up: float) -> float:
    """The least time in which a seed and `clients` peers, each uploading at `up` bytes/s, can
    give every client a file of `file_bytes` in parts of at least `part_bytes_min`, when a peer
    forwards a part only once it holds all of it: F/u + floor(log2 N) c/u. The seed must send
    every part once; the last one it sends still has to double its holders to reach N clients.
    For M equal parts that is M + floor(log2 N) part times, the optimum of Mundinger, Weber and
    Weiss, "Optimal scheduling of peer-to-peer file dissemination" (J. Scheduling 2008);
    tests/test_sim_bounds.py checks it against an exhaustive search of small cases."""
    doublings = math.floor(math.log2(clients)) if clients > 1 else 0
    return (file_bytes + doublings * part_bytes_min) / up


@dataclass
class ChangeTracker:
    """Follows one state change from its origin: when and after how many hops each node got it.

    A hop is one delivery of state bytes from a node that had the change; a StateChanges (or sync)
    message that reaches a node which already had it is a duplicate delivery."""

    head: bytes  # the change's hash (the origin's only head right after it)
    origin: str  # the node that made it
    started: float  # virtual time it was made
    hops: dict[str, int] = field(default_factory=dict)  # node -> hops from the origin
    reached_at: dict[str, float] = field(default_factory=dict)  # node -> virtual time it had it
    duplicates: int = 0  # state messages delivered to nodes that already had it

    @classmethod
    def start(cls, world: World, origin: str) -> ChangeTracker:
        heads = world.nodes[origin].state.heads()
        tracker = cls(heads[-1] if len(heads) == 1 else max(heads), origin, world.now)
        tracker.hops[origin], tracker.reached_at[origin] = 0, world.now
        world.observers.append(tracker.observe)
        return tracker

    def observe(self, world: World, handle: NodeHandle, event: DataReceived, summary: tuple) -> None:
        carries_state = any(kind.startswith("State") and kind != "StateHeads" for kind, _, _ in summary)
        if not carries_state or handle.core is None:
            return
        if handle.name in self.hops:
            self.duplicates += 1
            return
        if self.head in handle.core.state.heads():  # scenarios make no other change meanwhile
            sender = world.endpoints[world.endpoints[event.conn_id].peer_conn_id].node
            self.hops[handle.name] = self.hops.get(sender, 0) + 1
            self.reached_at[handle.name] = world.now

    def reached(self, names: list[str]) -> bool:
        return all(n in self.hops for n in names)

    def figures(self) -> dict:
        times = [t - self.started for t in self.reached_at.values()]
        return {"nodes_reached": len(self.hops), "rounds": max(self.hops.values(), default=0),
                "rounds_p50": percentile(list(self.hops.values()), 0.5),
                "convergence_s": max(times, default=0.0), "duplicate_deliveries": self.duplicates}


def eccentricity(world: World, origin: str) -> int:
    """Hops from `origin` to the farthest live node over ready sessions (flooding's floor)."""
    seen, frontier, depth = {origin}, [origin], 0
    while frontier:
        nxt = [p for n in frontier for p in sorted(world.nodes[n].peer_names()) if p not in seen and not seen.add(p)]
        if not nxt:
            break
        frontier, depth = nxt, depth + 1
    return depth


def completion_times(world: World, release_id: str, since: float, names: list[str]) -> dict[str, float]:
    """Per node: virtual seconds from `since` to its last `release.complete` of the release."""
    done: dict[str, float] = {}
    for entry in world.events("release.complete"):
        if entry.fields.get("id") == release_id and entry.node in names:
            done[entry.node] = entry.time - (since - world.start_time)
    return done


def chunk_traffic(world: World, seed_names: set[str]) -> dict:
    """Upload bytes by the seed(s) vs by peers, and duplicate chunk bytes received."""
    seed_up = sum(sum(world.nodes[n].traffic.chunk_bytes_out.values()) for n in seed_names)
    total_up = sum(sum(h.traffic.chunk_bytes_out.values()) for h in world.nodes.values())
    return {"seed_upload_bytes": seed_up, "peer_upload_bytes": total_up - seed_up,
            "seed_upload_share": seed_up / total_up if total_up else 0.0}


class ChunkDeliveries:
    """Counts whole chunks delivered per (node, chunk); more than one is a duplicate."""

    def __init__(self, world: World) -> None:
        self.count: Counter = Counter()
        world.observers.append(self.observe)

    def observe(self, world: World, handle: NodeHandle, event: DataReceived, summary: tuple) -> None:
        for kind, _, chunk in summary:
            if kind == "ChunkData" and chunk[1]:
                self.count[(handle.name, chunk[0])] += 1

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.count.values())


def rounded(value, digits: int = 6):
    """Floats rounded (stable JSON); containers recursively."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value
