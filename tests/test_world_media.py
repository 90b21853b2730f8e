"""The media mesh in the World: captured photos flow to every edge by tag, previews everywhere,
the capturer uploads each byte about once, a budget evicts only unpinned originals, consent comes
before bytes move. Real NodeCores, real shared state, the same scheduler as releases."""

from __future__ import annotations

import os
import random

from mesh.content.cid import Cid
from mesh.core.events import FetchRequested
from mesh.state import consent as cs
from mesh.testing.content import MediaContent, build_media, capture
from mesh.testing.sim import ContentPool, World

SEED = int(os.environ.get("MESH_WORLD_SEED", "20261203"))
MB = 1_000_000
LAN_BYTES_PER_S = 25_000_000  # 200 Mbit/s per box
CANONICAL = ("music", "merch", "stage")
SUBJECT = "7KQ2-M9X7"


def media_world(edges: int, seed: int = SEED) -> World:
    """An organizer, a stage box that captures, `edges` edges; all met; canonical tags set."""
    print(f"World seed={seed} (replay: MESH_WORLD_SEED={seed})")
    world = World(seed, pool=ContentPool())
    world.add_node("org", identity=world.mesh.founder, upload_bytes_per_s=LAN_BYTES_PER_S)
    world.add_node("stage", upload_bytes_per_s=LAN_BYTES_PER_S)
    for index in range(edges):
        world.add_node(f"edge{index + 1}", upload_bytes_per_s=LAN_BYTES_PER_S)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "connected")
    world.mutate("org", lambda state: [state.set_tag_description(tag, tag) for tag in CANONICAL])
    return world


def shots(world: World, count: int, rng: random.Random, subjects: frozenset[str] = frozenset(),
          tags: tuple[str, ...] = (*CANONICAL, "crowd"), size_min: int = 800_000,
          size_max: int = 2_500_000) -> list[MediaContent]:
    """`count` photos of `size_min`-`size_max` bytes (above 1 MiB: several chunks) with a 20-40 KB
    thumbnail each, tagged at random."""
    node = world.nodes["stage"].node_id
    return [build_media(f"shot-{i:04d}.jpg", rng.randbytes(rng.randint(size_min, size_max)), node, world.now,
                        frozenset({rng.choice(tags)}), thumbnail=rng.randbytes(rng.randint(20_000, 40_000)),
                        subjects=subjects)
            for i in range(count)]


def wanted_on_edges(photos: list[MediaContent]) -> set[Cid]:
    """What every edge must end up holding: every preview, the canonical tags' originals."""
    found: set[Cid] = set()
    for photo in photos:
        found |= photo.preview_blocks
        if photo.record.tags & set(CANONICAL):
            found |= photo.original_blocks
    return found


def block_bytes(photos: list[MediaContent], blocks: set[Cid]) -> int:
    return sum(len(data) for photo in photos for cid, data in photo.blocks.items() if cid in blocks)


def holds_all(world: World, names: list[str], blocks: set[Cid]) -> bool:
    return all(all(world.nodes[name].store.has(cid) for cid in blocks) for name in names)


def test_photos_from_one_capturer_reach_eight_edges_mostly_from_each_other() -> None:
    world = media_world(edges=8)
    edges = [f"edge{i}" for i in range(1, 9)]
    photos = shots(world, 200, random.Random(f"{world.seed}/shots"), size_min=400_000, size_max=1_600_000)
    for photo in photos:
        capture(world, "stage", photo)
    wanted = wanted_on_edges(photos)
    size = block_bytes(photos, wanted)
    took = world.run_until(lambda w: holds_all(w, edges, wanted), 300, "every preview and pinned original on every edge")

    stage = world.nodes["stage"].traffic
    from_stage = sum(world.nodes[e].traffic.chunk_bytes_in.get("stage", 0) for e in edges)
    received = sum(sum(world.nodes[e].traffic.chunk_bytes_in.values()) for e in edges)
    floor = max(size / LAN_BYTES_PER_S, len(edges) * size / (LAN_BYTES_PER_S * (len(edges) + 2)))
    print(f"seed={world.seed}: {size / MB:.1f} MB per edge in {took:.2f} s (floor {floor:.2f} s, "
          f"{took / floor:.2f}x); capturer sent {sum(stage.chunk_bytes_out.values()) / size:.3f}x the media; "
          f"edges got {from_stage / received:.1%} of their bytes from it")
    assert sum(stage.chunk_bytes_out.values()) <= 1.1 * size, f"seed={world.seed}: the capturer uploads it once"
    assert from_stage < 0.25 * received, f"seed={world.seed}: most bytes come from other edges"
    assert received <= 1.05 * len(edges) * size, f"seed={world.seed}: few duplicates"
    assert took <= 1.3 * floor, f"seed={world.seed}"
    crowd = [p for p in photos if "crowd" in p.record.tags]
    assert crowd and not any(world.nodes[e].store.has(c) for e in edges for p in crowd for c in p.original_blocks - p.preview_blocks), \
        "unpinned originals are fetched on demand only"
    world.run_for(0.5)  # the last ChunkStored reaches the core
    for name in edges:  # nothing is kept about asking for chunks once they are all here
        transfers = world.nodes[name].live_core().transfers
        left = {k: len(v) for k, v in (("busy", transfers.busy_until), ("lacked", transfers.lacked),
                                       ("at_seed", transfers.at_seed), ("rejected", transfers.rejected_by)) if v}
        assert not left, f"seed={world.seed}: {name} keeps {left}"
    status = world.nodes["edge3"].live_core().status()["media"]
    assert status["held"] == status["wanted"] == 200 + (200 - len(crowd))


def test_a_budget_smaller_than_the_media_evicts_only_unpinned_originals() -> None:
    world = media_world(edges=1)
    rng = random.Random(f"{world.seed}/budget")
    pinned = shots(world, 20, rng, tags=("stage",))
    crowd = shots(world, 30, rng, tags=("crowd",))
    for photo in pinned + crowd:
        capture(world, "stage", photo)
    kept = wanted_on_edges(pinned + crowd)
    budget = block_bytes(pinned + crowd, kept) + 12 * MB  # room for a few on-demand originals, not all
    world.set_budget("edge1", budget)
    world.run_until(lambda w: holds_all(w, ["edge1"], kept), 120, "pinned originals and previews")
    edge = world.nodes["edge1"]
    for photo in crowd:  # browsers open every crowd photo, one after another
        world.inject("edge1", FetchRequested(photo.record.cid))
        world.run_until(lambda w, p=photo: w.nodes["edge1"].live_core().object_state(p.record.cid) == "held", 60,
                        f"{photo.record.name} fetched on demand")
        world.run_for(0.5)
        assert edge.store.bytes_stored <= budget, f"seed={world.seed}: the store stays within its budget"
    world.run_for(5)
    assert holds_all(world, ["edge1"], kept), f"seed={world.seed}: pinned originals and previews never go"
    evicted = {e.fields["cid"] for e in world.events("media.evicted", node="edge1")}
    assert evicted and evicted <= {p.record.cid for p in crowd}, f"seed={world.seed}"
    assert world.nodes["edge1"].live_core().object_state(crowd[-1].record.cid) == "held", "the latest one stays"
    assert world.nodes["edge1"].live_core().object_state(crowd[0].record.cid) != "held", "the least recently used went"


def test_a_pinned_set_larger_than_the_budget_fetches_only_what_fits() -> None:
    world = media_world(edges=1)
    photos = shots(world, 20, random.Random(f"{world.seed}/over"), tags=("stage",))
    for photo in photos:
        capture(world, "stage", photo)
    budget = block_bytes(photos, wanted_on_edges(photos)) // 2
    world.set_budget("edge1", budget)
    world.run_for(30)
    edge = world.nodes["edge1"]
    assert edge.store.bytes_stored <= budget, f"seed={world.seed}"
    assert all(edge.store.has(cid) for p in photos for cid in p.preview_blocks), "previews still come"
    assert not world.events("media.evicted", node="edge1"), "pinned originals are never evicted"


def test_a_revocation_racing_replication_never_leaves_a_copy_anywhere() -> None:
    world = media_world(edges=4)
    founder = world.mesh.founder
    world.mutate("org", lambda state: cs.set_policy(state, cs.create_policy(
        founder.authority_public_key, founder.key, founder.chain, "photo", "grant", "Photos of you", world.now)))
    world.run_for(1)
    rng = random.Random(f"{world.seed}/race")
    photos = shots(world, 30, rng, subjects=frozenset({SUBJECT}), tags=("stage",))
    others = shots(world, 10, rng, tags=("stage",))
    for photo in photos + others:
        capture(world, "stage", photo)
    world.run_for(0.6)  # replication is under way
    moved = sum(sum(world.nodes[f"edge{i}"].traffic.chunk_bytes_in.values()) for i in range(1, 5))
    assert moved > 0, f"seed={world.seed}: the revoke must race a running replication"
    revoked = {cid for photo in photos for cid in photo.blocks}
    assets = {photo.record.cid for photo in photos}
    at_knowing: dict[str, set[Cid]] = {}  # node -> revoked blocks it held when it learnt of the revoke
    stored_after: list[tuple[str, str]] = []
    servable: list[tuple[str, str]] = []  # revoked blocks a node that knows holds but does not withhold

    def nothing_stored_once_known(w) -> None:
        for name in w.nodes:
            handle = w.nodes[name]
            core = handle.core
            if core is None or not assets & core.hidden_assets:
                continue
            held = {cid for cid in revoked if handle.store.has(cid)}
            before = at_knowing.setdefault(name, held)
            stored_after.extend((name, str(cid)) for cid in held - before)
            servable.extend((name, str(cid)) for cid in held - core.withheld)  # it would send these

    world.invariants.append(nothing_stored_once_known)
    world.mutate("edge2", lambda state: cs.record_decision(state, SUBJECT, "photo", False, world.now,
                                                           world.nodes["edge2"].node_id))
    world.run_until(lambda w: w.converged(), 30, "the revoke everywhere")
    assert not stored_after, f"seed={world.seed}: stored after it knew of the revoke: {stored_after[:5]}"
    assert not servable, f"seed={world.seed}: held and not withheld by a node that knew: {sorted(set(servable))[:5]}"
    late: list[str] = []
    world.observers.append(lambda w, node, event, summary: late.extend(
        node.name for kind, _, piece in summary if kind == "ChunkData" and Cid.from_bytes(piece[0]) in revoked))
    world.run_for(3 + 0.5)  # withheld refresh after the change; and a little more
    late.clear()
    world.run_for(10)
    assert not late, f"seed={world.seed}: no byte of revoked media moves once every node knows"
    for name in world.nodes:
        world.purge(name)
    left = {name: sum(h.store.has(cid) for cid in revoked) for name, h in world.nodes.items()}
    assert not any(left.values()), f"seed={world.seed}: copies left {left}"
    assert holds_all(world, [f"edge{i}" for i in range(1, 5)], wanted_on_edges(others))


def test_media_pending_consent_stays_on_its_capturer_unserved_until_granted() -> None:
    world = media_world(edges=2)
    photo = shots(world, 1, random.Random(f"{world.seed}/pending"), subjects=frozenset({SUBJECT}), tags=("stage",))[0]
    blocks = set(photo.blocks)
    sent: list[str] = []
    world.observers.append(lambda w, node, event, summary: sent.extend(
        node.name for kind, _, piece in summary if kind == "ChunkData" and Cid.from_bytes(piece[0]) in blocks))
    capture(world, "stage", photo)  # no policy for "photo" yet: undecided, so pending
    world.run_for(30)
    for name in world.nodes:
        world.purge(name)
    assert not sent, f"seed={world.seed}: pending media never goes on the wire"
    assert all(world.nodes["stage"].store.has(cid) for cid in blocks), "held on the capturer, not destroyed"
    assert not any(world.nodes[e].store.has(cid) for e in ("edge1", "edge2", "org") for cid in blocks)
    assert world.nodes["edge1"].live_core().object_state(photo.record.cid) == "hidden"
    world.mutate("edge1", lambda state: cs.record_decision(state, SUBJECT, "photo", True, world.now,
                                                           world.nodes["edge1"].node_id))
    world.run_until(lambda w: holds_all(w, ["edge1", "edge2"], blocks), 60, "granted: on every edge")


def test_retention_expiry_removes_originals_and_previews_on_every_node() -> None:
    import dataclasses

    world = media_world(edges=3)
    rng = random.Random(f"{world.seed}/retention")
    brief = [MediaContent(dataclasses.replace(p.record, retention_s=120.0), p.blocks)
             for p in shots(world, 6, rng, tags=("stage",))]
    kept = shots(world, 3, rng, tags=("stage",))
    for photo in brief + kept:
        capture(world, "stage", photo)
    edges = ["edge1", "edge2", "edge3"]
    world.run_until(lambda w: holds_all(w, edges, wanted_on_edges(brief + kept)), 60, "replicated")
    expiring = {cid for photo in brief for cid in photo.blocks}
    world.run_for(120.0 + cs.RETENTION_SKEW_S + 40.0)  # past expiry, skew and the periodic re-check
    for name in world.nodes:
        world.purge(name)
    left = {name: sum(h.store.has(cid) for cid in expiring) for name, h in world.nodes.items()}
    assert not any(left.values()), f"seed={world.seed}: originals and previews left after expiry: {left}"
    assert holds_all(world, edges, wanted_on_edges(kept)), "media without a retention rule stays"
    assert all(world.nodes[e].live_core().object_state(brief[0].record.cid) == "hidden" for e in edges)


def test_evicting_a_file_that_the_release_also_contains_keeps_the_release(tmp_path) -> None:
    """The budget evicts an unpinned original that is also a file of the current release (a
    poster shipped in the site and added as media): the agent's eviction (`agent_keep_set` with
    `evicting`, then the real FileStore's gc) keeps every block of the release."""
    from mesh.drivers.filestore import FileStore
    from mesh.drivers.purge import agent_keep_set
    from mesh.testing.content import build_release, seed_and_publish

    world = media_world(edges=1)
    rng = random.Random(f"{world.seed}/evict-release")
    poster, video = rng.randbytes(200_000), rng.randbytes(3_000_000)
    site = build_release({"poster.jpg": poster, "video.mp4": video})
    seed_and_publish(world, "org", site, "site")
    stage = world.nodes["stage"].node_id
    also_media = [build_media(name, data, stage, world.now, frozenset({"crowd"}), thumbnail=rng.randbytes(20_000))
                  for name, data in (("poster.jpg", poster), ("video.mp4", video))]
    elsewhere = build_media("other.jpg", rng.randbytes(1_500_000), stage, world.now, frozenset({"crowd"}))
    for media in (*also_media, elsewhere):
        capture(world, "stage", media)
    world.run_until(lambda w: w.converged(), 30, "state everywhere")
    store = FileStore(tmp_path / "store")
    for blocks in (site.blocks, *(m.blocks for m in (*also_media, elsewhere))):
        for cid, data in blocks.items():
            store.put(cid, data)
    edge = world.nodes["edge1"]
    evicting = frozenset(m.record.cid for m in (*also_media, elsewhere))
    keep = agent_keep_set(edge.live_core().state, store, world.mesh.founder.authority_public_key, world.now,
                          releases=[site.root], node_id=edge.node_id, evicting=evicting)
    store.gc(keep.roots, keep.hidden)
    assert all(store.has(cid) for cid in site.blocks), "every block of the release stays"
    assert not any(store.has(cid) for cid in elsewhere.original_blocks), "the other original went"
    assert all(store.has(cid) for m in also_media for cid in m.preview_blocks), "previews are never evicted"


def test_files_whose_only_holder_left_do_not_block_the_rest() -> None:
    """The capturer dies with 32 files half-fetched on an edge; another box then captures new
    photos: they still arrive (the orphaned files give their slots back, and resume later)."""
    world = media_world(edges=1)
    world.add_node("stage2", upload_bytes_per_s=LAN_BYTES_PER_S)
    world.net.set_bandwidth("stage", 2_000_000, None)  # slow: many files in flight when it dies
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "connected")
    rng = random.Random(f"{world.seed}/orphans")
    for photo in shots(world, 60, rng, tags=("stage",), size_min=300_000, size_max=600_000):
        capture(world, "stage", photo)
    world.run_for(3)
    world.crash("stage")
    world.run_for(2)
    node = world.nodes["stage2"].node_id
    later = [build_media(f"later-{i}.jpg", rng.randbytes(400_000), node, world.now, frozenset({"stage"}),
                         thumbnail=rng.randbytes(20_000)) for i in range(5)]
    for photo in later:
        capture(world, "stage2", photo)
    world.run_until(lambda w: holds_all(w, ["edge1"], wanted_on_edges(later)), 30, "the new photos on the edge")


def test_a_box_that_evicted_a_file_is_no_longer_counted_as_holding_it() -> None:
    """edge1 fetched crowd originals on demand and evicted the oldest; edge2 still thinks edge1
    holds one. When edge1 answers ChunkMissing, edge2 stops counting it: with no one else holding
    the file, edge2's pages show a placeholder instead of an image it cannot produce."""
    world = media_world(edges=2)
    crowd = shots(world, 12, random.Random(f"{world.seed}/stale"), tags=("crowd",), size_min=1_500_000,
                  size_max=2_000_000)
    for photo in crowd:
        capture(world, "stage", photo)
    kept = wanted_on_edges(crowd)
    world.set_budget("edge1", block_bytes(crowd, kept) + 5 * MB)
    world.run_until(lambda w: holds_all(w, ["edge1", "edge2"], kept), 60, "previews everywhere")
    for photo in crowd:
        world.inject("edge1", FetchRequested(photo.record.cid))
        world.run_until(lambda w, p=photo: w.nodes["edge1"].live_core().object_state(p.record.cid) == "held", 60,
                        "fetched on demand")
        world.run_for(0.5)
    world.run_for(3)
    evicted = [e.fields["cid"] for e in world.events("media.evicted", node="edge1")]
    assert evicted, f"seed={world.seed}: the budget evicted something"
    world.crash("stage")  # the capturer is gone: edge1 was the only other holder
    world.run_for(2)
    edge2 = world.nodes["edge2"].live_core()
    assert edge2.object_available(evicted[0]), "edge1 announced it whole earlier"
    world.inject("edge2", FetchRequested(evicted[0]))
    world.run_for(5)
    assert not edge2.object_available(evicted[0]), f"seed={world.seed}: edge1 said it lacks it"
    assert edge2.object_state(evicted[0]) in ("fetching", "unavailable")
