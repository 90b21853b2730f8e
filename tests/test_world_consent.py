"""Consent and retention across a mesh, in the deterministic World: real NodeCores, a real signed
release whose files include captured media of a subject, stores in memory.

What is asserted is what attendees rely on: once a revoke, a forget or an expiry reaches a node, that
node neither fetches nor serves the media's blocks, and its next purge (the same keep-set the running
agent's purge loop uses) leaves no block unique to that media in any store. Each test prints its
seed; `MESH_WORLD_SEED=N` replays one.
"""

from __future__ import annotations

import os
import random

from mesh.content.cid import Cid
from mesh.drivers.purge import agent_keep_set
from mesh.state import consent as cs
from mesh.state.records import AssetRecord
from mesh.testing.content import ReleaseContent, build_release, random_files, seed_and_publish
from mesh.testing.sim import World

SEED = int(os.environ.get("MESH_WORLD_SEED", "20241127"))
KIB = 1024
UPLOAD_BYTES_PER_S = 4_000_000


def subject_code() -> str:
    return cs.new_subject_code(random.Random(SEED))


def media_world(nodes: int) -> World:
    print(f"World seed={SEED} (replay: MESH_WORLD_SEED={SEED})")
    world = World(SEED)
    world.add_node("org", identity=world.mesh.founder, upload_bytes_per_s=UPLOAD_BYTES_PER_S)
    for i in range(nodes - 1):
        world.add_node(f"edge-{i}", upload_bytes_per_s=UPLOAD_BYTES_PER_S)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "everyone connected")
    return world


def release_with_photos(world: World) -> ReleaseContent:
    """Site files plus two photos of the subject (multi-chunk, one of them sharing a chunk with a
    site file, as deduplication may make it)."""
    rng = random.Random(f"{world.seed}/files")
    files = random_files(rng, 6, 64 * KIB, 400 * KIB, "site")
    shared = files["site-000.bin"] if "site-000.bin" in files else next(iter(files.values()))
    files["photos/a.jpg"] = rng.randbytes(700 * KIB)
    files["photos/b.jpg"] = shared[: 256 * KIB] + rng.randbytes(300 * KIB)  # first chunk = site's
    return build_release(files)


def file_cid(content: ReleaseContent, path: str) -> Cid:
    from mesh.content.manifest import DirManifest, decode_manifest

    root = decode_manifest(content.blocks[content.root])
    assert isinstance(root, DirManifest)
    return next(entry.cid for entry in root.entries if entry.path == path)


def blocks_of(content: ReleaseContent, cid: Cid) -> set[Cid]:
    """The media bytes of a file: its data chunks (a file manifest holds only their hashes; nodes
    keep it so the release's chunk list is the same everywhere)."""
    from mesh.content.manifest import FileManifest, decode_manifest

    if cid.codec == 0x55:
        return {cid}
    manifest = decode_manifest(content.blocks[cid])
    assert isinstance(manifest, FileManifest)
    return {chunk for chunk, _, _ in manifest.spans()}


def unique_blocks(content: ReleaseContent, paths: list[str]) -> set[Cid]:
    """Data chunks only the files at `paths` use."""
    from mesh.content.manifest import decode_manifest

    root = decode_manifest(content.blocks[content.root])
    mine: set[Cid] = set()
    others: set[Cid] = set()
    for entry in root.entries:
        (mine if entry.path in paths else others).update(blocks_of(content, entry.cid))
    return mine - others


def put_photo_records(world: World, content: ReleaseContent, paths: list[str], code: str,
                      retention_s: float | None = None) -> list[str]:
    org = world.nodes["org"].identity
    cids = []
    for path in paths:
        cid = file_cid(content, path)
        cids.append(str(cid))
        record = AssetRecord(cid=str(cid), name=path.rsplit("/", 1)[-1], size=len(content.files[path]),
                             media_type="image/jpeg", added_at=world.now, added_by=org.node_id,
                             tags=frozenset({"stage-a"}), subjects=frozenset({code}), retention_s=retention_s)
        world.mutate("org", lambda state, r=record: state.put_asset(r))
    return cids


def photo_policy_granted(world: World, code: str) -> None:
    org = world.nodes["org"].identity
    made = cs.create_policy(org.authority_public_key, org.key, org.chain, "photo", "deny",
                            "Photos of you may be shown on site", world.now)
    world.mutate("org", lambda state: cs.set_policy(state, made))
    world.mutate("org", lambda state: cs.record_decision(state, code, "photo", True, world.now, org.node_id))


def release_complete(world: World, name: str, release_id: str) -> bool:
    core = world.nodes[name].core
    return (core is not None and core.release is not None and core.release.id == release_id
            and core.swarm is not None and core.swarm.complete)


def purge(world: World, name: str) -> int:
    """One pass of the agent's purge loop on `name`'s store; blocks removed."""
    handle = world.nodes[name]
    core = handle.live_core()
    swarm = core.swarm
    arriving = swarm.chunks if swarm is not None and swarm.chunks is not None else ()
    keep = agent_keep_set(core.state, handle.store, core.identity.authority_public_key, world.now,
                          arriving, core.withheld)
    doomed = [cid for cid in list(handle.store.cids()) if str(cid) not in keep.roots]
    for cid in doomed:
        handle.store.delete(cid)
    return len(doomed)


def held_anywhere(world: World, blocks: set[Cid]) -> dict[str, list[str]]:
    return {name: sorted(str(c) for c in blocks if handle.store.has(c))
            for name, handle in world.nodes.items() if any(handle.store.has(c) for c in blocks)}


def setup_photos(nodes: int, retention_s: float | None = None):
    world = media_world(nodes)
    code = subject_code()
    content = release_with_photos(world)
    photo_policy_granted(world, code)
    photos = ["photos/a.jpg", "photos/b.jpg"]
    put_photo_records(world, content, photos, code, retention_s)
    release_id = seed_and_publish(world, "org", content, "friday")
    world.run_until(lambda w: all(release_complete(w, n, release_id) for n in w.nodes), 300, "release everywhere")
    unique = unique_blocks(content, photos)
    assert unique and set(held_anywhere(world, unique)) == set(world.nodes), f"seed={world.seed}"
    return world, code, content, release_id, unique


def test_forget_leaves_no_block_unique_to_the_subjects_media_in_any_store() -> None:
    world, code, content, release_id, unique = setup_photos(4)
    org = world.nodes["org"].identity

    def forget(state):
        policies = cs.effective_policies(state, org.authority_public_key, world.now)
        cs.revoke_all(state, code, policies, world.now, org.node_id)

    world.mutate("edge-1", forget)  # any node may record the erasure
    world.run_until(lambda w: w.converged(), 30, "forget everywhere")
    world.run_for(2.0)
    for name, handle in world.nodes.items():
        assert unique <= handle.live_core().withheld, f"seed={world.seed}: {name} still offers the photos"
        purge(world, name)
    assert held_anywhere(world, unique) == {}, f"seed={world.seed}"
    shared = file_cid(content, "site-000.bin") if "site-000.bin" in content.files else None
    for name, handle in world.nodes.items():  # the site (and the chunk a photo shared) stays
        assert all(handle.store.has(c) for c in content.chunks if c not in unique), f"{name} lost site blocks"
        assert release_complete(world, name, release_id)
    assert shared is None or all(h.store.has(shared) for h in world.nodes.values())


def test_node_offline_during_a_revoke_hides_and_purges_before_serving_it() -> None:
    world, code, content, release_id, unique = setup_photos(4)
    org = world.nodes["org"].identity
    world.crash("edge-0")  # keeps its store: it holds the photos
    world.crash("edge-1")
    world.wipe_store("edge-1")  # comes back empty and wants the whole release
    world.mutate("org", lambda state: cs.record_decision(state, code, "photo", False, world.now, org.node_id))
    world.run_until(lambda w: w.converged(["org", "edge-2"]), 30, "revoke among the online nodes")

    world.restart("edge-0")
    world.restart("edge-1")
    world.discover_all()
    world.run_until(lambda w: all(release_complete(w, n, release_id) for n in w.nodes), 300, "release everywhere")
    assert unique <= world.nodes["edge-0"].live_core().withheld, f"seed={world.seed}"
    # The wiped node completed the release without ever storing the photos' own blocks: nobody
    # sent them (every holder withholds them once it has the revoke, which comes first on a session).
    assert not any(world.nodes["edge-1"].store.has(c) for c in unique), f"seed={world.seed}"
    purge(world, "edge-0")
    assert not any(world.nodes["edge-0"].store.has(c) for c in unique), f"seed={world.seed}"


def test_retention_expiry_hides_and_purges_everywhere() -> None:
    world, code, content, release_id, unique = setup_photos(3, retention_s=120.0)
    world.run_for(60.0)
    assert all(not (unique & h.live_core().withheld) for h in world.nodes.values()), "hidden too early"
    world.run_for(120.0 + cs.RETENTION_SKEW_S + 40.0)  # past expiry, skew and the periodic re-check
    for name, handle in world.nodes.items():
        assert unique <= handle.live_core().withheld, f"seed={world.seed}: {name} did not expire it"
        purge(world, name)
    assert held_anywhere(world, unique) == {}, f"seed={world.seed}"
    for name in world.nodes:
        assert release_complete(world, name, release_id)


def test_a_peer_asking_for_a_withheld_block_gets_chunk_missing() -> None:
    from mesh.core.events import DataReceived
    from mesh.wire import messages as m

    world, code, content, release_id, unique = setup_photos(2)
    org = world.nodes["org"].identity
    world.mutate("org", lambda state: cs.record_decision(state, code, "photo", False, world.now, org.node_id))
    world.run_until(lambda w: w.converged(), 30, "revoke everywhere")
    world.run_for(1.0)
    conn = next(s.conn_id for s in world.nodes["org"].live_core().peers())
    target = sorted(unique, key=str)[0]
    served = world.nodes["org"].live_core().counters.get("chunks.served", 0)
    # edge-0 (misbehaving, or not yet synced) asks org for a withheld block: org refuses it.
    world.inject("org", DataReceived(conn, m.encode(m.ChunkRequest(target.to_bytes()))))
    world.run_for(1.0)
    assert world.nodes["org"].live_core().counters.get("chunks.withheld_refused", 0) == 1
    assert world.nodes["org"].live_core().counters.get("chunks.served", 0) == served
    assert "edge-0" in world.nodes["org"].peer_names()  # asking is not an offence


def test_a_slow_consent_pass_off_the_core_is_asked_once_at_a_time_and_then_hides(monkeypatch) -> None:
    """The agent evaluates consent over every asset on a worker thread (`EvaluateAssets`): with
    an answer taking 2 s, changes arriving meanwhile never pile up passes (one is out at a time,
    the next asked right after), and the revoke still takes effect: refused to peers, purged."""
    from mesh.core.events import EvaluateAssets
    from mesh.testing import sim

    slow_s = 2.0
    monkeypatch.setattr(sim, "EVALUATE_ASSETS_S", slow_s)
    world, code, content, release_id, unique = setup_photos(2)
    world.run_for(2 * slow_s)  # the passes setting up asked for are answered
    asked: dict[str, list[float]] = {}
    answer = world.action_handlers[EvaluateAssets]

    def counted(world_, handle, action):
        asked.setdefault(handle.name, []).append(world_.now)
        answer(world_, handle, action)

    world.action_handlers[EvaluateAssets] = counted
    org = world.nodes["org"].identity
    for step in range(4):  # a revoke, then more changes while the pass for it is out
        world.mutate("org", lambda state, s=step: cs.record_decision(state, code, "photo", False,
                                                                      world.now, org.node_id))
        world.run_for(0.3)
    world.run_until(lambda w: all(w.nodes[n].live_core().withheld >= unique for n in w.nodes), 60,
                    "the revoke hides the photos everywhere")
    for name, times in asked.items():
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        assert all(gap >= slow_s - 1e-9 for gap in gaps), f"{name} asked again before an answer: {gaps}"
    assert all(len(times) >= 2 for times in asked.values()), asked  # changes during a pass get one more
    for name in world.nodes:
        purge(world, name)
    assert held_anywhere(world, unique) == {}, f"seed={world.seed}"
