"""Content layer: CIDs against published vectors and `multiformats`, chunking, manifests, stores."""

from __future__ import annotations

import hashlib
import io
import os
import unicodedata

import cbor2
import pytest
from chunkstore_conformance import ChunkStoreConformance, run_conformance
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash, varint

from mesh.content import (
    BLAKE3,
    CHUNK_BYTES_MAX,
    CHUNK_BYTES_MIN,
    CHUNK_BYTES_START,
    CHUNKS_PER_FILE_TARGET,
    DAG_CBOR,
    RAW,
    SHA2_256,
    ChunkHasher,
    Cid,
    DirEntry,
    DirManifest,
    FileManifest,
    MemoryChunkStore,
    chunk_bytes_for,
    chunk_count,
    chunk_spans,
    cid_for_dag_cbor,
    cid_for_raw,
    decode_manifest,
    file_cid,
    iter_chunks,
)
from mesh.content.cid import decode_varint, encode_varint
from mesh.content.manifest import MANIFEST_BYTES_MAX, encode_link
from mesh.errors import StoreError

HELLO_WORLD_SHA256_CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"  # BLAKE3 test_vectors.json

digests = st.binary(min_size=32, max_size=32)
cids = st.builds(Cid, st.sampled_from([RAW, DAG_CBOR]), st.sampled_from([BLAKE3, SHA2_256]), digests)
raw_cids = st.builds(Cid, st.just(RAW), st.sampled_from([BLAKE3, SHA2_256]), digests)


# --- CIDs: published vectors -------------------------------------------------------------------


def test_published_sha256_cid_of_hello_world() -> None:
    cid = Cid.parse(HELLO_WORLD_SHA256_CID)
    assert (cid.codec, cid.hash_code) == (RAW, SHA2_256)
    assert cid.digest == hashlib.sha256(b"hello world").digest()
    assert cid.verify(b"hello world")
    assert not cid.verify(b"hello world!")
    assert str(cid) == HELLO_WORLD_SHA256_CID
    assert cid_for_raw(b"hello world", SHA2_256) == cid


def test_blake3_official_vector_for_empty_input() -> None:
    cid = cid_for_raw(b"")
    assert cid.to_bytes() == bytes.fromhex("01551e20" + BLAKE3_EMPTY)
    assert Cid.from_bytes(cid.to_bytes()) == cid
    assert cid.verify(memoryview(b""))


def test_dag_cbor_cid_header() -> None:
    cid = cid_for_dag_cbor(b"\xa0")
    assert cid.to_bytes()[:4] == bytes.fromhex("01711e20")
    assert str(cid).startswith("bafyr4i")


# --- CIDs: independent encoder (multiformats) ---------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([BLAKE3, SHA2_256]), st.sampled_from([RAW, DAG_CBOR]))
def test_cid_matches_multiformats(data: bytes, hash_code: int, codec: int) -> None:
    # multiformats hashes blake3 with the same `blake3` package, so this checks our encoding;
    # the BLAKE3 digest itself is checked against the official vector above.
    hasher = ChunkHasher(codec, hash_code)
    hasher.update(data)
    ours = hasher.cid()
    name = {BLAKE3: "blake3", SHA2_256: "sha2-256"}[hash_code]
    codec_name = {RAW: "raw", DAG_CBOR: "dag-cbor"}[codec]
    theirs = CID("base32", 1, codec_name, multihash.digest(data, name, size=32))
    assert ours.to_bytes() == bytes(theirs)
    assert str(ours) == str(theirs)
    assert Cid.parse(str(theirs)) == ours


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_varint_matches_multiformats(value: int) -> None:
    encoded = encode_varint(value)
    assert encoded == varint.encode(value)
    assert decode_varint(b"\xff" + encoded, 1) == (value, len(encoded) + 1)


# --- CIDs: round trips and refusals ------------------------------------------------------------


@given(cids)
def test_cid_round_trips(cid: Cid) -> None:
    assert Cid.from_bytes(cid.to_bytes()) == cid
    assert Cid.parse(str(cid)) == cid
    assert len(str(cid)) == 59


@given(cids, cids)
def test_cid_order_is_total_and_consistent(a: Cid, b: Cid) -> None:
    assert (a < b) + (a == b) + (a > b) == 1
    assert (a == b) == (hash(a) == hash(b) and a.to_bytes() == b.to_bytes())


@pytest.mark.parametrize(
    "hex_bytes, reason",
    [
        ("1220" + "00" * 32, "CIDv0"),
        ("02551e20" + "00" * 32, "version"),
        ("01701e20" + "00" * 32, "codec"),  # dag-pb
        ("01551320" + "00" * 32, "hash"),  # sha2-512
        ("01551e10" + "00" * 16, "digest length"),
        ("01551e20" + "00" * 31, "digest length"),
        ("01551e20" + "00" * 33, "digest length"),
        ("8100551e20" + "00" * 32, "shortest"),
        ("01", "truncated"),
        ("", "truncated"),
    ],
)
def test_cid_from_bytes_refuses(hex_bytes: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Cid.from_bytes(bytes.fromhex(hex_bytes))


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("QmaozNR7DZHQK1ZcU9p7QdrshMvXqWK6gpu5rmrkPdT3L4", "CIDv0"),
        ("zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA", "prefix 'z'"),
        (HELLO_WORLD_SHA256_CID.upper(), "prefix 'B'"),
        ("bAFKREIFZJUT3TE2NHYEKKLSS27NH3K72YSCO7Y32KOAO5EEI66WOF36N5E", "lower case"),
        (HELLO_WORLD_SHA256_CID[:-1] + "f", "canonical"),  # same bytes, different padding bits
        (HELLO_WORLD_SHA256_CID + "=", "base32"),
        ("b" + "a" * 200, "too long"),
        ("b1", "base32"),
    ],
)
def test_cid_parse_refuses_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Cid.parse(text)


@given(st.binary(max_size=80))
def test_cid_from_random_bytes_only_raises_value_error(data: bytes) -> None:
    try:
        assert Cid.from_bytes(data).to_bytes() == data
    except ValueError:
        pass


@given(st.text(max_size=80))
def test_cid_parse_of_random_text_only_raises_value_error(text: str) -> None:
    try:
        assert str(Cid.parse(text)) == text
    except ValueError:
        pass


def test_cid_constructor_validates() -> None:
    with pytest.raises(ValueError):
        Cid(RAW, BLAKE3, b"short")
    with pytest.raises(ValueError):
        Cid(0x70, BLAKE3, bytes(32))
    with pytest.raises(ValueError):
        Cid(RAW, 0x13, bytes(32))
    with pytest.raises(ValueError):
        ChunkHasher(RAW, 0x13)


@given(st.binary(max_size=5000), st.lists(st.integers(min_value=0, max_value=5000), max_size=5))
def test_chunk_hasher_is_incremental(data: bytes, cuts: list[int]) -> None:
    hasher = ChunkHasher()
    points = [0, *sorted(cuts), len(data)]
    for start, end in zip(points, points[1:]):
        hasher.update(memoryview(data)[start:end])
    assert hasher.cid() == cid_for_raw(data)
    assert hasher.bytes_hashed == len(data)


# --- chunking -----------------------------------------------------------------------------------


class CountingStream(io.BytesIO):
    """A BytesIO that records the largest read asked of it and can return short reads."""

    def __init__(self, data: bytes, short_read_bytes: int | None = None) -> None:
        super().__init__(data)
        self.largest_read = 0
        self.short_read_bytes = short_read_bytes

    def read(self, size: int | None = -1) -> bytes:
        self.largest_read = max(self.largest_read, size if size is not None and size >= 0 else 1 << 62)
        if self.short_read_bytes is not None and size is not None and size >= 0:
            size = min(size, self.short_read_bytes)
        return super().read(size)


def _assert_chunks_reassemble(data: bytes, chunk_bytes: int | None, short_read_bytes: int | None = None):
    stream = CountingStream(data + b"trailing bytes past size", short_read_bytes)
    chunks = list(iter_chunks(stream, len(data), chunk_bytes))
    nominal = chunk_bytes or chunk_bytes_for(len(data))
    assert b"".join(chunks) == data
    assert all(type(chunk) is bytes for chunk in chunks)
    assert [len(chunk) for chunk in chunks] == [length for _, length in chunk_spans(len(data), chunk_bytes)]
    assert len(chunks) == chunk_count(len(data), nominal)
    assert stream.largest_read <= nominal
    assert stream.tell() == len(data)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64])
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("multiple", [1, 3])
def test_chunk_boundaries(chunk_bytes: int, delta: int, multiple: int) -> None:
    size = max(0, chunk_bytes * multiple + delta)
    _assert_chunks_reassemble(os.urandom(size), chunk_bytes)


MIN = CHUNK_BYTES_START


@pytest.mark.parametrize("size", [0, 1, MIN - 1, MIN, MIN + 1, 3 * MIN + 5])
def test_chunk_boundaries_at_real_chunk_size(size: int) -> None:
    _assert_chunks_reassemble(os.urandom(size), None)


@settings(deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=700), st.none() | st.integers(1, 50))
def test_chunk_reassemble_round_trip(data: bytes, chunk_bytes: int, short_read_bytes: int | None) -> None:
    _assert_chunks_reassemble(data, chunk_bytes, short_read_bytes)


def test_empty_file_is_one_empty_chunk() -> None:
    assert list(iter_chunks(io.BytesIO(b""), 0)) == [b""]
    assert chunk_spans(0) == [(0, 0)]
    assert cid_for_raw(b"").to_bytes().hex().endswith(BLAKE3_EMPTY)


def test_chunks_are_read_lazily() -> None:
    stream = CountingStream(bytes(10 * 64))
    chunks = iter_chunks(stream, 10 * 64, chunk_bytes=64)
    next(chunks)
    assert stream.tell() == 64


def test_stream_that_ends_early_raises_store_error() -> None:
    with pytest.raises(StoreError, match="changed while being read"):
        list(iter_chunks(io.BytesIO(b"x" * 100), 101, chunk_bytes=64))


def test_iter_chunks_checks_arguments_before_reading() -> None:
    with pytest.raises(ValueError):
        iter_chunks(io.BytesIO(b""), -1)
    with pytest.raises(ValueError):
        iter_chunks(io.BytesIO(b""), 10, chunk_bytes=0)


@given(st.integers(min_value=0, max_value=CHUNK_BYTES_MAX * CHUNKS_PER_FILE_TARGET))
def test_chunk_bytes_for_keeps_files_within_target(size: int) -> None:
    chunk_bytes = chunk_bytes_for(size)
    assert CHUNK_BYTES_START <= chunk_bytes <= CHUNK_BYTES_MAX
    assert chunk_bytes & (chunk_bytes - 1) == 0
    assert chunk_count(size, chunk_bytes) <= CHUNKS_PER_FILE_TARGET
    assert chunk_bytes == CHUNK_BYTES_START or chunk_count(size, chunk_bytes // 2) > CHUNKS_PER_FILE_TARGET


@given(st.integers(min_value=CHUNK_BYTES_MAX * CHUNKS_PER_FILE_TARGET + 1, max_value=1 << 50))
def test_chunk_bytes_for_caps_at_max(size: int) -> None:
    assert chunk_bytes_for(size) == CHUNK_BYTES_MAX


def test_chunk_bytes_for_steps() -> None:
    assert chunk_bytes_for(0) == CHUNK_BYTES_START
    assert chunk_bytes_for(CHUNK_BYTES_START * CHUNKS_PER_FILE_TARGET) == CHUNK_BYTES_START
    assert chunk_bytes_for(CHUNK_BYTES_START * CHUNKS_PER_FILE_TARGET + 1) == 2 * CHUNK_BYTES_START
    assert chunk_bytes_for(2 << 30) == 2 * 1024 * 1024  # a 2 GiB video: 1024 chunks of 2 MiB
    with pytest.raises(ValueError):
        chunk_bytes_for(-1)


@given(st.integers(min_value=0, max_value=1 << 40))
def test_chunk_spans_tile_the_file(size: int) -> None:
    spans = chunk_spans(size)
    assert spans[0][0] == 0
    assert all(offset + length == next_offset for (offset, length), (next_offset, _) in zip(spans, spans[1:]))
    assert sum(length for _, length in spans) == size


# --- manifests ----------------------------------------------------------------------------------


@st.composite
def file_manifests(draw) -> FileManifest:
    chunk_bytes = CHUNK_BYTES_MIN << draw(st.integers(min_value=0, max_value=6))
    count = draw(st.integers(min_value=2, max_value=40))
    tail = draw(st.integers(min_value=1, max_value=chunk_bytes))
    chunks = draw(st.lists(raw_cids, min_size=count, max_size=count))
    return FileManifest((count - 1) * chunk_bytes + tail, chunk_bytes, tuple(chunks))


segment_chars = st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="/\\\x7f")
segments = st.text(segment_chars, min_size=1, max_size=12).filter(
    lambda segment: segment not in (".", "..") and unicodedata.normalize("NFC", segment) == segment
)
paths = st.lists(segments, min_size=1, max_size=4).map("/".join)
media_types = st.sampled_from(["image/png", "text/plain; charset=utf-8", "application/octet-stream"])
dir_entries = st.builds(DirEntry, paths, cids, st.integers(min_value=0, max_value=(1 << 64) - 1), media_types)


def _without_conflicts(entries: list[DirEntry]) -> list[DirEntry]:
    """Keep one entry per path and drop files that would also have to be directories."""
    by_path = {entry.path: entry for entry in entries}
    directories = {path.rsplit("/", depth)[0] for path in by_path for depth in range(1, path.count("/") + 1)}
    kept = {path: entry for path, entry in by_path.items() if path not in directories}
    return sorted(kept.values(), key=lambda entry: entry.path)


dir_manifests = st.lists(dir_entries, max_size=12).map(_without_conflicts).map(DirManifest)


@settings(deadline=None)
@given(file_manifests())
def test_file_manifest_round_trips(manifest: FileManifest) -> None:
    encoded = manifest.encode()
    assert FileManifest.decode(encoded) == manifest
    assert decode_manifest(encoded) == manifest
    assert manifest.cid == cid_for_dag_cbor(encoded) and manifest.cid.codec == DAG_CBOR
    assert FileManifest(manifest.size, manifest.chunk_bytes, list(manifest.chunks)).encode() == encoded
    spans = manifest.spans()
    assert [cid for cid, _, _ in spans] == list(manifest.chunks)
    assert sum(length for _, _, length in spans) == manifest.size


@settings(deadline=None)
@given(dir_manifests)
def test_dir_manifest_round_trips(manifest: DirManifest) -> None:
    encoded = manifest.encode()
    assert DirManifest.decode(encoded) == manifest
    assert decode_manifest(encoded) == manifest
    assert DirManifest.from_entries(list(reversed(manifest.entries))).encode() == encoded
    assert manifest.cid == cid_for_dag_cbor(encoded)


@settings(deadline=None)
@given(file_manifests())
def test_file_manifest_encoding_is_canonical(manifest: FileManifest) -> None:
    links = [encode_link(cid) for cid in manifest.chunks]
    fields = [("chunks", links), ("chunk_bytes", manifest.chunk_bytes), ("size", manifest.size)]
    reordered = dict([*fields, ("version", 1), ("type", "file")])
    assert cbor2.dumps(reordered, canonical=True) == manifest.encode()
    # dag-cbor key order: shorter keys first, then bytewise
    assert list(cbor2.loads(manifest.encode())) == ["size", "type", "chunks", "version", "chunk_bytes"]
    with pytest.raises(ValueError, match="canonical"):
        FileManifest.decode(cbor2.dumps(reordered))  # same value, keys out of order


def test_non_canonical_integer_is_refused() -> None:
    manifest = FileManifest(CHUNK_BYTES_MIN + 1, CHUNK_BYTES_MIN, (cid_for_raw(b"a"), cid_for_raw(b"b")))
    encoded = manifest.encode()
    version_one = cbor2.dumps("version") + b"\x01"
    assert version_one in encoded
    padded = encoded.replace(version_one, cbor2.dumps("version") + b"\x18\x01")  # 1 in two bytes
    assert cbor2.loads(padded) == cbor2.loads(encoded)
    with pytest.raises(ValueError, match="canonical"):
        FileManifest.decode(padded)


def test_file_cid_of_one_chunk_is_the_chunk() -> None:
    chunk = cid_for_raw(b"small file")
    assert file_cid([chunk], 10, chunk_bytes_for(10)) == (chunk, None)
    assert file_cid([cid_for_raw(b"")], 0, chunk_bytes_for(0)) == (cid_for_raw(b""), None)


def test_file_cid_of_a_stream() -> None:
    data = os.urandom(2 * CHUNK_BYTES_START + 3)
    chunk_cids = [cid_for_raw(chunk) for chunk in iter_chunks(io.BytesIO(data), len(data))]
    cid, manifest = file_cid(chunk_cids, len(data), chunk_bytes_for(len(data)))
    assert manifest is not None and cid == manifest.cid
    assert manifest.chunks == tuple(chunk_cids) and manifest.size == len(data)
    with pytest.raises(ValueError, match="chunk count"):
        file_cid(chunk_cids[:-1], len(data), chunk_bytes_for(len(data)))


def _file_document(**changes) -> bytes:
    document = {
        "type": "file",
        "version": 1,
        "size": CHUNK_BYTES_MIN + 1,
        "chunk_bytes": CHUNK_BYTES_MIN,
        "chunks": [encode_link(cid_for_raw(b"a")), encode_link(cid_for_raw(b"b"))],
    }
    document.update(changes)
    return cbor2.dumps({key: value for key, value in document.items() if value is not None}, canonical=True)


def test_file_manifest_document_is_valid_baseline() -> None:
    assert FileManifest.decode(_file_document()).size == CHUNK_BYTES_MIN + 1


@pytest.mark.parametrize(
    "changes",
    [
        {"size": CHUNK_BYTES_MIN},  # one chunk's worth: count mismatch
        {"size": 3 * CHUNK_BYTES_MIN},  # three chunks' worth
        {"size": -1},
        {"size": True},
        {"size": 2**64 + CHUNK_BYTES_MIN},  # bignum
        {"chunk_bytes": CHUNK_BYTES_MIN + 1},
        {"chunk_bytes": CHUNK_BYTES_MIN // 2, "size": CHUNK_BYTES_MIN // 2 + 1},
        {"chunk_bytes": 2 * CHUNK_BYTES_MAX, "size": 2 * CHUNK_BYTES_MAX + 1},
        {"chunks": [encode_link(cid_for_raw(b"a"))], "size": 5},  # one chunk is not a manifest
        {"chunks": [encode_link(cid_for_raw(b"a")), encode_link(cid_for_dag_cbor(b"b"))]},
        {"chunks": [encode_link(cid_for_raw(b"a")), cid_for_raw(b"b").to_bytes()]},  # not a link
        {"chunks": [encode_link(cid_for_raw(b"a")), cbor2.CBORTag(42, cid_for_raw(b"b").to_bytes())]},
        {"chunks": "ab"},
        {"version": 2},
        {"version": None},
        {"type": "dir"},
        {"extra": 1},
    ],
)
def test_file_manifest_decode_refuses(changes: dict) -> None:
    with pytest.raises(ValueError):
        FileManifest.decode(_file_document(**changes))


def test_manifest_decode_refuses_oversize_input() -> None:
    with pytest.raises(ValueError, match="longer"):
        FileManifest.decode(b"\x00" * (MANIFEST_BYTES_MAX + 1))


@pytest.mark.parametrize(
    "path",
    ["", "/abs", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\x00b", "t\tb", "e\u0301.png", "\ud800"]
    + ["x" * 1025],
)
def test_dir_entry_refuses_bad_paths(path: str) -> None:
    with pytest.raises(ValueError):
        DirEntry(path, cid_for_raw(b""), 0, "text/plain")


@pytest.mark.parametrize("media_type", ["", "png", "image/\npng", "imäge/png", "a/" + "b" * 300])
def test_dir_entry_refuses_bad_media_types(media_type: str) -> None:
    with pytest.raises(ValueError):
        DirEntry("a.png", cid_for_raw(b""), 0, media_type)


@pytest.mark.parametrize(
    "paths, reason",
    [(["b", "a"], "sorted"), (["a", "a"], "sorted"), (["a", "a-b", "a/b"], "both a file and a directory")],
)
def test_dir_manifest_refuses_bad_trees(paths: list[str], reason: str) -> None:
    entries = [DirEntry(path, cid_for_raw(b""), 0, "text/plain") for path in paths]
    with pytest.raises(ValueError, match=reason):
        DirManifest(tuple(entries))


def test_dir_manifest_decode_refuses_unsorted_document() -> None:
    entries = [DirEntry(path, cid_for_raw(b""), 0, "text/plain").to_cbor() for path in ("b", "a")]
    with pytest.raises(ValueError, match="sorted"):
        DirManifest.decode(cbor2.dumps({"type": "dir", "version": 1, "entries": entries}, canonical=True))


DECODERS = [FileManifest.decode, DirManifest.decode, decode_manifest]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_manifest_decode_of_random_bytes_only_raises_value_error(data: bytes) -> None:
    for decode in DECODERS:
        with pytest.raises(ValueError):
            decode(data)


manifest_keys = st.sampled_from(["type", "version", "size", "chunk_bytes", "chunks", "entries", "path"])
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(manifest_keys, children, max_size=6)
    | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 4, 5, 30, 42, 258, 1000]), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_manifest_decode_of_random_cbor_only_raises_value_error(value) -> None:
    try:
        data = cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        return
    for decode in DECODERS:
        try:
            assert decode(data).encode() == data
        except ValueError:
            pass


@settings(deadline=None)
@given(st.one_of(file_manifests(), dir_manifests), st.data())
def test_manifest_decode_of_damaged_bytes_only_raises_value_error(manifest, data) -> None:
    encoded = bytearray(manifest.encode())
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    damaged = bytes(encoded[: data.draw(st.integers(min_value=0, max_value=len(encoded)))])
    try:
        assert decode_manifest(damaged).encode() == damaged
    except ValueError:
        pass


# --- chunk stores -------------------------------------------------------------------------------


class TestMemoryChunkStore(ChunkStoreConformance):
    def make_store(self, tmp_path) -> MemoryChunkStore:
        return MemoryChunkStore()


def test_run_conformance_runs_every_check() -> None:
    made = []

    def make_store() -> MemoryChunkStore:
        made.append(MemoryChunkStore(chunk_bytes_max=CHUNK_BYTES_MIN))
        return made[-1]

    run_conformance(make_store)
    assert len(made) > 5


def test_memory_store_total_limit() -> None:
    store = MemoryChunkStore(bytes_max=100)
    first, second = os.urandom(60), os.urandom(60)
    assert store.put(cid_for_raw(first), first)
    with pytest.raises(StoreError, match="full"):
        store.put(cid_for_raw(second), second)
    assert store.bytes_stored == 60 and not store.has(cid_for_raw(second))
    store.delete(cid_for_raw(first))
    assert store.bytes_stored == 0
    assert store.put(cid_for_raw(second), second)
