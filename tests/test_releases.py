"""Signed releases and publications (issue 5, requirement 1): signatures, current pointer, contents."""

from __future__ import annotations

import random

import automerge.core as am
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.content.chunking import CHUNK_BYTES_MIN
from mesh.content.cid import Cid, cid_for_raw
from mesh.content.manifest import DirEntry, DirManifest, FileManifest
from mesh.content.store import MemoryChunkStore
from mesh.errors import CredentialError, NotFoundError, RemoteProtocolError, UsageError
from mesh.ids import b32encode
from mesh.state import releases as rel
from mesh.state.document import MeshState, actor_id
from mesh.state.membership import CLOCK_SKEW_S, Role
from mesh.testing.identities import MemberIdentity, TestMesh

NOW = 1_700_000_000.0
LATER = NOW + 3600.0


@pytest.fixture(scope="module")
def mesh() -> TestMesh:
    return TestMesh(random.Random(5), NOW - 60.0)


@pytest.fixture(scope="module")
def edge(mesh: TestMesh) -> MemberIdentity:
    return mesh.add_member("door-box", Role.EDGE, NOW - 50.0)


@pytest.fixture(scope="module")
def organizer2(mesh: TestMesh) -> MemberIdentity:
    return mesh.add_member("second-laptop", Role.ORGANIZER, NOW - 50.0)


def root_cid(tag: str = "a") -> str:
    entry = DirEntry(f"{tag}.txt", cid_for_raw(tag.encode()), len(tag), "text/plain")
    return str(DirManifest((entry,)).cid)


def make_release(who: MemberIdentity, name: str = "v1", seq: int = 1, at: float = NOW,
                 root: str | None = None) -> tuple[str, bytes]:
    return rel.create_release(who.authority_public_key, who.key, who.chain, name, seq,
                              root or root_cid(name), at)


def make_publication(who: MemberIdentity, release_id: str, at: float) -> tuple[str, bytes]:
    return rel.create_publication(who.authority_public_key, who.key, who.chain, release_id, at)


def forged(who: MemberIdentity, kind: str, body: dict) -> tuple[str, bytes]:
    """A blob signed by `who` without the organizer check that create_* performs."""
    return rel._sign_blob(who.key, who.chain, kind, body)


def release_body(who: MemberIdentity, mesh_id: str, at: float = NOW) -> dict:
    return {"kind": "release", "mesh": mesh_id, "name": "evil", "seq": 9, "root": root_cid("evil"),
            "publisher": who.node_id, "created_at": at}


def publish_body(who: MemberIdentity, mesh_id: str, release_id: str, at: float) -> dict:
    return {"kind": "publish", "mesh": mesh_id, "release_id": release_id, "at": at,
            "publisher": who.node_id}


def new_state(name: str = "a") -> MeshState:
    return MeshState(actor_id(name, name.encode()[:8].ljust(8, b"_")))


def store_release(state: MeshState, made: tuple[str, bytes]) -> str:
    state.put_release(*made)
    return made[0]


def publish(state: MeshState, who: MemberIdentity, release_id: str, at: float) -> str:
    pub_id, blob = make_publication(who, release_id, at)
    state.put_publication(pub_id, blob)
    return pub_id


def current_id(state: MeshState, mesh: TestMesh, now: float = LATER) -> str | None:
    found = rel.current_release(state, mesh.authority_public_key, now)
    return found.id if found else None


# --- signing and verifying ------------------------------------------------------------------------


def test_release_and_publication_round_trip(mesh: TestMesh) -> None:
    root = root_cid("site")
    release_id, blob = make_release(mesh.founder, "friday v2", 3, NOW, root)
    release = rel.verify_release(blob, mesh.authority_public_key, LATER)
    assert release == rel.Release(
        id=release_id, mesh_id=mesh.mesh_id, name="friday v2", seq=3, root=root,
        publisher=mesh.founder.node_id, created_at=NOW,
    )
    chain, (body, signature) = cbor2.loads(blob)
    assert chain == mesh.founder.chain and len(signature) == 64
    import blake3

    assert release_id == b32encode(blake3.blake3(body).digest())[:16] == rel.statement_id(body)
    pub_id, pub_blob = make_publication(mesh.founder, release_id, NOW + 5)
    publication = rel.verify_publication(pub_blob, mesh.authority_public_key, LATER)
    assert publication == rel.Publication(pub_id, release_id, NOW + 5, mesh.founder.node_id)


def test_create_refuses_bad_arguments(mesh: TestMesh) -> None:
    with pytest.raises(UsageError):
        make_release(mesh.founder, name=" padded ")
    with pytest.raises(UsageError):
        make_release(mesh.founder, seq=0)
    with pytest.raises(UsageError):
        make_release(mesh.founder, root=str(cid_for_raw(b"not a manifest")))  # raw, not dag-cbor
    with pytest.raises(UsageError):
        make_publication(mesh.founder, "NOT-AN-ID", NOW)


def test_an_edge_cannot_sign_a_release_or_publication(mesh: TestMesh, edge: MemberIdentity) -> None:
    with pytest.raises(CredentialError, match="only organizers"):
        make_release(edge)
    with pytest.raises(CredentialError, match="only organizers"):
        make_publication(edge, "a" * 16, NOW)
    _, blob = forged(edge, "release", release_body(edge, mesh.mesh_id))
    with pytest.raises(CredentialError, match="only organizers"):
        rel.verify_release(blob, mesh.authority_public_key, LATER)
    _, blob = forged(edge, "publish", publish_body(edge, mesh.mesh_id, "a" * 16, NOW))
    with pytest.raises(CredentialError, match="only organizers"):
        rel.verify_publication(blob, mesh.authority_public_key, LATER)


def test_forged_authority_is_refused(mesh: TestMesh) -> None:
    rogue = TestMesh(random.Random(99), NOW - 60.0)
    _, blob = make_release(rogue.founder)  # a valid release of another mesh
    with pytest.raises(CredentialError, match="another mesh"):
        rel.verify_release(blob, mesh.authority_public_key, LATER)
    # claims our mesh, but its chain is rooted in the rogue authority
    _, blob = forged(rogue.founder, "release", release_body(rogue.founder, mesh.mesh_id))
    with pytest.raises(CredentialError, match="credential is invalid"):
        rel.verify_release(blob, mesh.authority_public_key, LATER)
    # our organizer's chain, but the signature is the rogue's key over a body naming our organizer
    body = publish_body(mesh.founder, mesh.mesh_id, "a" * 16, NOW)
    _, blob = rel._sign_blob(rogue.founder.key, mesh.founder.chain, "publish", body)
    with pytest.raises(CredentialError, match="bad signature"):
        rel.verify_publication(blob, mesh.authority_public_key, LATER)


def test_tampered_blobs_are_refused(mesh: TestMesh) -> None:
    _, blob = make_release(mesh.founder)
    chain, (body, signature) = cbor2.loads(blob)
    fields = cbor2.loads(body)
    for key, value in [("name", "v2"), ("seq", 2), ("root", root_cid("x")), ("created_at", NOW + 1)]:
        changed = cbor2.dumps(dict(fields, **{key: value}), canonical=True)
        tampered = cbor2.dumps([chain, [changed, signature]], canonical=True)
        with pytest.raises(CredentialError, match="bad signature"):
            rel.verify_release(tampered, mesh.authority_public_key, LATER)
    # a release signature cannot be replayed as a publication (domain separation)
    _, pub = make_publication(mesh.founder, "a" * 16, NOW)
    pub_chain, (pub_body, pub_sig) = cbor2.loads(pub)
    swapped = cbor2.dumps([pub_chain, [pub_body, signature]], canonical=True)
    with pytest.raises(CredentialError):
        rel.verify_publication(swapped, mesh.authority_public_key, LATER)


def test_time_rules(mesh: TestMesh) -> None:
    _, blob = make_release(mesh.founder, at=NOW + 2 * CLOCK_SKEW_S)
    with pytest.raises(CredentialError, match="future"):
        rel.verify_release(blob, mesh.authority_public_key, NOW)
    assert rel.verify_release(blob, mesh.authority_public_key, NOW + 2 * CLOCK_SKEW_S)
    short = TestMesh(random.Random(7), NOW - 60.0, valid_s=120.0)
    _, blob = make_release(short.founder, at=NOW)
    # valid long after the signer's credential expired: it was an organizer when it signed
    assert rel.verify_release(blob, short.authority_public_key, NOW + 86400.0)
    with pytest.raises(CredentialError, match="expired"):
        make_release(short.founder, at=NOW + 3600.0)


def test_a_revoked_organizer_cannot_move_the_pointer(mesh: TestMesh, organizer2: MemberIdentity) -> None:
    state = new_state()
    first = store_release(state, make_release(mesh.founder, "v1"))
    stolen = store_release(state, make_release(organizer2, "evil", at=NOW + 1))
    publish(state, mesh.founder, first, NOW + 10)
    state.put_revocation(organizer2.node_id, mesh.revocation(organizer2.node_id, NOW + 20))
    publish(state, organizer2, stolen, NOW + 30)  # after its revocation: ignored
    assert current_id(state, mesh) == first
    publish(state, organizer2, stolen, NOW + 15)  # before it: still valid
    assert current_id(state, mesh) == stolen


# --- the current pointer --------------------------------------------------------------------------


def test_current_is_the_latest_valid_publication_and_previous_walks_back(mesh: TestMesh) -> None:
    state = new_state()
    assert current_id(state, mesh) is None and rel.previous_release(state, mesh.authority_public_key, LATER) is None
    ids = [store_release(state, make_release(mesh.founder, f"v{i}", i, NOW + i)) for i in (1, 2, 3)]
    assert current_id(state, mesh) is None  # created is not published
    for i, release_id in enumerate(ids):
        publish(state, mesh.founder, release_id, NOW + 10 * (i + 1))
    book = rel.ReleaseBook(state, mesh.authority_public_key, LATER)
    assert book.current().id == ids[2] and book.previous().id == ids[1]
    assert book.next_seq() == 4
    publish(state, mesh.founder, ids[1], NOW + 40)  # roll back to v2
    book = rel.ReleaseBook(state, mesh.authority_public_key, LATER)
    assert book.current().id == ids[1] and book.previous().id == ids[0]  # not a toggle back to v3
    history = rel.release_history(state, mesh.authority_public_key, LATER)
    assert [h.release.id for h in history] == ids[::-1]
    assert [(h.current, h.previous) for h in history] == [(False, False), (True, False), (False, True)]
    assert [h.published_at for h in history] == [NOW + 30, NOW + 40, NOW + 10]
    publish(state, mesh.founder, ids[0], NOW + 50)
    assert current_id(state, mesh) == ids[0]
    assert rel.previous_release(state, mesh.authority_public_key, LATER) is None  # v1 came first


def test_invalid_pointers_are_ignored_even_when_later(mesh: TestMesh, edge: MemberIdentity) -> None:
    state = new_state()
    good = store_release(state, make_release(mesh.founder, "v1"))
    other = store_release(state, make_release(mesh.founder, "v2", 2))
    publish(state, mesh.founder, good, NOW + 10)
    pub_id, blob = forged(edge, "publish", publish_body(edge, mesh.mesh_id, other, NOW + 100))
    state.put_publication(pub_id, blob)  # an edge's pointer
    _, blob = make_publication(mesh.founder, other, NOW + 200)
    state.put_publication("aaaaaaaaaaaaaaaa", blob)  # valid, but stored under another id
    state.put_publication("bbbbbbbbbbbbbbbb", b"\x00junk")
    publish(state, mesh.founder, "cccccccccccccccc", NOW + 300)  # a release this state lacks
    pub_id, blob = make_publication(mesh.founder, other, NOW + 400)
    chain, (body, signature) = cbor2.loads(blob)
    bad_sig = cbor2.dumps([chain, [body, bytes(64)]], canonical=True)
    state.put_publication(pub_id, bad_sig)
    assert current_id(state, mesh) == good
    # a release record stored under a wrong id, or forged by an edge, is not a release either
    state.put_release("dddddddddddddddd", make_release(mesh.founder, "v3", 3)[1])
    forged_id, forged_blob = forged(edge, "release", release_body(edge, mesh.mesh_id))
    state.put_release(forged_id, forged_blob)
    publish(state, mesh.founder, "dddddddddddddddd", NOW + 500)
    publish(state, mesh.founder, forged_id, NOW + 600)
    assert current_id(state, mesh) == good
    names = [h.release.name for h in rel.release_history(state, mesh.authority_public_key, LATER)]
    assert names == ["v2", "v1"]


def test_a_pointer_waits_for_its_release_record(mesh: TestMesh) -> None:
    state = new_state()
    first = store_release(state, make_release(mesh.founder, "v1"))
    publish(state, mesh.founder, first, NOW + 10)
    second_id, second_blob = make_release(mesh.founder, "v2", 2)
    publish(state, mesh.founder, second_id, NOW + 20)
    assert current_id(state, mesh) == first
    state.put_release(second_id, second_blob)
    assert current_id(state, mesh) == second_id


def test_concurrent_publications_on_two_replicas_converge(mesh: TestMesh, organizer2: MemberIdentity) -> None:
    base = new_state("base")
    ids = [store_release(base, make_release(mesh.founder, f"v{i}", i)) for i in (1, 2, 3)]
    a = MeshState.load(base.save(), actor_id("a", b"a" * 8))
    b = MeshState.load(base.save(), actor_id("b", b"b" * 8))
    publish(a, mesh.founder, ids[0], NOW + 10)
    publish(b, organizer2, ids[1], NOW + 10)  # same time: the greater release id wins
    publish(b, organizer2, ids[2], NOW + 5)
    assert current_id(a, mesh) == ids[0]
    a.merge(b)
    b.merge(a)
    assert a.publication_blobs() == b.publication_blobs() and len(a.publication_blobs()) == 3
    winner = max(ids[:2])
    assert current_id(a, mesh) == current_id(b, mesh) == winner


def test_publication_time_stays_ahead_of_the_latest(mesh: TestMesh) -> None:
    state = new_state()
    first = store_release(state, make_release(mesh.founder))
    book = rel.ReleaseBook(state, mesh.authority_public_key, NOW)
    assert rel.publication_time(book, NOW) == NOW
    publish(state, mesh.founder, first, NOW + 100)  # another organizer's clock is ahead
    book = rel.ReleaseBook(state, mesh.authority_public_key, NOW + 100)
    assert rel.publication_time(book, NOW) == NOW + 100 + rel.PUBLISH_STEP_S
    with pytest.raises(UsageError, match="clock"):
        rel.publication_time(book, NOW - CLOCK_SKEW_S)


def test_publications_survive_save_and_load_and_junk() -> None:
    state = new_state()
    state.put_publication("p1", b"one")
    loaded = MeshState.load(state.save(), actor_id("c", b"c" * 8))
    loaded.put_publication("p2", b"two")
    assert loaded.publication_blobs() == {"p1": b"one", "p2": b"two"}
    assert new_state("empty").publication_blobs() == {}
    raw = am.Document.load(loaded.save())  # a member overwrites the map with a scalar
    raw.set_actor(b"\xee" * 16)
    heads = raw.get_heads()
    with raw.transaction() as tx:
        tx.put(am.ROOT, "publications", am.ScalarType.Str, "junk")
    loaded.apply_changes(b"".join(c.bytes for c in raw.get_changes(heads)))
    assert loaded.publication_blobs() == {}
    loaded.put_publication("p3", b"three")
    assert loaded.publication_blobs() == {"p3": b"three"}


# --- release contents -----------------------------------------------------------------------------


def _content_store() -> tuple[MemoryChunkStore, Cid, list[Cid], Cid]:
    store = MemoryChunkStore()
    small = cid_for_raw(b"<html>")
    store.put(small, b"<html>")
    chunks = [cid_for_raw(bytes([i])) for i in range(3)]
    big = FileManifest(2 * CHUNK_BYTES_MIN + 1, CHUNK_BYTES_MIN, tuple(chunks))
    store.put(big.cid, big.encode())
    root = DirManifest.from_entries([
        DirEntry("video/clip.mp4", big.cid, big.size, "video/mp4"),
        DirEntry("index.html", small, 6, "text/html"),
        DirEntry("copy.html", small, 6, "text/html"),
    ])
    store.put(root.cid, root.encode())
    return store, root.cid, chunks, big.cid


def test_release_files_and_chunks() -> None:
    store, root, chunks, big = _content_store()
    files = rel.release_files(store, str(root))
    assert [f.path for f in files] == ["copy.html", "index.html", "video/clip.mp4"]
    path, cid, size, media_type = files[2]
    assert (path, cid, size, media_type) == ("video/clip.mp4", big, 2 * CHUNK_BYTES_MIN + 1, "video/mp4")
    small = cid_for_raw(b"<html>")
    assert rel.release_chunks(store, root) == [root, small, big, *chunks]
    assert rel.release_totals(store, root) == (2 * CHUNK_BYTES_MIN + 13, 3)
    store.delete(big)
    with pytest.raises(NotFoundError):
        rel.release_chunks(store, root)
    assert rel.release_chunks(store, root, partial=True) == [root, small, big]
    store.delete(root)
    with pytest.raises(NotFoundError):
        rel.release_files(store, root)
    assert rel.release_chunks(store, root, partial=True) == [root]
    assert rel.release_totals(store, root) is None


def test_a_root_that_is_not_a_directory_manifest() -> None:
    store, _, _, big = _content_store()
    with pytest.raises(RemoteProtocolError, match="not a directory manifest"):
        rel.release_files(store, big)


# --- hostile input --------------------------------------------------------------------------------

fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=8),
    max_leaves=20,
)


def _verifiers(mesh: TestMesh):
    return (
        lambda blob: rel.verify_release(blob, mesh.authority_public_key, LATER),
        lambda blob: rel.verify_publication(blob, mesh.authority_public_key, LATER),
    )


@fuzz
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_only_credential_error(mesh: TestMesh, data: bytes) -> None:
    for verify in _verifiers(mesh):
        with pytest.raises(CredentialError):
            verify(data)


@fuzz
@given(value=cbor_values)
def test_random_cbor_raises_only_credential_error(mesh: TestMesh, value) -> None:
    for candidate in (value, [b"chain", [cbor2.dumps(value, canonical=True), bytes(64)]]):
        blob = cbor2.dumps(candidate, canonical=True)
        for verify in _verifiers(mesh):
            with pytest.raises(CredentialError):
                verify(blob)


@pytest.fixture(scope="module")
def valid_blobs(mesh: TestMesh) -> list[bytes]:
    release_id, blob = make_release(mesh.founder)
    return [blob, make_publication(mesh.founder, release_id, NOW)[1]]


@fuzz
@given(data=st.data())
def test_mutated_blobs_raise_only_credential_error(mesh: TestMesh, valid_blobs: list[bytes], data) -> None:
    which = data.draw(st.sampled_from([0, 1]))
    blob = bytearray(valid_blobs[which])
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    index = data.draw(st.integers(0, len(blob) - 1))
    if action == "flip":
        blob[index] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del blob[index:]
    elif action == "insert":
        blob[index:index] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del blob[index : index + data.draw(st.integers(1, 8))]
    with pytest.raises(CredentialError):
        _verifiers(mesh)[which](bytes(blob))


@fuzz
@given(blobs=st.dictionaries(st.text(min_size=1, max_size=20), st.binary(max_size=64), max_size=6))
def test_junk_in_the_state_never_raises(mesh: TestMesh, blobs: dict[str, bytes]) -> None:
    state = new_state()
    for key, blob in blobs.items():
        state.put_release(key, blob)
        state.put_publication(key, blob)
    assert rel.current_release(state, mesh.authority_public_key, LATER) is None
    assert rel.release_history(state, mesh.authority_public_key, LATER) == []


field_values = st.one_of(
    cbor_values, st.sampled_from([NOW, 1, 2**53, -1.0, float("inf"), "a" * 16, "b" * 200]),
    st.just(root_cid()),
)


@fuzz
@given(data=st.data())
def test_well_shaped_bodies_with_hostile_fields_raise_only_credential_error(
    mesh: TestMesh, data
) -> None:
    kind = data.draw(st.sampled_from(["release", "publish"]))
    body = (release_body(mesh.founder, mesh.mesh_id) if kind == "release"
            else publish_body(mesh.founder, mesh.mesh_id, "a" * 16, NOW))
    for key in data.draw(st.sets(st.sampled_from(sorted(set(body) - {"kind"})), min_size=1)):
        body[key] = data.draw(field_values)
    _, blob = forged(mesh.founder, kind, body)  # correctly signed by an organizer
    verify = _verifiers(mesh)[0 if kind == "release" else 1]
    try:
        verify(blob)
    except CredentialError:
        pass
