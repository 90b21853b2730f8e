"""The on-disk store passes the shared chunk-store conformance suite, and keeps its crash rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from chunkstore_conformance import ChunkStoreConformance
from hypothesis import given
from hypothesis import strategies as st

from mesh.content.chunking import CHUNK_BYTES_START
from mesh.content.cid import BLAKE3, DAG_CBOR, HASHES, RAW, SHA2_256, Cid, cid_for_raw
from mesh.drivers.filestore import FileStore, _hash_and_digest
from mesh.errors import CorruptChunkError, NotFoundError


class TestFileStoreConformance(ChunkStoreConformance):
    def make_store(self, tmp_path: Path) -> FileStore:
        return FileStore(tmp_path / "store")

    def corrupt(self, store: FileStore, cid: Cid) -> None:
        path = store._chunk_path(str(cid))
        raw = bytearray(path.read_bytes() or b"\x00")
        raw[0] ^= 0xFF
        path.write_bytes(bytes(raw))


def test_put_is_durable_across_reopen(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    data = b"chunk bytes" * 100
    cid = cid_for_raw(data)
    assert store.put(cid, data) is True
    store.close()
    again = FileStore(tmp_path / "s")
    assert again.get(cid) == data
    assert not list((tmp_path / "s" / "tmp").iterdir())


def test_unflushed_batch_is_invisible_and_discarded(tmp_path: Path) -> None:
    """Chunks staged but not committed are neither indexed nor left behind by discard."""
    store = FileStore(tmp_path / "s")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    with store.importing():
        added = store.add_file(src, "node")
        assert not store.has(Cid.parse(added.cid))
        store.discard()
    assert store.usage() == (0, 0)
    assert not list((tmp_path / "s" / "tmp").iterdir())


def test_release_inventory_reports_manifests_and_present_chunks(tmp_path: Path) -> None:
    from mesh.content.manifest import DirEntry, DirManifest

    store = FileStore(tmp_path / "s")
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(hashlib.shake_256(b"big").digest(4 * CHUNK_BYTES_START))  # four chunks and a manifest
    small.write_bytes(b"hello")
    with store.importing():
        added = [store.add_file(p, "node") for p in (big, small)]
        store.commit()
    root = DirManifest.from_entries([
        DirEntry(a.path.rsplit("/", 1)[-1], Cid.parse(a.cid), a.size, "application/octet-stream") for a in added
    ])
    store.put(root.cid, root.encode())
    manifests, present = store.release_inventory(str(root.cid))
    assert [cid for cid, _ in manifests] == [str(root.cid), added[0].cid]
    assert len(present) == 5 and added[1].cid in present
    _, chunks = store.object_chunks(added[0].cid)
    store.delete(Cid.parse(chunks[2]))
    assert len(store.release_inventory(str(root.cid))[1]) == 4


def test_put_many_stores_good_chunks_and_names_the_bad_one(tmp_path: Path) -> None:
    from mesh.errors import CorruptChunkError

    store = FileStore(tmp_path / "s")
    blocks = [hashlib.shake_256(bytes([i])).digest(5000 + i) for i in range(20)]
    items = [(cid_for_raw(b), b) for b in blocks]
    items[7] = (items[7][0], b"not what the CID names")
    results = store.put_many(items + [items[0]])  # a duplicate in the same batch is fine
    assert isinstance(results[7], CorruptChunkError)
    assert [r for i, r in enumerate(results) if i != 7] == [None] * 20
    store.close()
    again = FileStore(tmp_path / "s")
    assert all(again.get(cid) == data for i, (cid, data) in enumerate(items) if i != 7)
    assert not again.has(items[7][0])
    assert not list((tmp_path / "s" / "tmp").iterdir())


def _add_files(store: FileStore, tmp_path: Path, sizes: list[int]) -> tuple[list[str], list[bytes]]:
    cids, datas = [], []
    tmp_path.mkdir(exist_ok=True)
    with store.importing():
        for index, size in enumerate(sizes):
            path = tmp_path / f"f{index}.bin"
            path.write_bytes(hashlib.shake_256(index.to_bytes(4, "big")).digest(size) if size else b"")
            cids.append(store.add_file(path, "node").cid)
            datas.append(path.read_bytes())
        store.commit()
    return cids, datas


def _read_all(store: FileStore, cids: list[str], threads: int, got: bytearray) -> None:
    for view in store.read_objects(cids, threads):
        got += view


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_objects_streams_files_in_order(tmp_path: Path, threads: int) -> None:
    start = CHUNK_BYTES_START
    sizes = [0, 1, start - 1, start, start + 1, 3 * start + 5, 300_000, 300_001, 10, 0, 2 * start]
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, sizes)
    got = bytearray()
    _read_all(store, cids + cids[::-1], threads, got)
    assert bytes(got) == b"".join(datas + datas[::-1])
    assert b"".join(store.iter_objects_parallel(cids, threads)) == b"".join(datas)


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif how == "truncate":
        del raw[-1]
    elif how == "append":
        raw += b"\x00"
    if how == "remove":
        path.unlink()
    else:
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("how", ["flip", "truncate", "append", "remove"])
def test_read_objects_stops_at_a_corrupt_chunk_and_names_it(tmp_path: Path, threads: int, how: str) -> None:
    """Bytes before the bad chunk arrive verified; none of it or after it; the error names it."""
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, [4 * CHUNK_BYTES_START + 7, 1000])
    _, chunks = store.object_chunks(cids[0])
    _damage(store._chunk_path(chunks[2]), how)
    got = bytearray()
    with pytest.raises(CorruptChunkError) as raised:
        _read_all(store, cids, threads, got)
    assert raised.value.cid == chunks[2] and chunks[2] in str(raised.value)
    assert bytes(got) == datas[0][:2 * CHUNK_BYTES_START]


@pytest.mark.parametrize("threads", [1, 2])
def test_read_objects_stops_inside_a_group_of_small_files(tmp_path: Path, threads: int) -> None:
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, [100_000, 100_001, 100_002, 100_003])
    _damage(store._chunk_path(cids[2]), "flip")
    got = bytearray()
    with pytest.raises(CorruptChunkError) as raised:
        _read_all(store, cids, threads, got)
    assert raised.value.cid == cids[2]
    assert bytes(got) == datas[0] + datas[1]


def test_read_objects_refuses_unknown_files_before_any_byte(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    cids, _ = _add_files(store, tmp_path, [10])
    with pytest.raises(NotFoundError):
        store.read_objects([cids[0], str(cid_for_raw(b"never stored"))])
    big = _add_files(store, tmp_path / "big", [3 * CHUNK_BYTES_START])[0][0]
    _, chunks = store.object_chunks(big)
    store.delete(Cid.parse(chunks[1]))
    with pytest.raises(NotFoundError, match=chunks[1]):
        store.read_objects([cids[0], big])


@given(st.binary(max_size=64), st.sampled_from([BLAKE3, SHA2_256]), st.sampled_from([RAW, DAG_CBOR]))
def test_indexed_cid_decoding_matches_cid_parse(data: bytes, hash_code: int, codec: int) -> None:
    cid = Cid(codec, hash_code, HASHES[hash_code](data).digest())
    assert _hash_and_digest(str(cid)) == (hash_code, cid.digest)
