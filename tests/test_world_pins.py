"""Hub pinning in the World: a hub keeps (and fetches) the releases its config pins besides the
current one, even after the rest of the mesh moved on and purged them."""

from __future__ import annotations

import os
import random

from mesh.testing.content import build_release, publish, random_files, seed_and_publish, sign_release
from mesh.testing.sim import World

SEED = int(os.environ.get("MESH_WORLD_SEED", "20241128"))
KIB = 1024


def release_files(world: World, tag: str) -> dict[str, bytes]:
    return random_files(random.Random(f"{world.seed}/{tag}"), 5, 64 * KIB, 500 * KIB, tag)


def complete(world: World, name: str, root) -> bool:
    core = world.nodes[name].core
    track = core.tracks.get(root) if core is not None else None
    return track is not None and track.swarm.complete


def test_hub_fetches_a_pinned_release_the_mesh_moved_on_from() -> None:
    print(f"World seed={SEED} (replay: MESH_WORLD_SEED={SEED})")
    world = World(SEED)
    world.add_node("org", identity=world.mesh.founder, upload_bytes_per_s=4_000_000)
    world.add_node("edge", upload_bytes_per_s=4_000_000)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "connected")
    friday = build_release(release_files(world, "fri"))
    seed_and_publish(world, "org", friday, "friday")
    world.run_until(lambda w: complete(w, "edge", friday.root), 120, "friday on the edge")
    saturday = build_release(release_files(world, "sat"))
    saturday.put_into(world.nodes["org"].store)
    sat_id = sign_release(world, "org", saturday, "saturday")
    publish(world, "org", sat_id)
    world.run_until(lambda w: complete(w, "edge", saturday.root), 120, "saturday on the edge")

    # Friday is no longer current anywhere; the organizer's store is wiped, so only the edge
    # still holds it (the mesh's purge keeps current and previous releases).
    world.wipe_store("org")
    saturday.put_into(world.nodes["org"].store)
    world.add_node("hub", role="hub", upload_bytes_per_s=4_000_000, pins=("friday",))
    world.discover_all()
    world.run_until(lambda w: complete(w, "hub", friday.root) and complete(w, "hub", saturday.root), 300,
                    "hub holds friday (pinned) and saturday (current)")
    hub = world.nodes["hub"]
    assert all(hub.store.has(cid) for cid in friday.blocks), f"seed={world.seed}"
    pinned = hub.live_core().status()["pinned"]
    assert [p["name"] for p in pinned] == ["friday"] and pinned[0]["complete"] is True
    assert hub.live_core().status()["release"]["name"] == "saturday"
    # The edge never fetches friday again for itself: it only seeds what it holds.
    edge_tracks = world.nodes["edge"].live_core().tracks
    assert friday.root not in edge_tracks or not edge_tracks[friday.root].fetch
    assert sum(hub.traffic.chunk_bytes_in.get(n, 0) for n in ("edge",)) >= friday.chunk_bytes


def test_pin_by_release_id_and_unpinned_nodes_do_not_fetch_it() -> None:
    print(f"World seed={SEED} (replay: MESH_WORLD_SEED={SEED})")
    world = World(SEED)
    world.add_node("org", identity=world.mesh.founder)
    first = build_release(release_files(world, "a"))
    first_id = seed_and_publish(world, "org", first, "a")
    second = build_release(release_files(world, "b"))
    seed_and_publish(world, "org", second, "b")
    world.add_node("hub", role="hub", pins=(first_id,))
    world.add_node("edge")
    world.discover_all()
    world.run_until(lambda w: complete(w, "hub", first.root) and complete(w, "hub", second.root)
                    and complete(w, "edge", second.root), 300, "releases in place")
    assert not any(world.nodes["edge"].store.has(cid) for cid in first.chunks), f"seed={world.seed}"
