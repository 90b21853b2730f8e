"""A swarm's rarest-first order is kept as holdings change, and equals sorting every missing chunk.

The scheduler used to filter and sort all missing chunks in every round (a release of N chunks
cost N^2: 20,000 chunks took 8.6 s of scheduling against 0.35 s now, bench/scheduler_bench.py); it now walks a ranking kept up to date by every change of who holds what.
Whatever the sequence of Haves, HaveUpdates, ChunkMissing, departures, stored chunks and
withheld chunks, the walk must give exactly the order the old sort gave.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.content.cid import cid_for_raw
from mesh.content.manifest import DirEntry, DirManifest, file_cid
from mesh.core.swarm import Swarm, SwarmLimits

CHUNK = 1 << 20
FILES = 12  # of two chunks each: 24 chunks, three bytes of bitfield
PEERS = ("p1", "p2", "p3")


def _swarm(seed: int) -> Swarm:
    entries, manifests = [], []
    for index in range(FILES):
        chunks = [cid_for_raw(f"{index}-{part}".encode()) for part in range(2)]
        cid, manifest = file_cid(chunks, 2 * CHUNK, CHUNK)
        entries.append(DirEntry(f"f{index:02d}.bin", cid, 2 * CHUNK, "application/octet-stream"))
        manifests.append((cid, manifest.encode()))
    root = DirManifest.from_entries(entries)
    swarm = Swarm(root.cid, SwarmLimits(), random.Random(seed))
    swarm.add_manifest(root.cid, root.encode())
    for cid, data in manifests:
        swarm.add_manifest(cid, data)
    return swarm


def _sorted_order(swarm: Swarm) -> list[int]:
    """What a round walked before: every missing chunk, sorted by (holders, this node's tie)."""
    return sorted(swarm._missing, key=lambda i: (swarm._availability[i], swarm._ties[i]))


def _walked(swarm: Swarm) -> list[int]:
    everything = bytes([0xFF]) * len(swarm._have)
    return list(swarm._wanted(everything, (), set()))


TOTAL = 2 * FILES
operation = st.one_of(
    st.tuples(st.just("have"), st.sampled_from(PEERS), st.binary(min_size=3, max_size=3)),
    st.tuples(st.just("update"), st.sampled_from(PEERS), st.lists(st.integers(0, TOTAL - 1), max_size=5)),
    st.tuples(st.just("lacks"), st.sampled_from(PEERS), st.integers(0, TOTAL - 1)),
    st.tuples(st.just("leave"), st.sampled_from(PEERS), st.none()),
    st.tuples(st.just("join"), st.sampled_from(PEERS), st.none()),
    st.tuples(st.just("stored"), st.none(), st.integers(0, TOTAL - 1)),
    st.tuples(st.just("withhold"), st.none(), st.frozensets(st.integers(0, TOTAL - 1), max_size=4)),
)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 1000), st.lists(operation, max_size=40))
def test_rarest_first_walk_equals_sorting_every_missing_chunk(seed: int, operations: list) -> None:
    swarm = _swarm(seed)
    for peer in PEERS:
        swarm.add_peer(peer)
    for kind, peer, arg in operations:
        if kind == "have":
            swarm.peer_have(peer, TOTAL, arg)  # 24 chunks: three whole bytes
        elif kind == "update":
            swarm.peer_update(peer, tuple(arg))
        elif kind == "lacks":
            swarm.peer_lacks(peer, swarm.chunks[arg])
        elif kind == "leave":
            swarm.remove_peer(peer)
        elif kind == "join":
            swarm.add_peer(peer)
        elif kind == "stored":
            swarm.mark_have(swarm.chunks[arg])
        else:
            swarm.withhold({swarm.chunks[i] for i in arg})
        assert min(swarm._availability) >= 0
        assert _walked(swarm) == _sorted_order(swarm)  # the ranking now exists: the next change must keep it
