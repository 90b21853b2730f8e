"""Manifests: canonical DAG-CBOR documents that name a file's chunks or a directory's files.

A file of one chunk is named by that chunk's CID; a longer file by the CID of its `FileManifest`.
A `DirManifest` (a release's tree) lists files by relative path. Both encode as DAG-CBOR
(https://ipld.io/specs/codecs/dag-cbor/spec/): definite lengths, shortest integers, map keys sorted
by length then bytes (cbor2's canonical mode), no floats, and CID links as tag 42 over
b"\\x00" + binary CID. Decoding accepts only the exact bytes `encode` would produce, so one value has
one encoding and therefore one CID. Schemas are in docs/content-addressing.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import cbor2

from mesh.content.chunking import CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, chunk_count
from mesh.content.cid import RAW, Cid, cid_for_dag_cbor

MANIFEST_VERSION = 1
MANIFEST_BYTES_MAX = 64 * 1024 * 1024  # refuse to decode anything longer
FILE_CHUNKS_MAX = 1 << 20  # 16 TiB at CHUNK_BYTES_MAX; about 40 MiB of manifest
DIR_ENTRIES_MAX = 1 << 17
PATH_BYTES_MAX = 1024  # UTF-8 bytes of one relative path
MEDIA_TYPE_CHARS_MAX = 255
FILE_SIZE_BYTES_MAX = (1 << 64) - 1  # a CBOR unsigned integer, no bignums
CID_LINK_TAG = 42  # dag-cbor link; its bytes are the identity multibase prefix 0x00 + binary CID


def encode_link(cid: Cid) -> cbor2.CBORTag:
    """A CID as a dag-cbor link."""
    return cbor2.CBORTag(CID_LINK_TAG, b"\x00" + cid.to_bytes())


def decode_link(value: Any) -> Cid:
    """The CID in a dag-cbor link; ValueError if `value` is not one."""
    if not isinstance(value, cbor2.CBORTag) or value.tag != CID_LINK_TAG:
        raise ValueError("expected a CID link (CBOR tag 42)")
    if not isinstance(value.value, bytes) or value.value[:1] != b"\x00":
        raise ValueError("a CID link holds 0x00 followed by a binary CID")
    return Cid.from_bytes(value.value[1:])


def _encode(document: dict[str, Any]) -> bytes:
    return cbor2.dumps(document, canonical=True)


def _decode(data: bytes, kind: str, keys: frozenset[str]) -> dict[str, Any]:
    """The top-level map of a manifest of `kind`, with exactly `keys`; ValueError otherwise."""
    document = decode_document(data)
    if document.get("type") != kind:
        raise ValueError(f"not a {kind} manifest")
    return _checked_map(document, keys, f"{kind} manifest")


def decode_document(data: bytes) -> dict[str, Any]:
    """Parse a manifest's CBOR into a map with our type and version; ValueError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("a manifest is bytes")
    if len(data) > MANIFEST_BYTES_MAX:
        raise ValueError(f"manifest longer than {MANIFEST_BYTES_MAX} bytes")
    try:
        document = cbor2.loads(bytes(data))
    # cbor2's tag decoders (dates, decimals, fractions...) can raise more than CBORError.
    except (cbor2.CBORError, ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        raise ValueError(f"manifest is not valid CBOR: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("a manifest is a CBOR map")
    if document.get("version") != MANIFEST_VERSION or type(document.get("version")) is not int:
        raise ValueError(f"unsupported manifest version (expected {MANIFEST_VERSION})")
    return document


def _checked_map(value: Any, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"a {what} is a map with keys {sorted(keys)}")
    return value


def _checked_uint(value: Any, what: str, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise ValueError(f"{what} must be an integer in [0, {maximum}]")
    return value


def _checked_list(value: Any, what: str, maximum: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > maximum:
        raise ValueError(f"{what} must be a list of at most {maximum} items")
    return value


def _shown(value: Any) -> str:
    """A repr short enough for an error message about untrusted input."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require_canonical(value: FileManifest | DirManifest, data: bytes) -> None:
    if value.encode() != bytes(data):
        raise ValueError("manifest is not in canonical dag-cbor form")


@dataclass(frozen=True)
class FileManifest:
    """The chunks of a file of two or more chunks, in order."""

    size: int  # file size in bytes
    chunk_bytes: int  # nominal chunk size: every chunk but the last has this many bytes
    chunks: tuple[Cid, ...]  # raw-codec chunk CIDs in file order

    _KEYS = frozenset({"type", "version", "size", "chunk_bytes", "chunks"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", tuple(self.chunks))
        _checked_uint(self.size, "size", FILE_SIZE_BYTES_MAX)
        _checked_uint(self.chunk_bytes, "chunk_bytes", CHUNK_BYTES_MAX)
        if self.chunk_bytes < CHUNK_BYTES_MIN or self.chunk_bytes & (self.chunk_bytes - 1):
            raise ValueError("chunk_bytes must be a power of two in [CHUNK_BYTES_MIN, CHUNK_BYTES_MAX]")
        if not 2 <= len(self.chunks) <= FILE_CHUNKS_MAX:
            raise ValueError(f"a file manifest lists 2 to {FILE_CHUNKS_MAX} chunks")
        if len(self.chunks) != chunk_count(self.size, self.chunk_bytes):
            raise ValueError("chunk count does not match size and chunk_bytes")
        if not all(isinstance(cid, Cid) and cid.codec == RAW for cid in self.chunks):
            raise ValueError("a file manifest's chunks are raw-codec CIDs")

    def encode(self) -> bytes:
        """Canonical dag-cbor."""
        return _encode(
            {
                "type": "file",
                "version": MANIFEST_VERSION,
                "size": self.size,
                "chunk_bytes": self.chunk_bytes,
                "chunks": [encode_link(cid) for cid in self.chunks],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> FileManifest:
        """Parse canonical bytes; ValueError if malformed, inconsistent or oversized."""
        document = _decode(data, "file", cls._KEYS)
        chunks = _checked_list(document["chunks"], "chunks", FILE_CHUNKS_MAX)
        manifest = cls(document["size"], document["chunk_bytes"], tuple(map(decode_link, chunks)))
        _require_canonical(manifest, data)
        return manifest

    @cached_property
    def cid(self) -> Cid:
        """The CID naming this manifest (and so the file)."""
        return cid_for_dag_cbor(self.encode())

    def spans(self) -> list[tuple[Cid, int, int]]:
        """(chunk CID, offset, length) of every chunk, for range reads."""
        last = len(self.chunks) - 1
        tail = self.size - last * self.chunk_bytes
        return [
            (cid, index * self.chunk_bytes, tail if index == last else self.chunk_bytes)
            for index, cid in enumerate(self.chunks)
        ]


def file_cid(chunks: Sequence[Cid], size: int, chunk_bytes: int) -> tuple[Cid, FileManifest | None]:
    """The CID naming a file: its only chunk's, or else its manifest's (returned alongside)."""
    if len(chunks) != chunk_count(size, chunk_bytes):
        raise ValueError("chunk count does not match size and chunk_bytes")
    if len(chunks) == 1:
        return chunks[0], None
    manifest = FileManifest(size, chunk_bytes, tuple(chunks))
    return manifest.cid, manifest


def check_path(path: str) -> str:
    """`path` if it is a clean relative path; ValueError saying what is wrong otherwise."""
    if not isinstance(path, str) or not path:
        raise ValueError("a path is a non-empty string")
    if len(path.encode("utf-8")) > PATH_BYTES_MAX:  # also refuses lone surrogates
        raise ValueError(f"path longer than {PATH_BYTES_MAX} bytes")
    if "\\" in path:
        raise ValueError(f"path {path!r} contains a backslash")
    if path.startswith("/"):
        raise ValueError(f"path {path!r} is absolute")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise ValueError(f"path {path!r} contains a control character")
    import unicodedata  # only release trees have paths; `mesh cat` and `add` skip its import

    if unicodedata.normalize("NFC", path) != path:
        raise ValueError(f"path {path!r} is not in Unicode NFC form")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' segment")
    return path


def _check_media_type(media_type: str) -> None:
    ok = (
        isinstance(media_type, str)
        and 0 < len(media_type) <= MEDIA_TYPE_CHARS_MAX
        and media_type.isascii()
        and media_type.isprintable()
        and "/" in media_type
    )
    if not ok:
        raise ValueError(f"media type {_shown(media_type)} is not a printable ASCII type/subtype")


@dataclass(frozen=True)
class DirEntry:
    """One file of a directory manifest."""

    path: str  # relative, "/"-separated, NFC; no "", "." or ".." segments, no backslashes
    cid: Cid  # the file's CID (a raw chunk or a file manifest)
    size: int  # file size in bytes
    media_type: str  # e.g. "image/png"; "application/octet-stream" when unknown

    _KEYS = frozenset({"path", "cid", "size", "media_type"})

    def __post_init__(self) -> None:
        check_path(self.path)
        if not isinstance(self.cid, Cid):
            raise ValueError("a directory entry's cid is a Cid")
        _checked_uint(self.size, "size", FILE_SIZE_BYTES_MAX)
        _check_media_type(self.media_type)

    def to_cbor(self) -> dict[str, Any]:
        """The entry as a dag-cbor map (before encoding)."""
        link = encode_link(self.cid)
        return {"path": self.path, "cid": link, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_cbor(cls, value: Any) -> DirEntry:
        """Inverse of `to_cbor`; ValueError on any schema violation."""
        entry = _checked_map(value, cls._KEYS, "directory entry")
        return cls(entry["path"], decode_link(entry["cid"]), entry["size"], entry["media_type"])


@dataclass(frozen=True)
class DirManifest:
    """A directory tree as a flat list of files, sorted by path."""

    entries: tuple[DirEntry, ...]  # sorted by path, paths unique, no file also used as a directory

    _KEYS = frozenset({"type", "version", "entries"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if len(self.entries) > DIR_ENTRIES_MAX:
            raise ValueError(f"a directory manifest lists at most {DIR_ENTRIES_MAX} entries")
        if not all(isinstance(entry, DirEntry) for entry in self.entries):
            raise ValueError("a directory manifest's entries are DirEntry values")
        paths = [entry.path for entry in self.entries]
        if any(earlier >= later for earlier, later in zip(paths, paths[1:])):
            raise ValueError("directory entries must be sorted by path and unique")
        _check_no_file_is_a_directory(paths)

    def encode(self) -> bytes:
        """Canonical dag-cbor."""
        entries = [entry.to_cbor() for entry in self.entries]
        return _encode({"type": "dir", "version": MANIFEST_VERSION, "entries": entries})

    @classmethod
    def decode(cls, data: bytes) -> DirManifest:
        """Parse canonical bytes; ValueError if malformed, unsorted or oversized."""
        document = _decode(data, "dir", cls._KEYS)
        entries = _checked_list(document["entries"], "entries", DIR_ENTRIES_MAX)
        manifest = cls(tuple(map(DirEntry.from_cbor, entries)))
        _require_canonical(manifest, data)
        return manifest

    @cached_property
    def cid(self) -> Cid:
        """The CID naming this directory (a release's root)."""
        return cid_for_dag_cbor(self.encode())

    @classmethod
    def from_entries(cls, entries: Sequence[DirEntry]) -> DirManifest:
        """A manifest from entries in any order."""
        return cls(tuple(sorted(entries, key=lambda entry: entry.path)))


def _check_no_file_is_a_directory(paths: list[str]) -> None:
    files = set(paths)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in files:
                raise ValueError(f"{'/'.join(parts[:depth])!r} is both a file and a directory")


def decode_manifest(data: bytes) -> FileManifest | DirManifest:
    """Parse either kind of manifest, by its "type" field."""
    kind = decode_document(data).get("type")
    if kind == "file":
        return FileManifest.decode(data)
    if kind == "dir":
        return DirManifest.decode(data)
    raise ValueError(f"unknown manifest type {_shown(kind)}")
