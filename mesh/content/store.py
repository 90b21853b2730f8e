"""The chunk-store interface and an in-memory store for tests and simulations.

Rules every store keeps (tests/chunkstore_conformance.py checks them): `put` hashes before it
stores, so a store never holds bytes that did not match their CID when they arrived; `get` hashes
again before it returns, so bytes that rotted in place raise CorruptChunkError instead of being
served. A corrupt chunk stays until someone deletes it (`mesh verify` reports it; the caller deletes
and refetches). Blocks of either codec (chunks and manifests) live in the same store.
"""

from __future__ import annotations

import threading
from typing import Iterator, Protocol, runtime_checkable

from mesh.content.chunking import CHUNK_BYTES_MAX
from mesh.content.cid import Cid
from mesh.errors import CorruptChunkError, NotFoundError, StoreError

MEMORY_BYTES_MAX = 1 << 30  # default total for a MemoryChunkStore


@runtime_checkable
class ChunkStore(Protocol):
    """Content-addressed block storage; every method may raise StoreError on I/O failure."""

    def has(self, cid: Cid) -> bool:
        """True if a block for `cid` is stored (whether or not it is still intact)."""
        ...

    def get(self, cid: Cid) -> bytes:
        """The verified bytes; NotFoundError if absent, CorruptChunkError if they no longer match."""
        ...

    def put(self, cid: Cid, data: bytes) -> bool:
        """Verify then store; CorruptChunkError (and nothing stored) on mismatch; True if new."""
        ...

    def delete(self, cid: Cid) -> bool:
        """Remove a block; True if one was there."""
        ...

    def cids(self) -> Iterator[Cid]:
        """Every stored CID, in no particular order; safe to `delete` while iterating."""
        ...

    def size(self, cid: Cid) -> int:
        """Stored length in bytes, without reading or verifying; NotFoundError if absent."""
        ...


class MemoryChunkStore:
    """A ChunkStore in a dict, bounded per block and in total."""

    def __init__(self, chunk_bytes_max: int = CHUNK_BYTES_MAX, bytes_max: int = MEMORY_BYTES_MAX) -> None:
        self.chunk_bytes_max = chunk_bytes_max  # longest block `put` accepts
        self.bytes_max = bytes_max  # total stored bytes `put` will not exceed
        self.bytes_stored = 0  # sum of stored block lengths
        self._blocks: dict[Cid, bytes] = {}
        self._lock = threading.Lock()

    def has(self, cid: Cid) -> bool:
        return cid in self._blocks

    def get(self, cid: Cid) -> bytes:
        data = self._blocks.get(cid)
        if data is None:
            raise NotFoundError(f"chunk {cid} not found")
        if not cid.verify(data):
            raise CorruptChunkError(str(cid))
        return data

    def put(self, cid: Cid, data: bytes) -> bool:
        if len(data) > self.chunk_bytes_max:
            raise StoreError(f"chunk of {len(data)} bytes exceeds chunk_bytes_max={self.chunk_bytes_max}")
        if not cid.verify(data):
            raise CorruptChunkError(str(cid), f"data does not match CID {cid}")
        with self._lock:
            if cid in self._blocks:
                return False
            if self.bytes_stored + len(data) > self.bytes_max:
                raise StoreError(f"memory store full ({self.bytes_stored} of {self.bytes_max} bytes)")
            self._blocks[cid] = bytes(data)
            self.bytes_stored += len(data)
            return True

    def delete(self, cid: Cid) -> bool:
        with self._lock:
            data = self._blocks.pop(cid, None)
            if data is None:
                return False
            self.bytes_stored -= len(data)
            return True

    def cids(self) -> Iterator[Cid]:
        return iter(list(self._blocks))

    def size(self, cid: Cid) -> int:
        data = self._blocks.get(cid)
        if data is None:
            raise NotFoundError(f"chunk {cid} not found")
        return len(data)

    def corrupt(self, cid: Cid) -> None:
        """Flip one bit of a stored block in place, as disk rot would (for tests)."""
        with self._lock:
            data = bytearray(self._blocks[cid])
            if not data:
                data.append(0)  # an empty block can only rot by growing
                self.bytes_stored += 1
            data[len(data) // 2] ^= 0x01
            self._blocks[cid] = bytes(data)

    def __len__(self) -> int:
        return len(self._blocks)
