"""Shared-state sync cost: 10,000 asset records to a fresh node, then one tag change.

    python bench/state_bench.py [--assets 10000] [--json] [--no-snapshot]

Runs the real `NodeCore`s in the deterministic World (virtual network, real Automerge, real wire
codec), so "bytes on the wire" are the framed protocol bytes each node received. Baseline in the
same run: the size of `Document.save()` (compressed whole document) of the same state, and the CPU
time of saving and loading it. `--no-snapshot` leaves "state-snapshot/1" out of every Hello, so the
fresh node gets the history as changes (the path peers without the feature keep).
"""

from __future__ import annotations

import argparse
import json
import time

from mesh.content.cid import cid_for_raw
from mesh.core.node import FEATURE_STATE_SNAPSHOT
from mesh.state.records import AssetRecord
from mesh.testing.sim import World

TAGS = ("music", "merch", "stage-a", "stage-b", "crowd", "backstage", "poster", "clip")


def asset_record(index: int, added_by: str) -> AssetRecord:
    return AssetRecord(
        cid=str(cid_for_raw(f"asset {index}".encode())), name=f"photo-{index:05d}.jpg", size=100_000 + index,
        media_type="image/jpeg", added_at=1.75e9 + index, added_by=added_by,
        tags=frozenset({TAGS[index % len(TAGS)], TAGS[(index * 7) % len(TAGS)]}),
    )


def without_snapshots(*handles) -> None:
    """Take the snapshot feature out of these nodes' Hello (before they meet anyone)."""
    for handle in handles:
        core = handle.live_core()
        core.features = tuple(f for f in core.features if f != FEATURE_STATE_SNAPSHOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-snapshot", action="store_true", help="bootstrap by changes, not a snapshot")
    args = parser.parse_args()

    world = World(seed=1)
    org = world.add_node("org", role="organizer")
    behind = world.add_node("behind")
    if args.no_snapshot:
        without_snapshots(org, behind)
    world.discover("behind", "org")
    world.run_until(lambda w: w.all_connected(["org", "behind"]), 30, "connect")

    def add_all(state) -> None:
        for index in range(args.assets):
            state.put_asset(asset_record(index, org.node_id))

    started = time.perf_counter()
    world.mutate("org", add_all)
    build_s = time.perf_counter() - started
    world.run_until(lambda w: w.converged(["org", "behind"]), 3600, "behind to converge")

    started = time.perf_counter()
    saved = org.state.save()
    save_s = time.perf_counter() - started

    fresh = world.add_node("fresh")
    if args.no_snapshot:
        without_snapshots(fresh)
    world.discover("fresh", "org")
    wall = time.perf_counter()
    virtual = world.run_until(lambda w: w.converged(["org", "fresh"]), 3600, "fresh node to converge")
    fresh_wall_s = time.perf_counter() - wall
    fresh_bytes = fresh.traffic.bytes_in + fresh.traffic.bytes_out

    world.run_for(1.0)  # let "behind" persist what it received (it flushes every state_flush_s)
    world.crash("behind")
    some_cid = asset_record(42, org.node_id).cid
    world.mutate("org", lambda s: s.tag_asset(some_cid, add=("encore",)))
    before = behind.traffic.bytes_in + behind.traffic.bytes_out
    world.restart("behind")
    if args.no_snapshot:
        without_snapshots(behind)
    world.discover("behind", "org")
    wall = time.perf_counter()
    world.run_until(lambda w: w.converged(["org", "behind", "fresh"]), 600, "one change to arrive")
    delta_wall_s = time.perf_counter() - wall
    delta_bytes = behind.traffic.bytes_in + behind.traffic.bytes_out - before

    figures = {
        "assets": args.assets,
        "save_bytes": len(saved),
        "save_s": round(save_s, 3),
        "build_s": round(build_s, 2),
        "snapshots": fresh.live_core().counters.get("state.snapshots_received", 0),
        "fresh_sync_wire_bytes": fresh_bytes,
        "fresh_sync_vs_save": round(fresh_bytes / len(saved), 2),
        "fresh_sync_wall_s": round(fresh_wall_s, 2),
        "fresh_sync_virtual_s": round(virtual, 2),
        "one_change_wire_bytes": delta_bytes,
        "one_change_vs_save": round(delta_bytes / len(saved), 4),
        "one_change_wall_s": round(delta_wall_s, 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
