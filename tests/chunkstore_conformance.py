"""Behaviour every ChunkStore must show; run it against each implementation.

Two ways in:

    class TestFileChunkStore(ChunkStoreConformance):      # pytest: one test per check
        def make_store(self, tmp_path): return FileChunkStore(tmp_path / "chunks")
        def corrupt(self, store, cid): ...                 # rot the stored bytes in place

    run_conformance(make_store, corrupt)                   # anywhere else: raises on the first failure

`corrupt(store, cid)` must change a stored block's bytes without going through `put`; the default
calls `store.corrupt(cid)`. A store accepts blocks of at least CHUNK_BYTES_MIN; one with a
`chunk_bytes_max` attribute must refuse longer blocks with StoreError.
"""

from __future__ import annotations

import os
import random
from typing import Callable

import pytest

from mesh.content.chunking import CHUNK_BYTES_MIN
from mesh.content.cid import BLAKE3, SHA2_256, Cid, cid_for_dag_cbor, cid_for_raw
from mesh.content.store import ChunkStore
from mesh.errors import CorruptChunkError, NotFoundError, StoreError

Corrupt = Callable[[ChunkStore, Cid], None]


def default_corrupt(store: ChunkStore, cid: Cid) -> None:
    """Rot a block through the store's own test helper."""
    store.corrupt(cid)  # type: ignore[attr-defined]


def _block(length: int, seed: int = 0, hash_code: int = BLAKE3) -> tuple[Cid, bytes]:
    data = random.Random(seed).randbytes(length)
    return cid_for_raw(data, hash_code), data


def check_is_a_chunk_store(store: ChunkStore, corrupt: Corrupt) -> None:
    assert isinstance(store, ChunkStore)


def check_empty_store(store: ChunkStore, corrupt: Corrupt) -> None:
    cid, _ = _block(10)
    assert not store.has(cid)
    assert list(store.cids()) == []
    assert store.delete(cid) is False
    with pytest.raises(NotFoundError):
        store.get(cid)
    with pytest.raises(NotFoundError):
        store.size(cid)


def check_put_get_round_trip(store: ChunkStore, corrupt: Corrupt) -> None:
    blocks = [_block(length, seed) for seed, length in enumerate((0, 1, 1000, CHUNK_BYTES_MIN))]
    blocks.append(_block(4096, 7, SHA2_256))
    manifest_bytes = b"\xa1dtypedfile"
    blocks.append((cid_for_dag_cbor(manifest_bytes), manifest_bytes))
    for cid, data in blocks:
        assert store.put(cid, data) is True
    for cid, data in blocks:
        assert store.has(cid)
        got = store.get(cid)
        assert type(got) is bytes and got == data
        assert store.size(cid) == len(data)
    assert sorted(store.cids()) == sorted(cid for cid, _ in blocks)


def check_put_verifies_first(store: ChunkStore, corrupt: Corrupt) -> None:
    cid, data = _block(5000)
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(CorruptChunkError):
        store.put(cid, wrong)
    sha_cid = cid_for_raw(data, SHA2_256)
    with pytest.raises(CorruptChunkError):
        store.put(Cid(sha_cid.codec, BLAKE3, sha_cid.digest), data)  # right bytes, wrong hash function
    assert not store.has(cid)
    assert list(store.cids()) == []
    with pytest.raises(NotFoundError):
        store.get(cid)


def check_put_is_idempotent(store: ChunkStore, corrupt: Corrupt) -> None:
    cid, data = _block(2048)
    assert store.put(cid, data) is True
    assert store.put(cid, data) is False
    assert store.get(cid) == data
    assert list(store.cids()) == [cid]


def check_same_bytes_under_two_cids(store: ChunkStore, corrupt: Corrupt) -> None:
    data = b"same bytes, two names"
    raw, manifest_codec = cid_for_raw(data), cid_for_dag_cbor(data)
    assert store.put(raw, data) and store.put(manifest_codec, data)
    assert store.delete(raw)
    assert store.get(manifest_codec) == data


def check_corrupt_block_is_never_returned(store: ChunkStore, corrupt: Corrupt) -> None:
    cid, data = _block(4096)
    other, other_data = _block(4096, seed=1)
    store.put(cid, data)
    store.put(other, other_data)
    corrupt(store, cid)
    for _ in range(2):  # still refused on a second read: nothing cached the good bytes
        with pytest.raises(CorruptChunkError) as caught:
            store.get(cid)
        assert caught.value.cid == str(cid)
    assert store.has(cid)  # it stays until deleted, so `mesh verify` can report it
    assert store.get(other) == other_data
    assert store.delete(cid) is True
    assert store.put(cid, data) is True  # repair: delete, then put the fetched bytes
    assert store.get(cid) == data


def check_corrupt_empty_block(store: ChunkStore, corrupt: Corrupt) -> None:
    cid, data = _block(0)
    store.put(cid, data)
    corrupt(store, cid)
    with pytest.raises(CorruptChunkError):
        store.get(cid)


def check_delete(store: ChunkStore, corrupt: Corrupt) -> None:
    (cid, data), (kept, kept_data) = _block(100), _block(100, seed=1)
    store.put(cid, data)
    store.put(kept, kept_data)
    assert store.delete(cid) is True
    assert store.delete(cid) is False
    assert not store.has(cid)
    with pytest.raises(NotFoundError):
        store.get(cid)
    assert store.get(kept) == kept_data
    assert list(store.cids()) == [kept]


def check_delete_while_iterating(store: ChunkStore, corrupt: Corrupt) -> None:
    blocks = [_block(64, seed) for seed in range(40)]
    for cid, data in blocks:
        store.put(cid, data)
    deleted = [cid for cid in store.cids() if store.delete(cid)]  # what gc does
    assert sorted(deleted) == sorted(cid for cid, _ in blocks)
    assert list(store.cids()) == []


def check_oversize_block_refused(store: ChunkStore, corrupt: Corrupt) -> None:
    limit = getattr(store, "chunk_bytes_max", None)
    if limit is None:
        return
    data = os.urandom(limit + 1)
    cid = cid_for_raw(data)
    with pytest.raises(StoreError):
        store.put(cid, data)
    assert not store.has(cid)
    exact = data[:limit]
    assert store.put(cid_for_raw(exact), exact) is True


def check_matches_a_dict_model(store: ChunkStore, corrupt: Corrupt) -> None:
    rng = random.Random(20240611)
    pool = [_block(rng.randrange(0, 3000), seed) for seed in range(12)]
    model: dict[Cid, bytes] = {}
    for _ in range(300):
        cid, data = rng.choice(pool)
        action = rng.choice(("put", "put", "delete", "get", "has"))
        if action == "put":
            assert store.put(cid, data) is (cid not in model)
            model[cid] = data
        elif action == "delete":
            assert store.delete(cid) is (model.pop(cid, None) is not None)
        elif action == "get" and cid in model:
            assert store.get(cid) == data
        else:
            assert store.has(cid) is (cid in model)
    assert sorted(store.cids()) == sorted(model)


CHECKS = [
    check_is_a_chunk_store,
    check_empty_store,
    check_put_get_round_trip,
    check_put_verifies_first,
    check_put_is_idempotent,
    check_same_bytes_under_two_cids,
    check_corrupt_block_is_never_returned,
    check_corrupt_empty_block,
    check_delete,
    check_delete_while_iterating,
    check_oversize_block_refused,
    check_matches_a_dict_model,
]


def run_conformance(make_store: Callable[[], ChunkStore], corrupt: Corrupt = default_corrupt) -> None:
    """Run every check, each on a fresh store; the first failure raises."""
    for check in CHECKS:
        check(make_store(), corrupt)


class ChunkStoreConformance:
    """Subclass as `Test...` and override `make_store` (and `corrupt` if needed)."""

    def make_store(self, tmp_path) -> ChunkStore:
        raise NotImplementedError

    def corrupt(self, store: ChunkStore, cid: Cid) -> None:
        default_corrupt(store, cid)

    @pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
    def test_conformance(self, check, tmp_path) -> None:
        check(self.make_store(tmp_path), self.corrupt)
