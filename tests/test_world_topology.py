"""Shared media in the World: Wi-Fi stations that say so ("medium-shared/1" in their Hello, from a
`[topology]` hint or the interface) take chunks from wired peers, and a switched LAN, where nobody
says so, swarms exactly as before. Real NodeCores, real signed releases.

Each test prints its seed first; `MESH_WORLD_SEED=N` replays one seed.
"""

from __future__ import annotations

import os
import random

from mesh.core.swarming import FEATURE_SHARED_MEDIUM
from mesh.testing.content import build_release, seed_and_publish
from mesh.testing.netmodel import mbit
from mesh.testing.sim import World

SEED = int(os.environ.get("MESH_WORLD_SEED", "20261203"))
MIB = 1024 * 1024
AIRTIME_BYTES_PER_S = mbit(40)  # one access point's airtime (small, so the test is quick)
SEED_BYTES_PER_S = mbit(1000)  # the wired seed's uplink
STATIONS = 6


def venue(media_declared: bool = True, seed: int = SEED) -> World:
    """A wired seed and STATIONS Wi-Fi stations of one access point, all met."""
    print(f"World seed={seed} (replay: MESH_WORLD_SEED={seed}); stations declare their medium: {media_declared}")
    world = World(seed)
    world.media_declared = media_declared
    world.net.add_medium("ap", AIRTIME_BYTES_PER_S)
    world.add_node("seed", identity=world.mesh.founder, upload_bytes_per_s=SEED_BYTES_PER_S,
                   download_bytes_per_s=SEED_BYTES_PER_S)
    for i in range(STATIONS):
        world.add_node(f"station-{i}", medium="ap")
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 60, "everyone connected")
    return world


def release(world: World, mib: int = 16):
    rng = random.Random(f"{world.seed}/topology")
    return build_release({f"video-{i}.bin": rng.randbytes(mib * MIB // 2) for i in range(2)})


def complete(world: World, release_id: str, names: list[str]) -> bool:
    for name in names:
        core = world.nodes[name].core
        if core is None or core.release is None or core.release.id != release_id or not core.swarm.complete:
            return False
    return True


def distribute(world: World) -> tuple[float, float, int]:
    """Publish on the seed; (seconds until every station is complete, the airtime bound, F)."""
    content = release(world)
    stations = [n for n in world.nodes if n != "seed"]
    release_id = seed_and_publish(world, "seed", content, "friday")
    took = world.run_until(lambda w: complete(w, release_id, stations), 600, "stations complete")
    world.check_stores()
    return took, len(stations) * content.chunk_bytes / AIRTIME_BYTES_PER_S, content.chunk_bytes


def from_seed(world: World, name: str) -> float:
    traffic = world.nodes[name].traffic.chunk_bytes_in
    return traffic["seed"] / sum(traffic.values())


def test_stations_on_a_shared_medium_take_chunks_from_the_wired_seed() -> None:
    world = venue()
    stations = [n for n in world.nodes if n != "seed"]
    for name in stations:  # each knows only its own link, and tells its peers
        assert FEATURE_SHARED_MEDIUM in world.nodes[name].live_core().features
    assert FEATURE_SHARED_MEDIUM not in world.nodes["seed"].live_core().features
    took, bound, size = distribute(world)

    shares = {n: round(from_seed(world, n), 3) for n in stations}
    airtime = world.net.media["ap"].bytes_total / (len(stations) * size)
    busy = sum(world.nodes[n].traffic.messages_in["ChunkBusy"] for n in stations)
    print(f"complete in {took:.2f} s, airtime bound {bound:.2f} s ({took / bound:.2f}x); airtime "
          f"{airtime:.3f} x N*F; share from the seed {shares}; ChunkBusy to stations {busy}")
    assert min(shares.values()) > 0.95, f"seed={SEED}: stations took chunks from each other: {shares}"
    assert busy == 0, f"seed={SEED}: the wired seed declined {busy} requests of stations"
    assert airtime < 1.05, f"seed={SEED}: the air carried {airtime:.3f} x what the stations needed"
    assert took < 1.15 * bound, f"seed={SEED}: {took:.2f} s vs airtime bound {bound:.2f} s"


def test_stations_that_do_not_know_their_medium_swarm_among_themselves() -> None:
    """The same venue where no node knows its link (no hint, no detection): the scheduler's seed
    avoidance sends most chunks station to station, each crossing the air twice (the venue
    simulation's 1.98x before the hint)."""
    world = venue(media_declared=False)
    took, bound, size = distribute(world)

    stations = [n for n in world.nodes if n != "seed"]
    shares = {n: round(from_seed(world, n), 3) for n in stations}
    airtime = world.net.media["ap"].bytes_total / (len(stations) * size)
    print(f"complete in {took:.2f} s, airtime bound {bound:.2f} s ({took / bound:.2f}x); airtime "
          f"{airtime:.3f} x N*F; share from the seed {shares}")
    assert max(shares.values()) < 0.6, f"seed={SEED}: {shares}"
    assert airtime > 1.4 and took > 1.4 * bound, f"seed={SEED}: {took:.2f} s, airtime {airtime:.3f}"


LAN_BYTES_PER_S = 25_000_000  # 200 Mbit/s, every host's uplink (the swarm lab's cap)


def test_a_switched_lan_keeps_seed_avoidance() -> None:
    """Nobody on a switched LAN declares a shared medium: the seed sends each chunk about once and
    the edges fetch the rest from each other, as before."""
    print(f"World seed={SEED} (replay: MESH_WORLD_SEED={SEED})")
    world = World(SEED)
    world.add_node("seed", identity=world.mesh.founder, upload_bytes_per_s=LAN_BYTES_PER_S)
    edges = [f"edge-{i}" for i in range(4)]
    for name in edges:
        world.add_node(name, upload_bytes_per_s=LAN_BYTES_PER_S)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "everyone connected")
    content = release(world, 64)
    release_id = seed_and_publish(world, "seed", content, "friday")
    took = world.run_until(lambda w: complete(w, release_id, edges), 120, "edges complete")

    cores = [world.nodes[n].live_core() for n in world.nodes]
    assert not any(FEATURE_SHARED_MEDIUM in c.features or c.transfers.shared_medium for c in cores)
    assert not any(lane.shared_medium for c in cores for lane in c.transfers.lanes.values())
    seed_out = sum(world.nodes["seed"].traffic.chunk_bytes_out.values()) / content.chunk_bytes
    bound = content.chunk_bytes / LAN_BYTES_PER_S
    print(f"complete in {took:.2f} s, bound {bound:.2f} s ({took / bound:.2f}x); seed uploaded {seed_out:.3f} F")
    assert seed_out < 1.1, f"seed={SEED}: the seed uploaded {seed_out:.3f} F"
    assert took < 1.25 * bound, f"seed={SEED}: {took:.2f} s vs bound {bound:.2f} s"


def test_a_wired_peer_among_stations_is_preferred_to_the_stations() -> None:
    """A wired edge that already holds the release and stations that fetch: the stations take from
    the wired nodes (seed and edge) and not from each other; the wired edge serves its share."""
    world = venue()
    content = release(world)
    world.add_node("wired-edge", upload_bytes_per_s=SEED_BYTES_PER_S)
    content.put_into(world.nodes["wired-edge"].store)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 60, "everyone connected")
    stations = [n for n in world.nodes if n.startswith("station-")]
    release_id = seed_and_publish(world, "seed", content, "friday")
    world.run_until(lambda w: complete(w, release_id, stations), 600, "stations complete")

    wired = {n: sum(world.nodes[n].traffic.chunk_bytes_in[w] for w in ("seed", "wired-edge"))
             / sum(world.nodes[n].traffic.chunk_bytes_in.values()) for n in stations}
    edge_out = sum(world.nodes["wired-edge"].traffic.chunk_bytes_out.values())
    print(f"share from wired nodes {wired}; the wired edge sent {edge_out / content.chunk_bytes:.2f} F")
    assert min(wired.values()) > 0.95, f"seed={SEED}: {wired}"
    assert edge_out > 0.5 * content.chunk_bytes, f"seed={SEED}: the wired edge sent {edge_out} bytes"


def test_the_venue_scenario_is_within_the_target_of_its_airtime_bound() -> None:
    """`python -m simulations venue` at a small size: 1.3x its bound at most with the stations'
    hint (the issue's target; about 1.0 measured), and about 2x without it (the air carries relayed
    bytes twice)."""
    from simulations import scenarios

    hinted = scenarios.venue(seed=7, nodes=20, release_mb=16)["distribution"]
    blind = scenarios.venue(seed=7, nodes=20, release_mb=16, medium_hint=False)["distribution"]
    print(f"venue seed=7: ratio {hinted['ratio_to_bound']:.3f} with the hint, {blind['ratio_to_bound']:.3f} without; "
          f"seed share {hinted['seed_upload_share']:.3f} / {blind['seed_upload_share']:.3f}")
    assert hinted["ratio_to_bound"] <= 1.3, f"seed=7: {hinted['ratio_to_bound']}"
    assert hinted["seed_upload_share"] > 0.95, f"seed=7: {hinted['seed_upload_share']}"
    assert blind["ratio_to_bound"] > 1.6, f"seed=7: {blind['ratio_to_bound']}"
