"""Fixed-size chunking with a chunk size that scales with the file, as Syncthing does.

A file of `size` bytes is cut into chunks of `chunk_bytes_for(size)` bytes (the last one shorter).
The chunk size is the smallest power of two in [CHUNK_BYTES_START, CHUNK_BYTES_MAX] that keeps the
file within CHUNKS_PER_FILE_TARGET chunks, so per-chunk overhead stays bounded for big files and
medium files still split finely enough to swarm. Manifests may name chunk sizes down to
CHUNK_BYTES_MIN (what earlier versions chose), so their releases still verify and swarm. Why not
content-defined chunking: see docs/content-addressing.md.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from mesh.errors import StoreError

CHUNK_BYTES_MIN = 256 * 1024  # the smallest nominal chunk size a manifest may name
CHUNK_BYTES_START = 1024 * 1024  # the chunk size new files start from (see docs/content-addressing.md)
CHUNK_BYTES_MAX = 16 * 1024 * 1024
CHUNKS_PER_FILE_TARGET = 2000


def chunk_bytes_for(size: int) -> int:
    """The nominal chunk size for a file of `size` bytes."""
    if size < 0:
        raise ValueError("a size is not negative")
    chunk_bytes = CHUNK_BYTES_START
    while chunk_bytes < CHUNK_BYTES_MAX and chunk_count(size, chunk_bytes) > CHUNKS_PER_FILE_TARGET:
        chunk_bytes *= 2
    return chunk_bytes


def chunk_count(size: int, chunk_bytes: int) -> int:
    """How many chunks a file of `size` bytes has; an empty file has one (empty) chunk."""
    return max(1, -(-size // chunk_bytes))


def chunk_spans(size: int, chunk_bytes: int | None = None) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of a file of `size` bytes, in order."""
    chunk_bytes = _checked_chunk_bytes(size, chunk_bytes)
    if size == 0:
        return [(0, 0)]
    return [(offset, min(chunk_bytes, size - offset)) for offset in range(0, size, chunk_bytes)]


def iter_chunks(stream: BinaryIO, size: int, chunk_bytes: int | None = None) -> Iterator[bytes]:
    """Read `size` bytes from `stream` as chunks, one chunk in memory at a time.

    `chunk_bytes` defaults to `chunk_bytes_for(size)`; pass another only in tests or when
    following a manifest that names its own. Raises StoreError if the stream ends early (the file
    shrank while being read). Bytes past `size` are not read.
    """
    return _chunks(stream, size, _checked_chunk_bytes(size, chunk_bytes))


def _chunks(stream: BinaryIO, size: int, chunk_bytes: int) -> Iterator[bytes]:
    if size == 0:
        yield b""
    for offset in range(0, size, chunk_bytes):
        yield _read_exactly(stream, min(chunk_bytes, size - offset), offset, size)


def _checked_chunk_bytes(size: int, chunk_bytes: int | None) -> int:
    if chunk_bytes is None:
        return chunk_bytes_for(size)
    if size < 0:
        raise ValueError("a size is not negative")
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    return chunk_bytes


def _read_exactly(stream: BinaryIO, length: int, offset: int, size: int) -> bytes:
    data = stream.read(length) or b""
    if len(data) == length:
        return data
    parts = [data]
    have = len(data)
    while have < length:  # a pipe or raw stream may return short reads
        more = stream.read(length - have)
        if not more:
            got = offset + have
            raise StoreError(f"file ended at byte {got} of {size}: it changed while being read")
        parts.append(more)
        have += len(more)
    return b"".join(parts)
