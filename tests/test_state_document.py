"""MeshState: convergence of replicas, typed reads over junk, sync messages."""

from __future__ import annotations

import random

import automerge.core as am
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import NotFoundError, RemoteProtocolError, UsageError
from mesh.state.document import MeshState, actor_id, split_chunks
from mesh.state.records import AssetRecord

CIDS = [f"bafkcid{i}" for i in range(4)]
TAGS = ["stage", "door", "vip", "backstage", "day-1"]


def replica(name: str, suffix: int = 1) -> MeshState:
    return MeshState(actor_id(name, bytes([suffix]) * 8))


def record(cid: str, tags=(), name: str = "photo.jpg", by: str = "n", at: float = 1.0) -> AssetRecord:
    return AssetRecord(
        cid=cid, name=name, size=123, media_type="image/jpeg", added_at=at, added_by=by,
        tags=frozenset(tags),
    )


def sync_pair(a: MeshState, b: MeshState, rounds_max: int = 50) -> int:
    """Exchange sync messages until both are quiet; returns the bytes b received."""
    state_a, state_b = a.new_sync_state(), b.new_sync_state()
    received_by_b = 0
    for _ in range(rounds_max):
        to_b = a.generate_sync_message(state_a)
        if to_b is not None:
            received_by_b += len(to_b)
            b.receive_sync_message(state_b, to_b)
        to_a = b.generate_sync_message(state_b)
        if to_a is not None:
            a.receive_sync_message(state_a, to_a)
        if to_a is None and to_b is None:
            return received_by_b
    raise AssertionError("sync did not go quiet")


def view(state: MeshState) -> tuple:
    return (state.assets(), state.members(), state.invite_uses(), state.tag_descriptions())


op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 2), st.sampled_from(CIDS),
              st.frozensets(st.sampled_from(TAGS), max_size=3), st.sampled_from(["a.jpg", "b.png"])),
    st.tuples(st.just("tag"), st.integers(0, 2), st.sampled_from(CIDS),
              st.frozensets(st.sampled_from(TAGS), max_size=2),
              st.frozensets(st.sampled_from(TAGS), max_size=2)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), seed=st.integers(0, 2**32))
def test_replicas_converge_and_keep_every_unremoved_tag(ops, seed) -> None:
    replicas = [replica(f"node-{i}", i + 1) for i in range(3)]
    added: dict[str, set[str]] = {cid: set() for cid in CIDS}
    removed: dict[str, set[str]] = {cid: set() for cid in CIDS}
    for kind, i, *rest in ops:
        if kind == "put":
            cid, tags, name = rest
            replicas[i].put_asset(record(cid, tags, name=name, by=f"node-{i}"))
            added[cid] |= tags
        elif kind == "tag":
            cid, add, remove = rest
            if replicas[i].asset(cid) is None:
                continue
            replicas[i].tag_asset(cid, add=add, remove=remove)
            added[cid] |= add - remove
            removed[cid] |= remove
        elif i != rest[0]:
            sync_pair(replicas[i], replicas[rest[0]])

    by_load = MeshState.load(replicas[0].save(), actor_id("loader", b"\x09"))
    for other in replicas[1:]:
        by_load.merge(MeshState.load(other.save(), actor_id("tmp", b"\x0a")))
    by_changes = replica("changes", 11)
    for other in reversed(replicas):
        by_changes.apply_changes(other.changes_since([]))

    rng = random.Random(seed)
    pairs = [(0, 1), (1, 2), (0, 2)]
    for _ in range(2):
        rng.shuffle(pairs)
        for i, j in pairs:
            sync_pair(replicas[i], replicas[j])

    everyone = [*replicas, by_load, by_changes]
    assert all(r.heads() == replicas[0].heads() for r in everyone)
    assert all(view(r) == view(replicas[0]) for r in everyone)
    for cid in CIDS:
        asset = replicas[0].asset(cid)
        survivors = added[cid] - removed[cid]
        if survivors:
            assert asset is not None and survivors <= asset.tags


def test_concurrent_adds_of_one_asset_with_different_tags_both_survive() -> None:
    a, b = replica("a", 1), replica("b", 2)
    a.put_asset(record("bafk1", {"stage"}, by="a", at=1.0))
    b.put_asset(record("bafk1", {"door"}, by="b", at=2.0))
    sync_pair(a, b)
    assert a.asset("bafk1").tags == {"stage", "door"}
    a.tag_asset("bafk1", add={"vip"})
    b.tag_asset("bafk1", add={"day-1"}, remove={"stage"})
    sync_pair(a, b)
    assert a.asset("bafk1") == b.asset("bafk1")
    assert a.asset("bafk1").tags == {"door", "vip", "day-1"}


def test_concurrent_add_and_remove_of_one_tag_keeps_the_add() -> None:
    a, b = replica("a", 1), replica("b", 2)
    a.put_asset(record("bafk1", {"stage"}))
    sync_pair(a, b)
    a.tag_asset("bafk1", remove={"stage"})
    b.tag_asset("bafk1", add={"stage"})  # already present: a no-op, so a's remove wins
    c = replica("c", 3)
    sync_pair(a, c)
    c.tag_asset("bafk1", add={"stage"})  # seen the remove, re-adds
    sync_pair(b, c)
    sync_pair(a, b)
    assert a.asset("bafk1").tags == {"stage"}


def test_put_asset_is_idempotent_and_does_not_drop_tags() -> None:
    a = replica("a")
    a.put_asset(record("bafk1", {"stage"}))
    a.tag_asset("bafk1", add={"vip"})
    heads = a.heads()
    a.put_asset(record("bafk1", {"stage"}))
    assert a.heads() == heads
    assert a.asset("bafk1").tags == {"stage", "vip"}


def test_typed_api_round_trip() -> None:
    a = replica("a")
    full = AssetRecord(
        cid="bafk1", name="x.mp4", size=9, media_type="video/mp4", added_at=5.5, added_by="a",
        tags=frozenset({"stage"}), subjects=frozenset({"s1", "s2"}), retention_s=3600.0,
        thumbnail="bafkthumb",
    )
    a.put_asset(full)
    a.put_asset(record("bafk2", {"door"}))
    a.put_member("node-b", b"\x00chain", "edge", "Door box", 10.0)
    a.put_revocation("node-c", b"\x01rev")
    a.record_invite_use("inv1", "node-b", 10.0)
    a.set_tag_description("stage", "Main stage")
    a.put_release("rel1", b"\x02release")
    a.set_current_release("rel1", "node-a", 11.0)
    b = MeshState.load(a.save(), actor_id("b", b"\x02"))
    assert b.asset("bafk1") == full
    assert [r.cid for r in b.assets(tag="door")] == ["bafk2"]
    assert b.members()[0].chain == b"\x00chain" and b.members()[0].role == "edge"
    assert b.revocation_blobs() == {"node-c": b"\x01rev"}
    assert b.invite_uses() == {"inv1": "node-b"}
    assert b.tag_descriptions() == {"stage": "Main stage"}
    assert b.release_blobs() == {"rel1": b"\x02release"}
    assert b.current_release().id == "rel1"
    b.remove_asset("bafk2")
    assert b.asset("bafk2") is None
    with pytest.raises(NotFoundError):
        b.tag_asset("bafk2", add={"x"})
    with pytest.raises(UsageError):
        b.tag_asset("bafk1", add={"Not Canonical"})
    b.put_asset(record("bafk2", {"again"}))  # re-adding after a removal works
    assert b.asset("bafk2").tags == {"again"}


def test_concurrent_invite_uses_resolve_to_the_smallest_joined_at_everywhere() -> None:
    a, b, c = replica("a", 1), replica("b", 2), replica("c", 3)
    a.record_invite_use("inv", "node-z", 5.0)
    b.record_invite_use("inv", "node-y", 7.0)
    c.record_invite_use("inv", "node-x", 5.0)
    sync_pair(a, b)
    sync_pair(b, c)
    sync_pair(a, b)
    assert a.invite_uses() == b.invite_uses() == c.invite_uses() == {"inv": "node-x"}


def test_fresh_replica_syncs_a_thousand_assets() -> None:
    big = replica("big", 1)
    for i in range(1000):
        big.put_asset(record(f"bafk{i:04d}", {TAGS[i % len(TAGS)]}))
    fresh = replica("fresh", 2)
    sync_pair(big, fresh)
    assert fresh.heads() == big.heads()
    assert len(fresh.assets()) == 1000
    assert fresh.assets() == big.assets()


def test_a_new_read_of_the_assets_sees_each_change_and_shares_the_unchanged_records() -> None:
    state = replica("reads", 1)
    for i in range(50):
        state.put_asset(record(f"bafk{i:04d}", {"stage"}))
    before = {r.cid: r for r in state.assets()}
    state.tag_asset("bafk0007", add={"vip"}, remove={"stage"})
    state.put_asset(record("bafk0050", {"door"}))
    fork = state.fork()  # another replica's read at the same heads: the same answer
    after = {r.cid: r for r in state.assets()}
    assert after["bafk0007"].tags == {"vip"} and before["bafk0007"].tags == {"stage"}
    assert after["bafk0050"].tags == {"door"} and "bafk0050" not in before
    assert all(after[cid] is before[cid] for cid in before if cid != "bafk0007")
    assert fork.assets() == state.assets()
    assert [r.tags for r in MeshState.load(state.save(), actor_id("fresh", b"\x03")).assets()] == \
        [r.tags for r in state.assets()]


def test_one_change_behind_receives_far_fewer_bytes_than_a_save() -> None:
    a = replica("a", 1)
    for i in range(300):
        a.put_asset(record(f"bafk{i:04d}", {"stage"}))
    b = MeshState.load(a.save(), actor_id("b", b"\x02"))
    a.tag_asset("bafk0007", add={"vip"})
    received = sync_pair(a, b)
    assert b.heads() == a.heads()
    assert received * 10 < len(a.save()), (received, len(a.save()))


def test_changes_since_carries_only_the_new_changes() -> None:
    a = replica("a", 1)
    a.put_asset(record("bafk1"))
    b = MeshState.load(a.save(), actor_id("b", b"\x02"))
    heads = a.heads()
    a.tag_asset("bafk1", add={"vip"})
    delta = a.changes_since(heads)
    assert 0 < len(delta) < len(a.save())
    assert len(b.apply_changes(delta)) == 1
    assert b.apply_changes(delta) == []  # applying twice is a no-op
    assert b.heads() == a.heads()


def _valid_messages() -> list[bytes]:
    a, b = replica("a", 1), replica("b", 2)
    a.put_asset(record("bafk1", {"stage"}))
    state_a, state_b = a.new_sync_state(), b.new_sync_state()
    first = a.generate_sync_message(state_a)
    b.receive_sync_message(state_b, first)
    reply = b.generate_sync_message(state_b)
    a.receive_sync_message(state_a, reply)
    return [first, reply, a.generate_sync_message(state_a)]


VALID_MESSAGES = _valid_messages()


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(VALID_MESSAGES),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10**6),
    noise=st.binary(max_size=64),
    use_noise=st.booleans(),
)
def test_malformed_sync_messages_raise_remote_protocol_error_only(base, edits, cut, noise, use_noise):
    message = bytearray(noise if use_noise else base)
    for pos, value in edits:
        if message:
            message[pos % len(message)] = value
    if not use_noise and message:
        message = message[: max(1, cut % (len(message) + 1))]
    b = replica("b", 2)
    try:
        b.receive_sync_message(b.new_sync_state(), bytes(message))
    except RemoteProtocolError:
        pass
    b.put_asset(record("bafk9"))  # still usable afterwards
    assert b.asset("bafk9") is not None


@pytest.mark.parametrize("junk", [b"", b"\x42", b"\xff" * 9, b"\x43\x00\x00"])
def test_garbage_is_a_remote_protocol_error(junk) -> None:
    b = replica("b")
    with pytest.raises(RemoteProtocolError):
        b.receive_sync_message(b.new_sync_state(), junk)
    with pytest.raises(RemoteProtocolError):
        b.apply_changes(junk or b"\x85\x6f")
    with pytest.raises(RemoteProtocolError):
        MeshState.load(b"not automerge", b"x")


def _write_junk(state: MeshState, body) -> None:
    """A malicious member writes raw values with the binding; they arrive as changes."""
    raw = am.Document.load(state.save())
    raw.set_actor(b"\xee" * 16)
    heads = raw.get_heads()
    with raw.transaction() as tx:
        body(raw, tx)
    state.apply_changes(b"".join(c.bytes for c in raw.get_changes(heads)))


def test_junk_at_typed_paths_is_skipped() -> None:
    s = replica("a")
    s.put_asset(record("bafkgood", {"stage"}))
    s.put_asset(record("bafkbadsize"))
    s.put_asset(record("bafkbadtags", {"stage"}))
    s.put_member("node-good", b"chain", "edge", "G", 1.0)
    s.put_member("node-bad", b"chain", "edge", "B", 1.0)
    S = am.ScalarType

    def junk(raw, tx):
        root = am.ROOT
        assets = raw.get(root, "assets")[1]
        tx.put(assets, "bafkscalar", S.Str, "not a map")
        tx.put_object(assets, "bafkempty", am.ObjType.Map)
        tx.put_object(assets, "bafklist", am.ObjType.List)
        tx.put(raw.get(assets, "bafkbadsize")[1], "size", S.Str, "huge")
        bad_tags = raw.get(raw.get(assets, "bafkbadtags")[1], "tags")[1]
        tx.put(bad_tags, "vip", S.Str, "yes")
        tx.put(bad_tags, "NOT CANONICAL", S.Boolean, True)
        tx.put(bad_tags, "ts", S.Timestamp, __import__("datetime").datetime(2020, 1, 1))
        members = raw.get(root, "members")[1]
        tx.put(raw.get(members, "node-bad")[1], "chain", S.Str, "not bytes")
        tx.put(members, "node-scalar", S.Int, 5)
        tx.put(raw.get(root, "revocations")[1], "node-x", S.Uint, 7)
        uses = raw.get(root, "invite_uses")[1]
        tx.put(uses, "no-separator", S.F64, 1.0)
        tx.put(uses, "inv/node-q", S.Str, "later")
        tx.put(raw.get(root, "tags")[1], "stage", S.Bytes, b"x")
        tx.put(root, "current_release", S.Null, None)

    _write_junk(s, junk)
    assert [r.cid for r in s.assets()] == ["bafkbadtags", "bafkgood"]
    assert s.asset("bafkbadtags").tags == {"stage"}
    assert s.asset("bafkscalar") is None and s.asset("bafkbadsize") is None
    assert [m.node_id for m in s.members()] == ["node-good"]
    assert s.revocation_blobs() == {}
    assert s.invite_uses() == {}
    assert s.tag_descriptions() == {}
    assert s.current_release() is None
    s.tag_asset("bafkbadtags", add={"vip"})  # repairs the junk value
    assert s.asset("bafkbadtags").tags == {"stage", "vip"}


def test_junk_replacing_a_root_map_empties_reads_without_crashing() -> None:
    s = replica("a")
    s.put_asset(record("bafk1"))
    _write_junk(s, lambda raw, tx: tx.put(am.ROOT, "assets", am.ScalarType.Str, "gone"))
    assert s.assets() == [] and s.asset("bafk1") is None
    with pytest.raises(RemoteProtocolError):
        s.put_asset(record("bafk2"))


def test_actor_ids_differ_per_process_of_one_node() -> None:
    node = "a" * 52
    assert actor_id(node, b"\x01" * 8) != actor_id(node, b"\x02" * 8)
    assert actor_id(node, b"\x01" * 8)[:32] == actor_id(node, b"\x02" * 8)[:32]


media_op = st.one_of(
    st.tuples(st.just("pin"), st.integers(0, 2), st.sampled_from(TAGS), st.booleans()),
    st.tuples(st.just("canon"), st.integers(0, 1), st.frozensets(st.sampled_from(TAGS), max_size=4)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(media_op, max_size=30))
def test_node_pins_and_canonical_tags_converge_and_keep_each_nodes_last_word(ops) -> None:
    """A box writes only its own pins (`mesh pin` on it), so after any interleaving of syncs every
    replica agrees and each node's pins are exactly its own last pin/unpin per tag; the canonical
    set (two organizers setting it concurrently) converges to one set on every replica."""
    from mesh.state.media import set_canonical_tags

    replicas = [replica(f"node-{i}", i + 1) for i in range(3)]
    last_word: dict[int, dict[str, bool]] = {i: {} for i in range(3)}
    for kind, i, *rest in ops:
        if kind == "pin":
            tag, pinned = rest
            replicas[i].set_node_pin(f"node-{i}", tag, pinned)
            last_word[i][tag] = pinned
        elif kind == "canon":
            set_canonical_tags(replicas[i], {tag: f"about {tag}" for tag in rest[0]})
        elif i != rest[0]:
            sync_pair(replicas[i], replicas[rest[0]])
    for i, j in ((0, 1), (1, 2), (0, 2), (0, 1)):
        sync_pair(replicas[i], replicas[j])
    for i in range(3):
        expected = {tag for tag, pinned in last_word[i].items() if pinned}
        assert all(r.node_pins(f"node-{i}") == expected for r in replicas)
    assert all(r.tag_descriptions() == replicas[0].tag_descriptions() for r in replicas)
    sets = [frozenset(rest[0]) for kind, i, *rest in ops if kind == "canon"]
    if sets and all(i == 0 for kind, i, *rest in ops if kind == "canon"):
        assert set(replicas[0].tag_descriptions()) == sets[-1], "one organizer: its last set stands"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(CIDS), st.sampled_from(TAGS)), min_size=1,
                max_size=12), st.lists(st.integers(0, 11), max_size=4))
def test_applied_changes_are_named_without_walking_the_history_and_exactly_as_the_document_does(
        edits, batch_cuts) -> None:
    """Three writers edit concurrently; a reader applies their changes in batches (and sometimes a
    batch whose dependencies come later, which the document holds back). Every apply names every
    change its history gained and nothing it does not hold (a change that came again alongside new
    ones may be named again), a chain of applies answers change_hashes_since the same way, and the
    hashes read from a chunk's header are the document's own, dependencies included."""
    writers = [replica(f"w{i}") for i in range(3)]
    base = writers[0]
    base.put_asset(record(CIDS[0]))
    for w in writers[1:]:
        w.merge(base)
    reader = replica("reader")
    reader.merge(base)
    start = reader.heads()
    for who, cid, tag in edits:
        writers[who].put_asset(record(cid, [tag], by=f"w{who}", name="photo-" + "x" * 40 * who))  # some compress
        writers[who].tag_asset(cid, add=[tag])
    changes = [c for w in writers for c in w._doc.get_changes([]) if c.hash not in set(
        x.hash for x in reader._doc.get_changes([]))]
    from mesh.state.document import applied_hashes, change_chunk_ids

    ids = change_chunk_ids([c.bytes for c in changes])
    assert ids is not None and [h for h, _ in ids] == [c.hash for c in changes]
    assert [tuple(d) for _, d in ids] == [tuple(c.deps) for c in changes]
    cuts = sorted({0, len(changes), *[min(c, len(changes)) for c in batch_cuts]})
    batches = [changes[a:b] for a, b in zip(cuts, cuts[1:])]
    random.Random(len(edits)).shuffle(batches)  # later changes may arrive before their dependencies
    for batch in batches:
        before = reader.heads()
        new = reader.apply_changes(b"".join(c.bytes for c in batch))
        truth = {c.hash for c in reader._changes_since(before)}
        held = {c.hash for c in reader._doc.get_changes([])}
        assert truth <= set(new) <= held and len(new) == len(set(new))  # every new one, nothing not held
    held = {c.hash for c in reader._doc.get_changes([])}
    assert {c.hash for c in reader._changes_since(start)} <= set(reader.change_hashes_since(start)) <= held
    behind = replica("behind")
    behind.merge(base)
    behind.apply_changes(reader.changes_since(start))  # what a peer at `start` is sent
    assert behind.heads() == reader.heads()
    assert applied_hashes([], [], []) == []
    q, d, x, p = (bytes([n]) * 32 for n in (1, 2, 3, 4))
    # x came with d, on top of q: q may have waited for d and been applied now, unnamed: ask the history
    assert applied_hashes([(d, (p,)), (x, (q, d))], [p], [x]) is None
    assert applied_hashes([(d, (p,)), (x, (d,))], [p], [x]) == [d, x]


# -- the asset index: what `assets()` answers after any change equals a read of every asset -----

index_op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 2), st.sampled_from(CIDS), st.frozensets(st.sampled_from(TAGS), max_size=2)),
    st.tuples(st.just("tag"), st.integers(0, 2), st.sampled_from(CIDS), st.frozensets(st.sampled_from(TAGS), max_size=2)),
    st.tuples(st.just("remove"), st.integers(0, 2), st.sampled_from(CIDS), st.just(None)),
    st.tuples(st.sampled_from(["junk-map", "junk-edit", "junk-scalar", "junk-tags", "junk-field", "junk-root"]),
              st.integers(0, 2), st.sampled_from(CIDS), st.just(None)),
    st.tuples(st.sampled_from(["sync", "merge", "apply"]), st.integers(0, 2), st.integers(0, 2), st.just(None)),
)


def _junk(state: MeshState, kind: str, cid: str, step: int) -> None:
    """A member writes with the raw binding what our code never would: an asset map of its own
    making (well-formed, so it counts), edits inside it, a scalar or a list in an asset's place,
    junk tags, a field of the wrong type, or a new assets map at the root. Each write has an actor
    of its own (one actor writing two diverging histories is not a valid document)."""
    S = am.ScalarType

    def body(raw, tx):
        assets = raw.get(am.ROOT, "assets")
        if assets is None or assets[0] != am.ObjType.Map:
            return
        assets = assets[1]
        entry = raw.get(assets, cid)
        obj = entry[1] if entry is not None and entry[0] == am.ObjType.Map else None
        if kind == "junk-map":
            obj = tx.put_object(assets, cid, am.ObjType.Map)
            for key, value in (("name", "own.jpg"), ("media_type", "image/jpeg"), ("added_by", "x")):
                tx.put(obj, key, S.Str, value)
            tx.put(obj, "size", S.Int, 7)
            tx.put(obj, "added_at", S.F64, 2.0)
            tags = tx.put_object(obj, "tags", am.ObjType.Map)
            tx.put(tags, "vip", S.Boolean, True)
        elif kind == "junk-edit" and obj is not None:
            tx.put(obj, "name", S.Str, "edited.jpg")
            tags = raw.get(obj, "tags")
            if tags is not None and tags[0] == am.ObjType.Map:
                tx.put(tags[1], "door", S.Boolean, True)
        elif kind == "junk-scalar":
            tx.put(assets, cid, S.Str, "not a map")
        elif kind == "junk-tags" and obj is not None:
            tx.put(obj, "tags", S.Int, 3)
        elif kind == "junk-field" and obj is not None:
            tx.put(obj, "size", S.Str, "huge")
        elif kind == "junk-root":
            fresh = tx.put_object(am.ROOT, "assets", am.ObjType.Map)
            tx.put_object(fresh, cid, am.ObjType.Map)

    import hashlib

    raw = am.Document.load(state.save())
    raw.set_actor(b"\xee" + hashlib.sha256(f"junk/{step}".encode()).digest()[:15])
    heads = raw.get_heads()
    with raw.transaction() as tx:
        body(raw, tx)
    state.apply_changes(b"".join(c.bytes for c in raw.get_changes(heads)))


def _read_afresh(state: MeshState, cid: str) -> AssetRecord | None:
    return state._read_asset(cid, state._child_map(state._root_map("assets"), cid))


def _every_asset_read_afresh(state: MeshState) -> list[AssetRecord]:
    """The truth: each entry of the assets map read on its own, no index, no kept read."""
    keys = state._keys(state._root_map("assets"))
    return sorted((r for r in (_read_afresh(state, key) for key in keys) if r is not None), key=lambda r: r.cid)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(index_op, max_size=24))
def test_the_asset_index_answers_what_a_read_of_every_asset_answers(ops) -> None:
    """Three replicas put, tag, remove and write junk, and exchange changes by sync, merge and
    apply; after every step each replica's indexed `assets()` (incremental: only the assets a
    change can have touched are read again) equals a read of every asset, tag filters included."""
    from mesh.state import document

    replicas = [replica(f"ix{i}") for i in range(3)]
    for i, (kind, who, what, tags) in enumerate(ops):
        state = replicas[who]
        try:
            if kind == "put":
                state.put_asset(record(what, tags, at=float(i)))
            elif kind == "tag":
                state.tag_asset(what, add=tags, remove=set(TAGS) - tags - {"stage"})
            elif kind == "remove":
                state.remove_asset(what)
            elif kind.startswith("junk"):
                _junk(state, kind, what, i)
            elif who != what:
                other = replicas[what]
                if kind == "sync":
                    sync_pair(state, other)
                elif kind == "merge":
                    state.merge(other)
                else:
                    state.apply_changes(other.changes_since(state.heads()))
        except (NotFoundError, RemoteProtocolError):
            pass  # absent asset, or a junk root map our writes refuse to write into
        for r in replicas:
            document._ASSETS_READ.clear()  # a read kept for these heads must not answer for the index
            truth = _every_asset_read_afresh(r)
            cids = {*CIDS, *r._keys(r._root_map("assets"))}
            for cid in cids:  # one asset, as the gateway asks: before the index caught up ...
                assert r.asset(cid) == _read_afresh(r, cid), cid
            assert r.assets() == truth
            assert r.assets("vip") == [a for a in truth if "vip" in a.tags]
            for cid in cids:  # ... and after
                assert r.asset(cid) == _read_afresh(r, cid), cid


def test_change_actor_tables_and_sync_message_chunks_read_as_the_binding_reads_them() -> None:
    a, b = replica("ta"), replica("tb")
    a.put_asset(record("bafk1", {"stage"}))
    b.merge(a)
    b.tag_asset("bafk1", add={"vip"})  # b's change touches the asset map a's skeleton made
    b.put_member("node-m", b"chain", "edge", "M", 1.0)
    from mesh.state.document import change_chunk_actors, change_chunk_ids, sync_message_changes

    for change in b._doc.get_changes([]):
        assert change_chunk_actors(change.bytes) == (change.actor_id, *change.other_actor_ids)
    assert change_chunk_actors(b"not a change") is None
    fresh = replica("tc")
    had = {c.hash for c in fresh._doc.get_changes([])}  # the genesis
    sent, state_b, state_c = [], b.new_sync_state(), fresh.new_sync_state()
    for _ in range(20):
        message, reply = b.generate_sync_message(state_b), None
        if message is not None:
            sent.extend(sync_message_changes(message))
            fresh.receive_sync_message(state_c, message)
        reply = fresh.generate_sync_message(state_c)
        if reply is not None:
            assert sync_message_changes(reply) == []  # the fresh replica has nothing to give
            b.receive_sync_message(state_b, reply)
        if message is None and reply is None:
            break
    carried = [digest for digest, _ in change_chunk_ids(sent)]
    assert sorted(carried) == sorted(c.hash for c in b._doc.get_changes([]) if c.hash not in had)
    assert all(change_chunk_actors(chunk) is not None for chunk in sent)
    assert fresh.heads() == b.heads()
    assert sync_message_changes(b"\x42\x05") is None and sync_message_changes(b"") is None


def test_a_reader_reads_the_live_document_and_knows_when_it_moved() -> None:
    s = replica("rd")
    s.put_asset(record("bafk1", {"stage"}))
    s.assets()  # the owner has an index: its reader takes the owner's read
    reader = s.reader()
    assert [r.cid for r in reader.assets()] == ["bafk1"] and reader.unmoved()
    with pytest.raises((AttributeError, TypeError)):
        reader.put_asset(record("bafk2"))  # a reader has no writes
    assert s.assets() == [reader.asset("bafk1")]
    s.put_asset(record("bafk2"))
    assert not reader.unmoved()  # what it reads now is not what it was made at
    assert reader.heads() != s.heads()
    fresh = replica("rd2")
    fresh.merge(s)
    cold = fresh.reader()  # no index yet: the reader reads every asset and the owner adopts its read
    assert [r.cid for r in cold.assets()] == ["bafk1", "bafk2"]
    fresh.adopt_index(cold)
    fresh.tag_asset("bafk1", add={"vip"})
    assert [r.cid for r in fresh.assets("vip")] == ["bafk1"]


def test_changes_resting_on_an_older_head_or_on_a_change_that_waited_are_all_named() -> None:
    """A peer's change that depends on a head we had earlier (we moved on since) is named from its
    chunk; a change resting on one that had waited for a missing dependency, and came in unnamed
    with this batch, sends the apply to the history, so the one that waited is named too."""
    ours, peer = replica("po"), replica("pp")
    ours.put_asset(record("bafk1"))
    peer.merge(ours)
    ours.tag_asset("bafk1", add={"vip"})  # we move on; the peer's next change builds on our old head
    start = peer.heads()
    peer.tag_asset("bafk1", add={"door"})
    before = ours.heads()
    new = ours.apply_changes(peer.changes_since(start))
    assert [c.hash for c in ours._changes_since(before)] == new and len(new) == 1
    blind = replica("pb")
    blind.merge(peer)
    made = []
    for edit in ({"add": {"stage"}}, {"add": {"day-1"}}, {"remove": {"stage"}}):  # s, then q on s, then x on q
        before_edit = blind.heads()
        blind.tag_asset("bafk1", **edit)
        (change,) = blind._doc.get_changes(before_edit)
        made.append(change)
    s_, q, x = made
    behind = replica("pq")
    behind.merge(peer)
    assert behind.apply_changes(q.bytes) == []  # q waits for s
    gained = behind.apply_changes(s_.bytes + x.bytes)  # s lets q in; x rests on q, which the chunks do not show
    assert sorted(gained) == sorted([s_.hash, q.hash, x.hash])  # q is named too: the history was asked
    assert sorted(behind.change_hashes_since(peer.heads())) == sorted(gained)
    fresh = replica("pf")
    fresh.apply_changes(ours.changes_since([]))  # everything at once, in one batch: named from chunks
    later = replica("pl")
    later.merge(fresh)
    assert sorted(later.heads()) == sorted(ours.heads())


def test_a_new_assets_skeleton_resting_on_genesis_is_named_from_its_chunk_without_the_history() -> None:
    """A skeleton change (a new asset's, a consent subject's) depends on genesis, never a head of a
    state that holds anything: every state holds genesis, so the chunks vouch for it."""
    ours, peer = replica("go"), replica("gp")
    ours.put_asset(record("bafk1"))
    peer.merge(ours)
    start = peer.heads()
    peer.put_asset(record("bafk2"))  # a skeleton on genesis, then the record on it and on our head
    chunks = peer.changes_since(start)
    assert len(split_chunks(chunks)) == 2
    walks = []
    real = ours._changes_since
    ours._changes_since = lambda heads: walks.append(heads) or real(heads)
    before = ours.heads()
    new = ours.apply_changes(chunks)
    assert walks == []
    assert sorted(new) == sorted(c.hash for c in real(before)) and len(new) == 2
    assert [r.cid for r in ours.assets()] == ["bafk1", "bafk2"]
