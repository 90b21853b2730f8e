"""The on-disk store passes the shared chunk-store conformance suite, and keeps its crash rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

from chunkstore_conformance import ChunkStoreConformance

from mesh.content.cid import Cid, cid_for_raw
from mesh.drivers.filestore import FileStore


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
    big.write_bytes(hashlib.shake_256(b"big").digest(1 << 20))  # four chunks and a file manifest
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
