"""Content addressing: CIDs, chunking, manifests, and the chunk-store interface.

Pure code: nothing here opens files or sockets; callers pass in streams and bytes.
"""

from mesh.content.chunking import (
    CHUNK_BYTES_MAX,
    CHUNK_BYTES_MIN,
    CHUNK_BYTES_START,
    CHUNKS_PER_FILE_TARGET,
    chunk_bytes_for,
    chunk_count,
    chunk_spans,
    iter_chunks,
)
from mesh.content.cid import BLAKE3, DAG_CBOR, RAW, SHA2_256, ChunkHasher, Cid, cid_for_dag_cbor, cid_for_raw
from mesh.content.manifest import DirEntry, DirManifest, FileManifest, decode_manifest, file_cid
from mesh.content.store import ChunkStore, MemoryChunkStore

__all__ = [
    "BLAKE3",
    "CHUNKS_PER_FILE_TARGET",
    "CHUNK_BYTES_MAX",
    "CHUNK_BYTES_MIN",
    "CHUNK_BYTES_START",
    "DAG_CBOR",
    "RAW",
    "SHA2_256",
    "ChunkHasher",
    "ChunkStore",
    "Cid",
    "DirEntry",
    "DirManifest",
    "FileManifest",
    "MemoryChunkStore",
    "chunk_bytes_for",
    "chunk_count",
    "chunk_spans",
    "cid_for_dag_cbor",
    "cid_for_raw",
    "decode_manifest",
    "file_cid",
    "iter_chunks",
]
