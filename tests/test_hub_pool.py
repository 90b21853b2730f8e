"""A hub's chunk pool: stores that share it keep one copy of a chunk they both hold, a rotten
pooled file is never linked into another store, and the pool drops what no store links."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.content.cid import cid_for_raw
from mesh.drivers.filestore import FileStore
from mesh.drivers.hubhome import HubHome
from mesh.errors import NotFoundError


def _stores(tmp_path: Path) -> tuple[HubHome, FileStore, FileStore]:
    hub = HubHome.init(tmp_path / "hub", "co-op")
    a = FileStore(tmp_path / "hub" / "meshes" / "a" / "store", pool=hub.pool_path)
    b = FileStore(tmp_path / "hub" / "meshes" / "b" / "store", pool=hub.pool_path)
    hub.meshes.update({"a": None, "b": None})  # disk_bytes walks these homes' stores
    return hub, a, b


def test_a_chunk_two_stores_hold_is_one_file_on_disk_and_survives_either_delete(tmp_path: Path) -> None:
    hub, a, b = _stores(tmp_path)
    data = os.urandom(200_000)
    cid = cid_for_raw(data)
    assert a.put_many([(cid, data)]) == [None]
    assert b.put(cid, data) is True
    assert os.path.samefile(a._chunk_path(str(cid)), b._chunk_path(str(cid)))
    assert hub.disk_bytes() == len(data)

    a.delete(cid)
    assert hub.sweep_pool() == 0  # b still links it
    assert b.get(cid) == data
    b.delete(cid)
    assert hub.sweep_pool() == len(data)
    assert not list(hub.pool_path.glob("*/*"))


def test_a_rotten_pooled_file_is_replaced_by_the_verified_bytes_not_linked(tmp_path: Path) -> None:
    hub, a, b = _stores(tmp_path)
    data = os.urandom(100_000)
    cid = cid_for_raw(data)
    a.put(cid, data)
    pooled = next(hub.pool_path.glob("*/*"))
    os.unlink(pooled)  # bit rot in the pool's copy (a's own file stays good)
    rotten = bytearray(data)
    rotten[5000] ^= 0x01
    pooled.write_bytes(bytes(rotten))
    assert b.put_many([(cid, data)]) == [None]
    assert b.get(cid) == data  # b wrote the bytes it verified
    assert not os.path.samefile(b._chunk_path(str(cid)), a._chunk_path(str(cid)))
    assert pooled.read_bytes() == data  # and the pool now holds good bytes


def test_bytes_that_fail_their_cid_never_reach_the_pool_or_learn_from_it(tmp_path: Path) -> None:
    hub, a, b = _stores(tmp_path)
    data = os.urandom(50_000)
    cid = cid_for_raw(data)
    a.put(cid, data)
    wrong = [(cid, data[:-1] + bytes([data[-1] ^ 1]))]
    assert b.put_many(wrong)[0] is not None  # refused as corrupt, whatever the pool holds
    try:
        b.get(cid)
        raise AssertionError("b holds a chunk it never verified")
    except NotFoundError:
        pass


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["put", "delete"]), st.integers(0, 5)),
                max_size=30))
def test_the_pool_keeps_exactly_what_some_store_holds(tmp_path_factory, ops) -> None:
    hub, a, b = _stores(tmp_path_factory.mktemp("pool"))
    stores = {"a": a, "b": b}
    blobs = [bytes([i]) * (1000 + i) for i in range(6)]
    held = {"a": set(), "b": set()}
    for which, op, index in ops:
        cid = cid_for_raw(blobs[index])
        if op == "put":
            stores[which].put_many([(cid, blobs[index])])
            held[which].add(index)
        else:
            stores[which].delete(cid)
            held[which].discard(index)
        hub.sweep_pool()
    pooled = {p.name for p in hub.pool_path.glob("*/*")}
    assert pooled == {str(cid_for_raw(blobs[i])) for i in held["a"] | held["b"]}
    for which, store in stores.items():
        for index in held[which]:
            assert store.get(cid_for_raw(blobs[index])) == blobs[index]
    assert hub.disk_bytes() == sum(len(blobs[i]) for i in held["a"] | held["b"])


def test_two_stores_that_stored_a_chunk_at_once_end_with_one_copy(tmp_path: Path) -> None:
    hub, a, b = _stores(tmp_path)
    data = os.urandom(80_000)
    cid = cid_for_raw(data)
    pool, b.pool = b.pool, None  # b writes its copy as if a's were not pooled yet (a race)
    a.put(cid, data)
    b.put(cid, data)
    assert not os.path.samefile(a._chunk_path(str(cid)), b._chunk_path(str(cid)))
    b.pool = pool
    b._link_into_pool([str(cid)])  # what b's flush does once its copy is durable
    assert b.get(cid) == data
    assert os.path.samefile(a._chunk_path(str(cid)), b._chunk_path(str(cid)))
    assert hub.disk_bytes() == len(data)
