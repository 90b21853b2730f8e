"""The on-disk store passes the shared chunk-store conformance suite, and keeps its crash rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from chunkstore_conformance import ChunkStoreConformance
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.content.chunking import CHUNK_BYTES_START
from mesh.content.cid import BLAKE3, DAG_CBOR, HASHES, RAW, SHA2_256, Cid, cid_for_raw
from mesh.drivers.filestore import FileStore, _hash_and_digest, checksum
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


def _read(store: FileStore, cids: list[str], threads: int | None = None, rehash: bool = False) -> bytes:
    """The files' bytes as `mesh cat` reads them (each view copied before the next is asked for)."""
    return b"".join(bytes(view) for view in store.read_objects(cids, threads, rehash=rehash))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_objects_streams_files_in_order(tmp_path: Path, threads: int) -> None:
    start = CHUNK_BYTES_START
    sizes = [0, 1, start - 1, start, start + 1, 3 * start + 5, 300_000, 300_001, 10, 0, 2 * start]
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, sizes)
    got = bytearray()
    _read_all(store, cids + cids[::-1], threads, got)
    assert bytes(got) == b"".join(datas + datas[::-1])
    assert _read(store, cids, threads) == b"".join(datas)


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


# ---- local integrity checksums (XXH3-128 in the index; docs/content-addressing.md) ---------------

def _checksums(store: FileStore) -> dict[str, bytes | None]:
    return dict(store._db.execute("SELECT cid, xxh3 FROM chunks").fetchall())


def _set_checksums(store: FileStore, value: bytes | None, cid: str | None = None) -> None:
    """What an older store (NULL) or a damaged index (wrong bytes) looks like."""
    where, args = ("WHERE cid = ?", (value, cid)) if cid else ("", (value,))
    store._db.execute(f"UPDATE chunks SET xxh3 = ? {where}", args)


def test_every_way_in_records_the_checksum_of_the_checked_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    cids, _ = _add_files(store, tmp_path, [3 * CHUNK_BYTES_START + 1, 10])  # add: chunks and a manifest
    blocks = [hashlib.shake_256(bytes([i])).digest(4000 + i) for i in range(4)]
    assert store.put(cid_for_raw(blocks[0]), blocks[0])  # one chunk from a peer
    assert store.put_many([(cid_for_raw(b), b) for b in blocks[1:]]) == [None] * 3  # a swarm's batch
    recorded = _checksums(store)
    assert len(recorded) == 4 + 1 + 1 + 4
    for cid, xxh3 in recorded.items():
        assert xxh3 == checksum(store._chunk_path(cid).read_bytes()), cid
    assert xxhash.xxh3_128_digest(blocks[2]) == recorded[str(cid_for_raw(blocks[2]))]


def test_a_wrong_checksum_fails_the_local_read_not_rehash_and_verify_fixes_it(tmp_path: Path) -> None:
    """Tells the two checks apart: intact bytes, a wrong checksum in the index."""
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, [3 * CHUNK_BYTES_START + 1])
    _, chunks = store.object_chunks(cids[0])
    _set_checksums(store, b"\x00" * 16, chunks[1])
    with pytest.raises(CorruptChunkError, match=chunks[1]):
        _read(store, cids)
    assert b"".join(bytes(v) for v in store.read_objects(cids, rehash=True)) == datas[0]
    assert _read(store, cids[:1], threads=1, rehash=True) == datas[0]
    report = store.verify()
    assert report.checksums_wrong == (chunks[1],) and report.corrupt == () and report.checksums_added == 0
    assert _read(store, cids[:1], threads=1) == datas[0]
    assert store.verify().checksums_wrong == ()


def test_reads_that_leave_the_node_rehash_even_when_the_checksum_was_forged(tmp_path: Path) -> None:
    """Someone who can write chunk files can rewrite the index too: peers and HTTP get BLAKE3."""
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, [2 * CHUNK_BYTES_START])
    _, chunks = store.object_chunks(cids[0])
    forged = bytearray(datas[0][CHUNK_BYTES_START:])
    forged[7] ^= 0x80
    store._chunk_path(chunks[1]).write_bytes(bytes(forged))
    _set_checksums(store, checksum(bytes(forged)), chunks[1])
    for serve in (store.get, store.read_chunk):  # the runtime, gateway, export and health call these
        with pytest.raises(CorruptChunkError, match=chunks[1]):
            serve(Cid.parse(chunks[1]))
    with pytest.raises(CorruptChunkError, match=chunks[1]):
        b"".join(bytes(v) for v in store.read_objects(cids, rehash=True))
    assert store.verify().corrupt == (chunks[1],)


def test_a_store_written_by_older_code_is_migrated_and_read_with_blake3(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, [3 * CHUNK_BYTES_START + 1, 100])
    store._db.execute("ALTER TABLE chunks DROP COLUMN xxh3")  # the schema before checksums
    store.close()
    old = FileStore(tmp_path / "s")  # migrates in place, no user step
    assert set(_checksums(old).values()) == {None}
    assert _read(old, cids) == b"".join(datas)
    _, chunks = old.object_chunks(cids[0])
    _damage(old._chunk_path(chunks[2]), "flip")
    for threads in (1, 2):
        with pytest.raises(CorruptChunkError, match=chunks[2]):
            _read(old, cids, threads)
    report = old.verify()
    assert report.corrupt == (chunks[2],) and report.checksums_added == len(chunks) - 1 + 1 + 1
    assert None not in _checksums(old).values()
    assert old.verify().checksums_added == 0


@pytest.mark.parametrize("rehash", [False, True])
def test_any_flipped_bit_anywhere_in_a_chunk_stops_the_read_there(tmp_path: Path, rehash: bool) -> None:
    store = FileStore(tmp_path / "s")
    cids, datas = _add_files(store, tmp_path, [2 * CHUNK_BYTES_START + 3, 5000])
    _, chunks = store.object_chunks(cids[0])
    offsets = {chunk: index * CHUNK_BYTES_START for index, chunk in enumerate(chunks)}
    offsets[cids[1]] = len(datas[0])  # the small file is its single chunk
    whole = b"".join(datas)

    @settings(max_examples=40, deadline=None)
    @given(st.data())
    def flip_one_bit(data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(sorted(offsets)))
        path = store._chunk_path(victim)
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[data.draw(st.integers(0, len(original) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(damaged))
        try:
            got = bytearray()
            with pytest.raises(CorruptChunkError) as raised:
                for view in store.read_objects(cids, threads=2, rehash=rehash):
                    got += view
            assert raised.value.cid == victim
            assert bytes(got) == whole[:offsets[victim]]  # what came before it, nothing of it
        finally:
            path.write_bytes(original)

    flip_one_bit()


@pytest.mark.parametrize("cached_only", [False, True])
@pytest.mark.parametrize("how", ["flip", "truncate", "append", "remove"])
def test_reads_for_peers_refuse_damaged_chunks(tmp_path: Path, how: str, cached_only: bool) -> None:
    """What a peer is sent is checked against the checksum recorded when the chunk entered:
    bit rot on disk is never sent (the peer would refuse it and ban us for it)."""
    import os as os_module

    store = FileStore(tmp_path / "s")
    data = os_module.urandom(300_000)
    cid = cid_for_raw(data)
    store.put(cid, data)

    def read() -> bytearray:
        try:
            return store.read_for_peer(str(cid), cached_only=cached_only)
        except BlockingIOError:  # not in the page cache (or no RWF_NOWAIT here): what the agent then does
            return store.read_for_peer(str(cid))

    assert read() == data
    _damage(store._chunk_path(str(cid)), how)
    with pytest.raises(CorruptChunkError):
        read()
    with pytest.raises(NotFoundError):
        store.read_for_peer(str(cid_for_raw(b"never stored")))
