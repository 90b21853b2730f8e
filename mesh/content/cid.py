"""Content identifiers: CIDv1 with a multihash, in binary and multibase base32 text form.

Binary form (https://github.com/multiformats/cid): varint(1) varint(codec) varint(hash_code)
varint(digest length) digest, each varint an unsigned LEB128 of at most 9 bytes in its shortest
form. Text form: "b" (multibase base32, lower case) + unpadded RFC 4648 base32 of the binary form.
We write BLAKE3-256 and read BLAKE3-256 or SHA2-256, each with a 32-byte digest; every other version,
codec, hash or length is refused, so a `Cid` that exists is always one we can verify.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Callable, Protocol

import blake3

from mesh.ids import b32decode, b32encode

CID_VERSION = 1
RAW = 0x55  # multicodec "raw": a chunk of file bytes
DAG_CBOR = 0x71  # multicodec "dag-cbor": a manifest
BLAKE3 = 0x1E  # multihash "blake3"; we use its default 32-byte output
SHA2_256 = 0x12  # multihash "sha2-256"; read for interop with IPFS tools

DIGEST_BYTES = 32
VARINT_BYTES_MAX = 9  # unsigned-varint spec: at most 9 bytes (63 bits)
CID_TEXT_CHARS_MAX = 128  # longest text we try to parse; ours are 59 characters
MULTIBASE_BASE32 = "b"

CODECS = {RAW: "raw", DAG_CBOR: "dag-cbor"}


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...
    def digest(self) -> bytes: ...


def _sha256(data: bytes = b"") -> _Hash:
    """hashlib's SHA-256, imported on first use: hashlib loads OpenSSL (~4 ms of every start-up,
    `mesh cat` included), and SHA2-256 CIDs are only ever read, for interop."""
    from hashlib import sha256

    return sha256(data)


HASHES: dict[int, Callable[..., _Hash]] = {BLAKE3: blake3.blake3, SHA2_256: _sha256}
HASH_NAMES = {BLAKE3: "blake3", SHA2_256: "sha2-256"}


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, shortest form."""
    if value < 0:
        raise ValueError("a varint is unsigned")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if len(out) > VARINT_BYTES_MAX:
        raise ValueError("varint longer than 9 bytes")
    return bytes(out)


def decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """The varint at `offset` and the offset after it; ValueError if truncated, long or padded."""
    value = 0
    for index in range(VARINT_BYTES_MAX):
        if offset + index >= len(data):
            raise ValueError("truncated varint")
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte & 0x80 == 0:
            if byte == 0 and index > 0:
                raise ValueError("varint not in its shortest form")
            return value, offset + index + 1
    raise ValueError("varint longer than 9 bytes")


CID_CACHE_ENTRIES = 1 << 16  # parsed and printed CIDs remembered (immutable; ~200 bytes each)


@dataclass(frozen=True, order=True)
class Cid:
    """A CIDv1 naming bytes by their hash; construction validates, so every instance is usable."""

    codec: int  # multicodec of the named bytes: RAW for chunks, DAG_CBOR for manifests
    hash_code: int  # multihash function code: BLAKE3 or SHA2_256
    digest: bytes  # the hash of the named bytes, DIGEST_BYTES long

    def __hash__(self) -> int:  # bytes cache their hash; CIDs are dictionary keys in hot loops
        return hash(self.digest)

    def __post_init__(self) -> None:
        if type(self.codec) is not int or type(self.hash_code) is not int:
            raise ValueError("codec and hash code are ints")
        if self.codec not in CODECS:
            raise ValueError(f"unsupported codec 0x{self.codec:x} (expected raw or dag-cbor)")
        if self.hash_code not in HASHES:
            raise ValueError(f"unsupported hash 0x{self.hash_code:x} (expected blake3 or sha2-256)")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise ValueError(f"a digest must be {DIGEST_BYTES} bytes")

    def to_bytes(self) -> bytes:
        """Binary CIDv1."""
        fields = (CID_VERSION, self.codec, self.hash_code, DIGEST_BYTES)
        return b"".join(map(encode_varint, fields)) + self.digest

    @classmethod
    def from_bytes(cls, data: bytes) -> Cid:
        """Parse exactly one binary CIDv1; ValueError on anything else. The same bytes give the
        same object (while remembered): CIDs from the wire are dictionary keys in the core's
        loops, and a key that is the very object stored is found without a comparison."""
        data = bytes(memoryview(data))
        return _from_bytes(data) if cls is Cid else cls._from_bytes(data)

    @classmethod
    def _from_bytes(cls, data: bytes) -> Cid:
        if len(data) == 34 and data[:2] == b"\x12\x20":
            raise ValueError("CIDv0 is not supported; use CIDv1")
        version, offset = decode_varint(data, 0)
        if version != CID_VERSION:
            raise ValueError(f"unsupported CID version {version}")
        codec, offset = decode_varint(data, offset)
        hash_code, offset = decode_varint(data, offset)
        length, offset = decode_varint(data, offset)
        if length != DIGEST_BYTES or len(data) - offset != DIGEST_BYTES:
            raise ValueError(f"digest length must be {DIGEST_BYTES} bytes and end the CID")
        return cls(codec, hash_code, data[offset:])

    def __str__(self) -> str:
        return _text_of(self.codec, self.hash_code, self.digest)

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Parse the text form; ValueError saying why if it is not a canonical CID we support."""
        if cls is Cid and isinstance(text, str):
            return _parsed(text)  # the same CIDs are parsed over and over in the core's loops
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> Cid:
        if not isinstance(text, str) or not text:
            raise ValueError("empty CID")
        if len(text) > CID_TEXT_CHARS_MAX:
            raise ValueError("CID text too long")
        if text.startswith("Qm"):
            raise ValueError("CIDv0 (Qm...) is not supported; use CIDv1 in base32 (b...)")
        if text[0] != MULTIBASE_BASE32:
            raise ValueError(f"multibase prefix {text[0]!r} is not supported; expected 'b' (base32)")
        if text != text.lower():
            raise ValueError("a CID is written in lower case")
        cid = cls.from_bytes(b32decode(text[1:]))
        if str(cid) != text:
            raise ValueError("CID text is not canonical base32")
        return cid

    def verify(self, data: bytes | memoryview) -> bool:
        """True if `data` hashes to this CID with this CID's hash function."""
        hasher = HASHES[self.hash_code]()
        hasher.update(data)
        return hasher.digest() == self.digest

    def __repr__(self) -> str:
        return f"Cid({str(self)!r})"


class ChunkHasher:
    """Incremental hashing of one chunk, so a large chunk can be hashed as it streams in."""

    def __init__(self, codec: int = RAW, hash_code: int = BLAKE3) -> None:
        Cid(codec, hash_code, bytes(DIGEST_BYTES))  # validates both codes
        self._codec = codec
        self._hash_code = hash_code
        self._hasher = HASHES[hash_code]()
        self.bytes_hashed = 0  # how many bytes `update` has seen

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of the chunk."""
        self._hasher.update(data)
        self.bytes_hashed += len(data)

    def cid(self) -> Cid:
        """The CID of everything fed so far."""
        return Cid(self._codec, self._hash_code, self._hasher.digest())


def cid_for_raw(data: bytes | memoryview, hash_code: int = BLAKE3) -> Cid:
    """The CID of a chunk (raw codec); BLAKE3 unless told otherwise."""
    hasher = ChunkHasher(RAW, hash_code)
    hasher.update(data)
    return hasher.cid()


def cid_for_dag_cbor(encoded: bytes, hash_code: int = BLAKE3) -> Cid:
    """The CID of an encoded manifest (dag-cbor codec)."""
    hasher = ChunkHasher(DAG_CBOR, hash_code)
    hasher.update(encoded)
    return hasher.cid()


@functools.lru_cache(maxsize=CID_CACHE_ENTRIES)
def _from_bytes(data: bytes) -> Cid:
    return Cid._from_bytes(data)  # a ValueError is raised each time, never cached


@functools.lru_cache(maxsize=CID_CACHE_ENTRIES)
def _parsed(text: str) -> Cid:
    return Cid._parse(text)  # a ValueError is raised each time, never cached


@functools.lru_cache(maxsize=CID_CACHE_ENTRIES)
def _text_of(codec: int, hash_code: int, digest: bytes) -> str:
    fields = (CID_VERSION, codec, hash_code, DIGEST_BYTES)
    return MULTIBASE_BASE32 + b32encode(b"".join(map(encode_varint, fields)) + digest)
