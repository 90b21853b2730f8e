"""The on-disk chunk store: one file per chunk plus a SQLite index.

Rules that make it crash-safe (a `kill -9` at any instant leaves a consistent store):

1. A chunk's bytes are written under `tmp/`, flushed to disk (fsync, or one `syncfs` for a batch of
   files), then renamed to `chunks/XX/CID`, and the directories are flushed (fsync, or again one
   `syncfs` for a batch).
2. Only then does one SQLite transaction index the batch's chunks; the files (objects) are indexed
   by `commit`, after every batch they need. An import flushes one batch on a background thread
   while it hashes and writes the next: the order of steps within each batch is the same.
3. So an index row never points at missing or unflushed bytes. What a crash can leave behind is
   invisible: files in `tmp/` or renamed chunk files without a row; `gc` removes both, and a re-run
   of `add` simply writes them again.

Integrity (docs/content-addressing.md, "Local integrity checks"): a chunk enters the store only
after its bytes were hashed to its CID (BLAKE3) -- by `add`, or by `put`/`put_many` for bytes from a
peer -- and its index row then also records an XXH3-128 checksum of those same bytes. Every read
that leaves the node is re-hashed with BLAKE3 (`read_chunk(..., verify=True)`, `get`): a peer or a
browser never gets bytes that do not match the CID. Local reads of files (`read_objects`, what
`mesh cat` uses) check size and checksum instead, ~10x cheaper, the way Btrfs and ZFS check every
read; a row without a checksum (written by older code) is checked with BLAKE3, and so is
everything when the caller asks for `rehash`. `verify` re-hashes everything with BLAKE3,
fills in missing checksums, and moves corrupt chunks to `quarantine/` and out of the index, so a
later fetch can replace them.

Reading files: one index query per file, then reader threads (read() and BLAKE3 drop the GIL;
XXH3 keeps it ~10 us per piece) fill reused buffers with groups of chunks, each chunk checked in
L2-sized pieces as it is read; the caller gets the checked groups in order, so it makes few, large
writes, and a corrupt chunk stops the stream before any of its bytes are handed out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import xxhash

from mesh.content.chunking import CHUNK_BYTES_MAX, chunk_bytes_for, iter_chunks
from mesh.content.cid import DAG_CBOR, HASHES, RAW, Cid, cid_for_raw
from mesh.content.manifest import FileManifest, decode_manifest, file_cid
from mesh.errors import CorruptChunkError, MeshError, NotFoundError, StoreError

if TYPE_CHECKING:
    from mesh.content.cid import _Hash
    from mesh.state.records import AssetRecord

BATCH_BYTES_MAX = 64 * 1024 * 1024  # flush a batch once this many chunk bytes are staged
BATCH_CHUNKS_MAX = 512  # ... or this many chunk files
SYNCFS_CHUNKS_MIN = 8  # below this many files, fsync each one instead of flushing the filesystem
READ_GROUP_BYTES = 1024 * 1024  # a read group gathers consecutive chunks up to this many bytes
READ_PIECE_BYTES = 256 * 1024  # read and hash a chunk in pieces that stay in the L2 cache
WRITE_PIECE_BYTES = 256 * 1024  # write chunks in pieces this large (see `_write_in_pieces`)
READ_THREADS_MAX = 2  # reader threads (the machines we target have 2-4 cores)
READ_SLOTS_PER_THREAD = 2  # buffers per reader thread: one being filled, one being written
READ_ALIGN_BYTES = 64  # chunks start at this alignment in read buffers (see `_aligned_buffer`)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    cid TEXT PRIMARY KEY,          -- CID of the chunk bytes
    size INTEGER NOT NULL,         -- bytes in the chunk file
    stored_at REAL NOT NULL,       -- unix seconds
    xxh3 BLOB                      -- XXH3-128 of the bytes whose CID was checked; NULL: older code
);
CREATE TABLE IF NOT EXISTS objects (
    cid TEXT PRIMARY KEY,          -- file CID: a manifest CID, or the single chunk's CID
    size INTEGER NOT NULL,         -- file size in bytes
    manifest TEXT                  -- CID of the manifest chunk, NULL for single-chunk files
);
CREATE TABLE IF NOT EXISTS object_chunks (
    object TEXT NOT NULL,          -- file CID
    seq INTEGER NOT NULL,          -- chunk position in the file
    chunk TEXT NOT NULL,           -- chunk CID
    PRIMARY KEY (object, seq)
);
CREATE INDEX IF NOT EXISTS object_chunks_chunk ON object_chunks(chunk);
CREATE TABLE IF NOT EXISTS pins (
    cid TEXT NOT NULL,             -- object CID kept by gc
    reason TEXT NOT NULL,          -- why, e.g. "release:<id>"
    PRIMARY KEY (cid, reason)
);
CREATE TABLE IF NOT EXISTS quarantine (
    cid TEXT PRIMARY KEY,
    found_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""
_INSERT_CHUNK = "INSERT OR IGNORE INTO chunks (cid, size, stored_at, xxh3) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class AddedFile:
    """The result of importing one file."""

    cid: str  # the file's CID
    path: str  # the path as given by the user
    size: int  # bytes
    new_bytes: int  # bytes that were not in the store before (dedup)
    record: AssetRecord  # the asset record to put into the shared state


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found."""

    checked: int  # chunks re-hashed
    corrupt: tuple[str, ...]  # CIDs whose bytes no longer match (now quarantined)
    missing: tuple[str, ...]  # CIDs indexed but whose file is gone (now dropped from the index)
    checksums_added: int = 0  # intact chunks whose row had no checksum (older code): now recorded
    checksums_wrong: tuple[str, ...] = ()  # intact chunks whose recorded checksum was wrong: rewritten


@dataclass(frozen=True)
class GcReport:
    """What `gc` removed."""

    chunks_removed: int  # indexed chunks no object or pin referenced
    bytes_freed: int  # their total size
    orphans_removed: int  # files left by interrupted writes (tmp/ or unindexed chunks)


@dataclass
class _Batch:
    """Chunks written to tmp/ and waiting to be flushed, renamed and indexed together."""

    staged: dict[str, tuple[Path, int, bytes]] = field(default_factory=dict)  # cid -> (tmp, size, checksum)
    staged_bytes: int = 0  # sum of staged sizes
    objects: list[tuple[str, int, str | None, list[str]]] = field(default_factory=list)


def _os_error(exc: OSError, doing: str) -> StoreError:
    """One clear line for the disk errors a user can do something about."""
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while {doing}: free some space and run the command again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"permission denied while {doing}: {exc.filename or ''}".rstrip(": "))
    return StoreError(f"I/O error while {doing}: {exc.strerror or exc}")


_SYNCFS: list[Callable[[int], int] | None] = []  # libc's syncfs(2), loaded on first flush


def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), which flushes one filesystem with one call; None where unavailable.

    Loaded on first use: ctypes costs start-up time that `mesh cat` should not pay."""
    if not _SYNCFS:
        import ctypes

        try:
            func = ctypes.CDLL(None, use_errno=True).syncfs  # the C library the interpreter uses
            func.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            func = None
        _SYNCFS.append(func)
    return _SYNCFS[0]


def _write_in_pieces(handle: BinaryIO, data: bytes | memoryview) -> None:
    """Write `data` in WRITE_PIECE_BYTES writes. A single 1 MiB write made Linux 6.18's ext4
    allocate 1 MiB page-cache folios, which cost ~6x the system time of 256 KiB writes on the
    benchmark machine (0.47 s vs 0.07 s for 256 MiB into new files)."""
    view = memoryview(data)
    for start in range(0, len(view), WRITE_PIECE_BYTES):
        handle.write(view[start:start + WRITE_PIECE_BYTES])


_NOWAIT_READS = [True] if hasattr(os, "RWF_NOWAIT") else []  # emptied when the kernel says no


def checksum(data: bytes | memoryview) -> bytes:
    """The local integrity checksum (XXH3-128) recorded for a chunk's CID-checked bytes."""
    return xxhash.xxh3_128_digest(data)


class _ChunkRead(NamedTuple):
    """One chunk the read path reads and checks (a NamedTuple: one is built per chunk, and it
    defines in a seventh of the time a frozen dataclass takes at `mesh cat`'s start-up)."""

    cid: str  # its text CID, named in errors
    path: str  # its file
    size: int  # bytes the index says it holds
    new_hasher: Callable[[], _Hash]  # XXH3-128 if its row has a checksum, else its CID's hash
    expected: bytes  # what its bytes must hash to with that function


_B32_TO_INT_DIGITS = str.maketrans("abcdefghijklmnopqrstuvwxyz234567", "0123456789abcdefghijklmnopqrstuv")
_CID_PREFIXES = {  # binary CID header (version, codec, hash, length) -> hash code
    bytes([1, codec, hash_code, 32]): hash_code for codec in (RAW, DAG_CBOR) for hash_code in HASHES
}


def _hash_and_digest(cid: str) -> tuple[int, bytes]:
    """(hash code, digest) of an indexed CID, about 10x faster than `Cid.parse`, whose base32 is
    pure Python: the digit-translated text is one integer. Anything unusual goes to `Cid.parse`."""
    if len(cid) == 59 and cid[0] == "b":
        value = int(cid[1:].translate(_B32_TO_INT_DIGITS), 32)
        binary = (value >> 2).to_bytes(36, "big")
        hash_code = _CID_PREFIXES.get(binary[:4])
        if hash_code is not None and value & 3 == 0:
            return hash_code, binary[4:]
    parsed = Cid.parse(cid)
    return parsed.hash_code, parsed.digest


def _aligned(size: int) -> int:
    return -(-size // READ_ALIGN_BYTES) * READ_ALIGN_BYTES


def _aligned_buffer(size: int) -> memoryview:
    """A page-aligned buffer (anonymous mmap): the kernel copies into it ~4x faster than into a
    bytearray, whose data starts 16 bytes past a 64-byte boundary (measured: 0.12 s vs 0.45 s per
    GiB from the page cache on the benchmark machine's AMD EPYC)."""
    return memoryview(mmap.mmap(-1, max(size, 1)))


def _read_group(group: list[_ChunkRead], buffer: memoryview) -> tuple[list[memoryview], MeshError | None]:
    """Read and verify consecutive chunks into `buffer`, each at a READ_ALIGN_BYTES boundary.

    Returns the verified bytes as few contiguous views (one unless a chunk's size is not a multiple
    of READ_ALIGN_BYTES) and the error that stopped the group, if any."""
    views: list[memoryview] = []
    start = offset = 0
    error = None
    for chunk in group:
        if offset != start and offset % READ_ALIGN_BYTES:
            views.append(buffer[start:offset])
            start = offset = _aligned(offset)
        try:
            _read_chunk_into(chunk, buffer[offset:offset + chunk.size])
        except MeshError as exc:
            error = exc
            break
        offset += chunk.size
    if offset > start:
        views.append(buffer[start:offset])
    return views, error


def _read_chunk_into(chunk: _ChunkRead, view: memoryview) -> None:
    """Fill `view` with one chunk's bytes, hashing each piece while it is still in cache."""
    try:
        fd = os.open(chunk.path, os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptChunkError(chunk.cid, f"chunk {chunk.cid} is indexed but its file is missing") from None
    except OSError as exc:
        raise _os_error(exc, f"reading chunk {chunk.cid}") from None
    hasher = chunk.new_hasher()
    try:
        if os.fstat(fd).st_size != chunk.size:
            raise CorruptChunkError(chunk.cid, f"chunk {chunk.cid} is corrupt (wrong size)")
        done = 0
        while done < chunk.size:
            got = os.readv(fd, [view[done:done + READ_PIECE_BYTES]])
            if got == 0:
                raise CorruptChunkError(chunk.cid, f"chunk {chunk.cid} is corrupt (it shrank)")
            hasher.update(view[done:done + got])
            done += got
    except OSError as exc:
        raise _os_error(exc, f"reading chunk {chunk.cid}") from None
    finally:
        os.close(fd)
    if hasher.digest() != chunk.expected:
        raise CorruptChunkError(chunk.cid)


def _read_groups(plans: list[list[_ChunkRead]]) -> list[list[_ChunkRead]]:
    """The files' chunks, in order, gathered into groups of at most READ_GROUP_BYTES (or one chunk)."""
    out: list[list[_ChunkRead]] = []
    group_bytes = 0
    for chunk in (chunk for plan in plans for chunk in plan):
        if not out or group_bytes + chunk.size > READ_GROUP_BYTES:
            out.append([])
            group_bytes = 0
        out[-1].append(chunk)
        group_bytes += _aligned(chunk.size)
    return out


class _ReaderLane:
    """One reader thread's buffers and the verified groups it has waiting, in order."""

    def __init__(self, buffer_bytes: int) -> None:
        self.buffers = [_aligned_buffer(buffer_bytes) for _ in range(READ_SLOTS_PER_THREAD)]
        self.free = threading.Semaphore(READ_SLOTS_PER_THREAD)  # buffers the reader may fill
        self.ready = threading.Semaphore(0)  # groups waiting for the consumer
        self.results: deque[tuple[list[memoryview], BaseException | None]] = deque()


def _verified_groups(groups: list[list[_ChunkRead]], threads: int) -> Iterator[memoryview]:
    """Yield each group's verified bytes in order (as views); raise the first error after the
    good bytes.

    Reader thread t fills groups t, t+n, t+2n, ... into its READ_SLOTS_PER_THREAD buffers; a yielded
    view stays valid until the next one is asked for. Memory: threads x slots x largest group."""
    if not groups:
        return
    buffer_bytes = max(sum(_aligned(chunk.size) for chunk in group) for group in groups)
    if threads <= 1:
        buffer = _aligned_buffer(buffer_bytes)
        for group in groups:
            views, error = _read_group(group, buffer)
            yield from views
            if error is not None:
                raise error
        return
    lanes = [_ReaderLane(buffer_bytes) for _ in range(threads)]
    stop = threading.Event()
    workers = [threading.Thread(target=_reader_thread, args=(groups[t::threads], lanes[t], stop),
                                name=f"mesh-read-{t}", daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    try:
        for index in range(len(groups)):
            lane = lanes[index % threads]
            lane.ready.acquire()
            views, error = lane.results.popleft()
            yield from views
            if error is not None:
                raise error
            lane.free.release()
    finally:
        stop.set()
        for lane in lanes:
            lane.free.release(READ_SLOTS_PER_THREAD)
        for worker in workers:
            worker.join()


def _reader_thread(groups: list[list[_ChunkRead]], lane: _ReaderLane, stop: threading.Event) -> None:
    for index, group in enumerate(groups):
        lane.free.acquire()
        if stop.is_set():
            return
        try:
            views, error = _read_group(group, lane.buffers[index % READ_SLOTS_PER_THREAD])
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, which would wait forever
            views, error = [], exc
        lane.results.append((views, error))
        lane.ready.release()
        if error is not None:
            return


def _is_manifest_cid(text: str) -> bool:
    try:
        return Cid.parse(text).codec == DAG_CBOR
    except ValueError:
        return False


def media_type_for(name: str) -> str:
    """Media type from a file name; a generic binary type when unknown."""
    import mimetypes  # imports only: `mesh cat` does not pay for it

    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


class FileStore:
    """Chunks on disk and an index of chunks, files (objects) and pins in SQLite.

    Asset records live in the shared state; `gc` is told which files they keep alive.
    """

    def __init__(self, root: Path, pool: Path | None = None) -> None:
        self.root = Path(root)
        self.pool = None if pool is None else Path(pool)  # a hub's shared chunk files (see `_stage`)
        self._chunks = self.root / "chunks"
        self._chunks_text = str(self._chunks)  # the read path joins strings: pathlib costs ~15 us
        self._tmp = self.root / "tmp"
        self._quarantine = self.root / "quarantine"
        try:
            for directory in (self._chunks, self._tmp, self._quarantine):
                directory.mkdir(parents=True, exist_ok=True)
            self._local = threading.local()  # one SQLite connection per thread
            self._connections: list[sqlite3.Connection] = []
            self._db.executescript(_SCHEMA)
            self._add_checksum_column()
        except OSError as exc:
            raise _os_error(exc, "opening the store") from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store index: {exc}") from None
        self._batch = _Batch()
        self._in_flight = _Batch()  # the batch the flusher thread is making durable
        self._flush_job = None  # its concurrent.futures.Future, while it runs
        self._flusher = None  # a one-thread executor, made by the first full batch of an import
        self._lock_path = self.root / "store.lock"

    def _add_checksum_column(self) -> None:
        """Migrate an index written by older code in place: its rows keep a NULL checksum (read
        with BLAKE3 until `verify` fills it in)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
        if "xxh3" in columns:
            return
        try:
            self._db.execute("ALTER TABLE chunks ADD COLUMN xxh3 BLOB")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process migrated it just now
                raise

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection to the index (the agent reads and writes from workers)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "index.sqlite", timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
            self._connections.append(db)
        return db

    def close(self) -> None:
        self._stop_flusher()
        for db in self._connections:
            db.close()
        self._connections.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        """Writers share the store lock; gc takes it alone, so it never sees a half-done import."""
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def importing(self) -> contextlib.AbstractContextManager[None]:
        """Hold while adding files, from the first `add_file` until `commit`."""
        return self._locked(fcntl.LOCK_SH)

    # ---- paths -------------------------------------------------------------------------------

    def _chunk_path(self, cid: str) -> Path:
        return self._chunks / cid[-2:] / cid

    def _chunk_file(self, cid: str) -> str:
        """`_chunk_path` as a string, for the paths taken per chunk (pathlib costs ~15 us)."""
        return f"{self._chunks_text}/{cid[-2:]}/{cid}"

    # ---- chunk interface (the ChunkStore protocol) --------------------------------------------

    def has(self, cid: Cid) -> bool:
        return self._has_text(str(cid))

    def _has_text(self, cid: str) -> bool:
        row = self._db.execute("SELECT 1 FROM chunks WHERE cid = ?", (cid,)).fetchone()
        return row is not None

    def size(self, cid: Cid) -> int:
        row = self._db.execute("SELECT size FROM chunks WHERE cid = ?", (str(cid),)).fetchone()
        if row is None:
            raise NotFoundError(f"chunk {cid} is not in this store")
        return int(row[0])

    def cids(self) -> Iterator[Cid]:
        rows = self._db.execute("SELECT cid FROM chunks ORDER BY cid").fetchall()
        return (Cid.parse(row[0]) for row in rows)

    def get(self, cid: Cid) -> bytes:
        return self.read_chunk(cid, verify=True)

    def read_chunk(self, cid: Cid, verify: bool = True) -> bytes:
        """The bytes of one chunk; re-hashed unless the caller verifies them itself."""
        text = str(cid)
        if not self._has_text(text):
            raise NotFoundError(f"chunk {text} is not in this store")
        try:
            data = self._chunk_path(text).read_bytes()
        except FileNotFoundError:
            raise CorruptChunkError(text, f"chunk {text} is indexed but its file is missing") from None
        except OSError as exc:
            raise _os_error(exc, f"reading chunk {text}") from None
        if verify and not cid.verify(data):
            raise CorruptChunkError(text)
        return data

    def read_for_peer(self, cid: str, cached_only: bool = False) -> bytearray:
        """One chunk's bytes for a peer, checked against the checksum recorded when they entered
        the store (XXH3-128, ~27 GB/s; the CID's own hash where a row has none). A peer verifies
        the CID itself before it stores or serves a byte, so this check stops bit rot from being
        sent, not forgery, and a BLAKE3 pass here would only repeat the receiver's.

        `cached_only`: read only what the page cache holds (`RWF_NOWAIT`), so the caller may run
        it on its event loop; `BlockingIOError` when a read would wait for the disk (or this
        file system cannot say), and the caller reads on a worker thread instead."""
        size, expected = self._size_and_checksum(cid)
        if size is None:
            raise NotFoundError(f"chunk {cid} is not in this store")
        data = bytearray(size)
        self._read_checked(cid, size, expected, [memoryview(data)], cached_only)
        return data

    def read_for_peer_into(self, cid: str, buffers: list[memoryview] | Callable[[int], list[memoryview]],
                           cached_only: bool = False) -> int:
        """`read_for_peer` into the caller's `buffers`, filled in order (the gateway reuses
        page-aligned ones: no allocation, and the kernel copies into them ~4x faster): the chunk's
        size. `buffers` may be a function of the size that returns them (the agent leaves room
        for a message head before each piece). The same check and errors; NotFoundError also if
        the buffers are too small. Bytes past the size are left as they were; the buffers'
        contents are meaningless on an error."""
        size, expected = self._size_and_checksum(cid)
        if size is not None and callable(buffers):
            buffers = buffers(size)
        if size is None or size > sum(len(buffer) for buffer in buffers):
            raise NotFoundError(f"chunk {cid} is not in this store" if size is None else f"chunk {cid} is larger")
        self._read_checked(cid, size, expected, buffers, cached_only)
        return size

    def open_for_peer_into(self, cid: str, buffers: list[memoryview], cached_only: bool = False) -> tuple[int, int]:
        """`read_for_peer_into`, keeping the chunk's file open: (size, file descriptor). The
        gateway sends the bytes just checked from it with `os.sendfile` instead of copying the
        buffers, and closes it; a chunk's file is never rewritten in place (a repair renames a
        new one over it), so those are the bytes checked."""
        size, expected = self._size_and_checksum(cid)
        if size is None or size > sum(len(buffer) for buffer in buffers):
            raise NotFoundError(f"chunk {cid} is not in this store" if size is None else f"chunk {cid} is larger")
        return size, self._read_checked(cid, size, expected, buffers, cached_only, keep_open=True)

    def _read_checked(self, cid: str, size: int, expected: bytes | None, buffers: list[memoryview],
                      cached_only: bool, keep_open: bool = False) -> int | None:
        """Read chunk `cid` (`size` bytes, the index says) into `buffers` in order, checking
        them against `expected` (its XXH3 checksum; None: its CID's own hash). `keep_open`: the
        file's descriptor, still open, once they passed (closed on any error)."""
        if cached_only and not _NOWAIT_READS:
            raise BlockingIOError(errno.EAGAIN, "reads that never wait are not available here")
        if expected is not None:
            hasher = xxhash.xxh3_128()
        else:
            hash_code, expected = _hash_and_digest(cid)
            hasher = HASHES[hash_code]()
        try:
            fd = os.open(self._chunk_file(cid), os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptChunkError(cid, f"chunk {cid} is indexed but its file is missing") from None
        except OSError as exc:
            raise _os_error(exc, f"reading chunk {cid}") from None
        try:
            try:
                if os.fstat(fd).st_size != size:
                    raise CorruptChunkError(cid, f"chunk {cid} is corrupt (wrong size)")
                flags = os.RWF_NOWAIT if cached_only else 0
                done = 0
                for buffer in buffers:
                    view = buffer[:min(len(buffer), size - done)]
                    filled = 0
                    while filled < len(view):
                        got = os.preadv(fd, [view[filled:]], done + filled, flags)
                        if got == 0:
                            raise CorruptChunkError(cid, f"chunk {cid} is corrupt (it shrank)")
                        filled += got
                    hasher.update(view)
                    done += filled
                    if done == size:
                        break
            except OSError as exc:
                if cached_only and exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                    if exc.errno != errno.EAGAIN:
                        _NOWAIT_READS.clear()  # this kernel or file system has no RWF_NOWAIT
                    raise BlockingIOError(errno.EAGAIN, "the chunk is not in the page cache") from None
                raise _os_error(exc, f"reading chunk {cid}") from None
            if hasher.digest() != expected:
                raise CorruptChunkError(cid)
        except BaseException:
            os.close(fd)
            raise
        if keep_open:
            return fd
        os.close(fd)
        return None

    chunk_bytes_max = CHUNK_BYTES_MAX  # refuse larger blocks (manifests are far smaller)

    def put(self, cid: Cid, data: bytes) -> bool:
        """Verify and store one chunk durably; True if it was not stored before."""
        if len(data) > self.chunk_bytes_max:
            raise StoreError(f"chunk of {len(data)} bytes exceeds chunk_bytes_max")
        if not cid.verify(data):
            raise CorruptChunkError(str(cid), f"bytes do not match {cid}")
        text = str(cid)
        if self._has_text(text):
            return False
        with self.importing():
            self._put_one(text, data)
        return True

    def put_many(self, items: list[tuple[Cid, bytes]]) -> list[MeshError | None]:
        """Verify and store several chunks with one flush (what a node receiving a swarm does).

        Returns, per item, None if it is stored (or already was) or the error that refused it.
        Thread-safe: the batch is local to the call."""
        results: list[MeshError | None] = []
        batch = _Batch()
        with self.importing():
            for cid, data in items:
                results.append(self._stage_verified(cid, data, batch))
            try:
                self._flush_chunks(batch)
            except StoreError as exc:
                for tmp_path, _, _ in batch.staged.values():
                    with contextlib.suppress(OSError):
                        tmp_path.unlink()
                staged = {Cid.parse(text) for text in batch.staged}
                results = [exc if cid in staged and result is None else result
                           for (cid, _), result in zip(items, results)]
        return results

    def _stage_verified(self, cid: Cid, data: bytes, batch: _Batch) -> MeshError | None:
        if len(data) > self.chunk_bytes_max:
            return StoreError(f"chunk of {len(data)} bytes exceeds chunk_bytes_max")
        if not cid.verify(data):
            return CorruptChunkError(str(cid), f"bytes do not match {cid}")
        text = str(cid)
        if self._has_text(text) or text in batch.staged:
            return None
        try:
            self._stage(text, data, batch)
        except StoreError as exc:
            return exc
        return None

    def _put_one(self, cid: str, data: bytes) -> None:
        """Write, flush, rename and index one chunk (thread-safe: no shared batch)."""
        tmp_path = self._tmp / f"{cid}.{os.getpid()}.{threading.get_ident()}.tmp"
        final = self._chunk_path(cid)
        try:
            if not self._link_from_pool(cid, data, tmp_path):
                with open(tmp_path, "wb") as handle:
                    _write_in_pieces(handle, data)
                    handle.flush()
                    os.fsync(handle.fileno())
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp_path, final)
            self._sync_dirs([final.parent])
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            raise _os_error(exc, "storing a chunk") from None
        row = (cid, len(data), time.time(), checksum(data))
        with self._transaction():
            self._db.execute(_INSERT_CHUNK, row)
        self._link_into_pool([cid])

    def delete(self, cid: Cid) -> bool:
        text = str(cid)
        with self._transaction():
            gone = self._db.execute("DELETE FROM chunks WHERE cid = ?", (text,)).rowcount > 0
        with contextlib.suppress(FileNotFoundError):
            self._chunk_path(text).unlink()
        return gone

    # ---- importing files ------------------------------------------------------------------------

    def _stage(self, cid: str, data: bytes | memoryview, batch: _Batch | None = None) -> None:
        """Write a chunk under tmp/ (not yet durable, not yet visible); `data` has been checked
        against `cid`, so its checksum is recorded now."""
        batch = self._batch if batch is None else batch
        tmp_path = self._tmp / f"{cid}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            if not self._link_from_pool(cid, data, tmp_path):
                with open(tmp_path, "wb") as handle:
                    _write_in_pieces(handle, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            raise _os_error(exc, "writing a chunk") from None
        batch.staged[cid] = (tmp_path, len(data), checksum(data))
        batch.staged_bytes += len(data)

    def _pool_path(self, cid: str) -> Path:
        return self.pool / cid[-2:] / cid

    def _link_from_pool(self, cid: str, data: bytes | memoryview, tmp_path: Path) -> bool:
        """With a hub's pool: make `tmp_path` a link to the pooled file of `cid` (another mesh's
        store holds the same bytes), so the disk keeps one copy. Only called with the bytes in
        hand, already checked against `cid`, so the pool never tells a peer what is here; the
        pooled file must equal them (a rotten one leaves the pool, and these bytes replace it)."""
        if self.pool is None:
            return False
        pooled = self._pool_path(cid)
        try:
            with open(pooled, "rb") as handle:
                same = handle.read(len(data) + 1) == data
            if not same:
                pooled.unlink()
                return False
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()  # left by a crash
            os.link(pooled, tmp_path)
        except OSError:  # not pooled (or gone meanwhile): write the bytes
            return False
        return True

    def _link_into_pool(self, cids: Iterable[str]) -> None:
        """Offer newly stored chunks to the pool (a lost link only costs a later copy). Where
        another store pooled the same chunk meanwhile (two meshes fetched it at once), ours
        becomes a link to that file if the bytes are equal, so the disk keeps one copy."""
        if self.pool is None:
            return
        for cid in cids:
            pooled, ours = self._pool_path(cid), self._chunk_path(cid)
            try:
                pooled.parent.mkdir(exist_ok=True)
                os.link(ours, pooled)
            except FileExistsError:
                with contextlib.suppress(OSError):
                    self._share_pooled(pooled, ours)
            except OSError:
                continue

    def _share_pooled(self, pooled: Path, ours: Path) -> None:
        if os.path.samefile(pooled, ours):
            return
        with open(pooled, "rb") as theirs, open(ours, "rb") as mine:
            if theirs.read() != mine.read():
                return
        tmp = self._tmp / f"{ours.name}.{os.getpid()}.{threading.get_ident()}.pool"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(pooled, tmp)
        os.replace(tmp, ours)

    def _batch_full(self) -> bool:
        batch = self._batch
        return batch.staged_bytes >= BATCH_BYTES_MAX or len(batch.staged) >= BATCH_CHUNKS_MAX

    def _store_chunk(self, data: bytes) -> tuple[Cid, int]:
        """Stage a chunk unless it is already stored; returns (cid, new bytes)."""
        cid = cid_for_raw(data)
        text = str(cid)
        if self._known(text):
            return cid, 0
        self._stage(text, data)
        if self._batch_full():
            self._flush_in_background()
        return cid, len(data)

    def _known(self, cid: str) -> bool:
        """Stored, or staged by this import (the in-flight batch is checked before the index,
        because the flusher indexes it before forgetting it)."""
        return cid in self._batch.staged or cid in self._in_flight.staged or self._has_text(cid)

    def _flush_in_background(self) -> None:
        """Hand the full batch to the flusher thread (after the previous one is done), so its
        `syncfs` waits overlap hashing and writing the next batch."""
        self._wait_flushed()
        if self._flusher is None:
            from concurrent.futures import ThreadPoolExecutor  # only imports pay for it

            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mesh-flush")
        full, self._batch = self._batch, _Batch(objects=self._batch.objects)
        self._in_flight = full
        self._flush_job = self._flusher.submit(self._flush_chunks, full)

    def _wait_flushed(self) -> None:
        """Wait for the in-flight batch; re-raise what stopped it (StoreError)."""
        job, self._flush_job = self._flush_job, None
        if job is not None:
            job.result()
        self._in_flight = _Batch()

    def _stop_flusher(self) -> None:
        """End the flusher thread, closing its index connection."""
        with contextlib.suppress(MeshError):
            self._wait_flushed()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.submit(self._close_thread_db).result()
            flusher.shutdown(wait=True)

    def _close_thread_db(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._connections.remove(db)
            self._local.db = None

    def add_stream(
        self, stream: BinaryIO, size: int, on_bytes: Callable[[int], None] | None = None,
        chunk_bytes: int | None = None,
    ) -> tuple[str, int]:
        """Chunk a stream into the store; returns (file CID, new bytes). Call `commit` after.

        `chunk_bytes` defaults to `chunk_bytes_for(size)`; the benchmark passes others to compare."""
        new_bytes = 0
        chunk_bytes = chunk_bytes or chunk_bytes_for(size)
        cids: list[Cid] = []
        for data in iter_chunks(stream, size, chunk_bytes):
            cid, fresh = self._store_chunk(data)
            cids.append(cid)
            new_bytes += fresh
            if on_bytes is not None:
                on_bytes(len(data))
        object_cid, manifest = file_cid(cids, size, chunk_bytes)
        manifest_cid = None
        if manifest is not None:
            encoded = manifest.encode()
            manifest_cid = str(object_cid)
            if not self._known(manifest_cid):
                self._stage(manifest_cid, encoded)
        self._batch.objects.append((str(object_cid), size, manifest_cid, [str(cid) for cid in cids]))
        return str(object_cid), new_bytes

    def add_file(
        self,
        path: Path,
        added_by: str,
        tags: Iterable[str] = (),
        now: float | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> AddedFile:
        """Import one file; durable after `commit`. `AddedFile.record` is its asset record."""
        from mesh.state.records import AssetRecord  # imports only: `mesh cat` does not pay for it

        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                cid, new_bytes = self.add_stream(handle, size, on_bytes)
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from None
        record = AssetRecord(
            cid=cid,
            name=path.name,
            size=size,
            media_type=media_type_for(path.name),
            added_at=time.time() if now is None else now,
            added_by=added_by,
            tags=frozenset(tags),
        )
        return AddedFile(cid=cid, path=str(path), size=size, new_bytes=new_bytes, record=record)

    def _flush_chunks(self, batch: _Batch | None = None) -> None:
        """Make staged chunks durable and visible: flush, rename, flush dirs, index."""
        batch = self._batch if batch is None else batch
        if not batch.staged:
            return
        try:
            self._sync_files([path for path, _, _ in batch.staged.values()])
            touched: set[str] = set()
            for cid, (tmp_path, _, _) in batch.staged.items():
                shard = f"{self._chunks_text}/{cid[-2:]}"
                if shard not in touched:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(shard)
                os.replace(tmp_path, f"{shard}/{cid}")
                touched.add(shard)
            self._sync_dirs(touched | {str(self._tmp)})
        except OSError as exc:
            raise _os_error(exc, "flushing chunks to disk") from None
        now = time.time()
        rows = [(cid, size, now, xxh3) for cid, (_, size, xxh3) in batch.staged.items()]
        with self._transaction():
            self._db.executemany(_INSERT_CHUNK, rows)
        self._link_into_pool(batch.staged)
        batch.staged.clear()
        batch.staged_bytes = 0

    def _sync_files(self, paths: list[Path] | list[str]) -> None:
        """Flush these files (or directories) to disk: one `syncfs` for many, else one fsync each."""
        if len(paths) >= SYNCFS_CHUNKS_MIN and self._syncfs():
            return
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_dirs(self, directories: Iterable[Path] | Iterable[str]) -> None:
        """Make renames durable. Each directory fsync costs a disk cache flush (~5 ms here), so
        a batch that touched many shard directories flushes the filesystem once instead."""
        self._sync_files(list(directories))

    def _syncfs(self) -> bool:
        """syncfs(2) on the store's filesystem; False where the C library lacks it."""
        syncfs = _syncfs()
        if syncfs is None:
            return False
        import ctypes

        fd = os.open(self._tmp, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)
        return True

    def commit(self) -> None:
        """Flush staged chunks, then index the files added since the last commit."""
        self._wait_flushed()
        self._flush_chunks()
        batch = self._batch
        with self._transaction():
            for cid, size, manifest, chunk_cids in batch.objects:
                self._index_object(cid, size, manifest, chunk_cids)
        batch.objects.clear()
        self._stop_flusher()

    def discard(self) -> None:
        """Forget an unfinished import (its tmp files are removed; chunks a finished batch made
        durable stay, unreferenced, until `gc`)."""
        in_flight = self._in_flight
        self._stop_flusher()
        for batch in (in_flight, self._batch):
            for tmp_path, _, _ in batch.staged.values():
                with contextlib.suppress(OSError):
                    tmp_path.unlink()
        self._batch = _Batch()

    def _index_object(self, cid: str, size: int, manifest: str | None, chunks: list[str]) -> None:
        self._db.execute("INSERT OR IGNORE INTO objects VALUES (?, ?, ?)", (cid, size, manifest))
        rows = [(cid, seq, chunk) for seq, chunk in enumerate(chunks)]
        self._db.executemany("INSERT OR IGNORE INTO object_chunks VALUES (?, ?, ?)", rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise StoreError("disk full while updating the index: free some space") from None
            raise StoreError(f"store index error: {exc}") from None

    # ---- reading objects --------------------------------------------------------------------------

    def object_chunks(self, cid: Cid | str) -> tuple[int, list[str]]:
        """(file size, chunk CIDs in order) of a file known here; NotFoundError if unknown.

        Files imported here are in the index; files that arrived from peers are known by their
        manifest chunk (or are a single raw chunk), and get indexed on first use."""
        text = str(cid)
        row = self._db.execute("SELECT size FROM objects WHERE cid = ?", (text,)).fetchone()
        if row is None:
            return self._object_from_chunks(text)
        chunks = self._db.execute(
            "SELECT chunk FROM object_chunks WHERE object = ? ORDER BY seq", (text,)
        ).fetchall()
        return int(row[0]), [chunk for (chunk,) in chunks]

    def _object_from_chunks(self, text: str) -> tuple[int, list[str]]:
        unknown = NotFoundError(f"no file with CID {text} in this store (see `mesh ls`)")
        try:
            parsed = Cid.parse(text)
        except ValueError:
            raise unknown from None
        if not self._has_text(text):
            raise unknown
        if parsed.codec == RAW:
            return self.size(parsed), [text]
        try:
            manifest = decode_manifest(self.read_chunk(parsed, verify=True))
        except (CorruptChunkError, ValueError):
            raise unknown from None
        if not isinstance(manifest, FileManifest):
            raise unknown
        chunks = [str(c) for c in manifest.chunks]
        with self._transaction():
            self._index_object(text, manifest.size, text, chunks)
        return manifest.size, chunks

    def read_objects(
        self, cids: Iterable[Cid | str], threads: int | None = None, rehash: bool = False,
    ) -> Iterator[memoryview]:
        """Stream several files' bytes in order, every chunk checked before it is handed out.

        The check is the chunk's size and its recorded checksum (BLAKE3 against its CID where the
        row has none, or for every chunk with `rehash`): for local reads only; bytes for a peer or
        HTTP go through `read_chunk(verify=True)`. Every CID is looked up first (NotFoundError
        before any byte if one is unknown or lacks a chunk). Each view is valid until the next one
        is asked for; a corrupt chunk raises CorruptChunkError naming it, after the checked bytes
        before it. Memory: about threads x READ_SLOTS_PER_THREAD x max(READ_GROUP_BYTES, largest
        chunk)."""
        plans = [self._read_plan(cid, rehash) for cid in cids]
        threads = threads or min(READ_THREADS_MAX, os.cpu_count() or 1)
        return _verified_groups(_read_groups(plans), threads)

    def _read_plan(self, cid: Cid | str, rehash: bool = False) -> list[_ChunkRead]:
        """The chunks of one file, with sizes and what each must hash to, from one index query."""
        text = str(cid)
        rows = self._db.execute(
            "SELECT oc.chunk, c.size, c.xxh3 FROM object_chunks AS oc LEFT JOIN chunks AS c"
            " ON c.cid = oc.chunk WHERE oc.object = ? ORDER BY oc.seq", (text,)
        ).fetchall()
        if not rows:  # a file that came from peers, or a single raw chunk: see `object_chunks`
            _, chunks = self.object_chunks(text)
            rows = [(chunk, *self._size_and_checksum(chunk)) for chunk in chunks]
        plan = []
        for chunk, size, xxh3 in rows:
            if size is None:
                raise NotFoundError(f"chunk {chunk} of {text} is missing here (run `mesh verify`)")
            path = f"{self._chunks_text}/{chunk[-2:]}/{chunk}"  # as `_chunk_path`, without pathlib
            if xxh3 is None or rehash:
                hash_code, digest = _hash_and_digest(chunk)
                plan.append(_ChunkRead(chunk, path, size, HASHES[hash_code], digest))
            else:
                plan.append(_ChunkRead(chunk, path, size, xxhash.xxh3_128, xxh3))
        return plan

    def _size_and_checksum(self, cid: str) -> tuple[int | None, bytes | None]:
        row = self._db.execute("SELECT size, xxh3 FROM chunks WHERE cid = ?", (cid,)).fetchone()
        return (None, None) if row is None else (int(row[0]), row[1])

    def release_inventory(self, root: str) -> tuple[list[tuple[str, bytes]], list[str]]:
        """What this store holds of a root: (manifests as (CID, bytes), data chunk CIDs). A root
        is a release (DirManifest), one file (FileManifest), or a raw chunk.

        Stops descending where a manifest is missing; every manifest read is re-hashed."""
        manifests: list[tuple[str, bytes]] = []
        present: list[str] = []
        if Cid.parse(root).codec == RAW:
            return manifests, [root] if self._has_text(root) else []
        root_manifest = self._read_manifest(root)
        if root_manifest is None:
            return manifests, present
        manifests.append((root, root_manifest[0]))
        if isinstance(root_manifest[1], FileManifest):
            return manifests, [str(c) for c in root_manifest[1].chunks if self._has_text(str(c))]
        for entry in root_manifest[1].entries:
            text = str(entry.cid)
            if entry.cid.codec == RAW:
                present += [text] if self._has_text(text) else []
                continue
            found = self._read_manifest(text)
            if found is None:
                continue
            manifests.append((text, found[0]))
            present += [str(c) for c in found[1].chunks if self._has_text(str(c))]
        return manifests, present

    def _read_manifest(self, cid: str):
        if not self._has_text(cid):
            return None
        try:
            data = self.read_chunk(Cid.parse(cid), verify=True)
            return data, decode_manifest(data)
        except (CorruptChunkError, ValueError):
            return None

    # ---- integrity and space ------------------------------------------------------------------

    def verify(self, on_chunk: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-hash every indexed chunk with its CID's hash; quarantine corrupt ones, drop missing
        ones, and record the checksum of intact ones whose row lacks it or has a wrong one."""
        rows = self._db.execute("SELECT cid, size, xxh3 FROM chunks ORDER BY cid").fetchall()
        corrupt: list[str] = []
        missing: list[str] = []
        added: list[tuple[bytes, str]] = []  # (checksum, cid) for rows that had none
        wrong: list[tuple[bytes, str]] = []  # (checksum, cid) for rows whose checksum was wrong
        for cid, size, recorded in rows:
            problem, actual = self._check_chunk(cid)
            if problem == "missing":
                missing.append(cid)
            elif problem == "corrupt":
                corrupt.append(cid)
            elif recorded is None:
                added.append((actual, cid))
            elif recorded != actual:
                wrong.append((actual, cid))
            if on_chunk is not None:
                on_chunk(size)
        self._quarantine_chunks(corrupt, missing)
        self._record_checksums(added + wrong)
        return VerifyReport(checked=len(rows), corrupt=tuple(corrupt), missing=tuple(missing),
                            checksums_added=len(added), checksums_wrong=tuple(cid for _, cid in wrong))

    def _check_chunk(self, cid: str) -> tuple[str | None, bytes]:
        """(None, checksum) for an intact chunk; ("missing" or "corrupt", b"") otherwise."""
        try:
            data = self._chunk_path(cid).read_bytes()
        except FileNotFoundError:
            return "missing", b""
        except OSError as exc:
            raise _os_error(exc, f"reading chunk {cid}") from None
        return (None, checksum(data)) if Cid.parse(cid).verify(data) else ("corrupt", b"")

    def _record_checksums(self, rows: list[tuple[bytes, str]]) -> None:
        if rows:
            with self._transaction():
                self._db.executemany("UPDATE chunks SET xxh3 = ? WHERE cid = ?", rows)

    def _quarantine_chunks(self, corrupt: list[str], missing: list[str]) -> None:
        now = time.time()
        for cid in corrupt:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._chunk_path(cid), self._quarantine / cid)
        with self._transaction():
            for cid, reason in [(c, "corrupt") for c in corrupt] + [(m, "missing") for m in missing]:
                self._db.execute("DELETE FROM chunks WHERE cid = ?", (cid,))
                self._db.execute(
                    "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?)", (cid, now, reason)
                )

    def missing_chunks(self, cid: Cid | str) -> list[str]:
        """Chunks of a stored file that are not (or no longer) in the store."""
        _, chunks = self.object_chunks(cid)
        return [chunk for chunk in chunks if not self._has_text(chunk)]

    def pin(self, cid: str, reason: str) -> None:
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO pins VALUES (?, ?)", (cid, reason))

    def unpin(self, reason: str) -> int:
        """Drop every pin given for `reason` (gc may then take what only they kept); how many."""
        with self._transaction():
            return self._db.execute("DELETE FROM pins WHERE reason = ?", (reason,)).rowcount

    def gc(self, roots: Iterable[str], unpinned: Iterable[str] = (), stored_before: float | None = None) -> GcReport:
        """Delete chunks that neither `roots` (files the caller keeps) nor pins need, and files
        left by interrupted writes. Pins of `unpinned` (files consent or retention took away)
        keep nothing. With `stored_before`, chunks stored at or after that time are kept: the
        caller computed `roots` then, so it cannot know what arrived since (a running agent)."""
        with self._locked(fcntl.LOCK_EX):
            return self._gc_locked(set(roots), set(unpinned), stored_before)

    def _gc_locked(self, roots: set[str], unpinned: set[str], stored_before: float | None = None) -> GcReport:
        pins = {cid for (cid,) in self._db.execute("SELECT cid FROM pins").fetchall()}
        roots |= pins - unpinned
        live = self._live_chunks(roots)
        rows = self._db.execute("SELECT cid, size, stored_at FROM chunks").fetchall()
        dead = [(cid, size) for cid, size, at in rows
                if cid not in live and (stored_before is None or at < stored_before)]
        objects = [cid for (cid,) in self._db.execute("SELECT cid FROM objects").fetchall()]
        dead_objects = [(cid,) for cid in objects if cid not in roots]
        with self._transaction():
            self._db.executemany("DELETE FROM chunks WHERE cid = ?", [(cid,) for cid, _ in dead])
            self._db.executemany("DELETE FROM object_chunks WHERE object = ?", dead_objects)
            self._db.executemany("DELETE FROM objects WHERE cid = ?", dead_objects)
        for cid, _ in dead:
            with contextlib.suppress(FileNotFoundError):
                self._chunk_path(cid).unlink()
        orphans = self._remove_orphans()
        return GcReport(
            chunks_removed=len(dead), bytes_freed=sum(size for _, size in dead), orphans_removed=orphans
        )

    def _live_chunks(self, roots: set[str]) -> set[str]:
        live: set[str] = set()
        for root in roots:
            live.add(root)  # a single-chunk file's CID is its chunk's; a manifest's is its own
            rows = self._db.execute("SELECT chunk FROM object_chunks WHERE object = ?", (root,)).fetchall()
            if not rows and _is_manifest_cid(root):  # a file that came from peers: index it from its manifest
                live.update(self._file_chunks(root))
            live.update(chunk for (chunk,) in rows)
        return live

    def _file_chunks(self, cid: str) -> list[str]:
        """The chunks of a file the index lacks, read from its manifest ([] if that is absent,
        corrupt or not a file's); indexes the file, so the next gc finds it there."""
        try:
            return self._object_from_chunks(cid)[1]
        except NotFoundError:
            return []

    def _remove_orphans(self) -> int:
        """Files in tmp/ from other (dead) runs, and chunk files with no index row."""
        removed = 0
        for path in self._tmp.iterdir():  # no importer runs: gc holds the store lock alone
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        indexed = {cid for (cid,) in self._db.execute("SELECT cid FROM chunks").fetchall()}
        for shard in self._chunks.iterdir():
            for path in shard.iterdir():
                if path.name not in indexed:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
        return removed

    def cids_after(self, after: str, limit: int) -> list[str]:
        """Up to `limit` stored chunk CIDs greater than `after`, in order (a paged listing)."""
        rows = self._db.execute("SELECT cid FROM chunks WHERE cid > ? ORDER BY cid LIMIT ?", (after, limit))
        return [cid for (cid,) in rows.fetchall()]

    def random_cids(self, count: int) -> list[str]:
        """Up to `count` stored chunk CIDs picked at random."""
        rows = self._db.execute("SELECT cid FROM chunks ORDER BY random() LIMIT ?", (count,))
        return [cid for (cid,) in rows.fetchall()]

    def usage(self) -> tuple[int, int]:
        """(chunk count, bytes) indexed in the store."""
        count, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chunks").fetchone()
        return int(count), int(total)

