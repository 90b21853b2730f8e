"""Releases for simulations: files -> chunks -> manifests in a `MemoryChunkStore`, signed and
published with an organizer's real key through `World.mutate`.

Everything is made by the production content and release code (`chunk_bytes_for`, `file_cid`,
`DirManifest`, `create_release`, `create_publication`); this module only strings it together.
`release_inventory` answers `LoadRelease` from a memory store the way `FileStore.release_inventory`
does from disk.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh.content.chunking import chunk_bytes_for, chunk_spans
from mesh.content.cid import RAW, Cid, cid_for_raw
from mesh.content.manifest import DirEntry, DirManifest, FileManifest, decode_manifest, file_cid
from mesh.content.store import MemoryChunkStore
from mesh.errors import MeshError
from mesh.state import releases as rel

if TYPE_CHECKING:
    from mesh.state.records import AssetRecord
    from mesh.testing.sim import World

MEDIA_TYPE_DEFAULT = "application/octet-stream"


@dataclass(frozen=True)
class ReleaseContent:
    """The blocks of one release tree, ready to put into a store."""

    root: Cid  # the DirManifest's CID (the release root)
    files: Mapping[str, bytes]  # path -> file bytes
    blocks: Mapping[Cid, bytes]  # every block: data chunks and manifests
    manifests: tuple[Cid, ...]  # the root, then every FileManifest, each once
    chunks: tuple[Cid, ...]  # data chunks in the swarm's list order, each once

    @property
    def total_bytes(self) -> int:
        """Sum of file sizes (what `Swarm.total_bytes` reports)."""
        return sum(len(data) for data in self.files.values())

    @property
    def chunk_bytes(self) -> int:
        """Sum of the distinct data chunks' sizes (what a node with nothing must fetch)."""
        return sum(len(self.blocks[cid]) for cid in self.chunks)

    def put_into(self, store: MemoryChunkStore, blocks: set[Cid] | None = None) -> None:
        """Store every block (or only `blocks`), as `mesh release create` does."""
        for cid, data in self.blocks.items():
            if blocks is None or cid in blocks:
                store.put(cid, data)


def random_files(rng: random.Random, count: int, size_min: int, size_max: int,
                 prefix: str = "file") -> dict[str, bytes]:
    """`count` files of incompressible bytes, sizes uniform in [size_min, size_max]."""
    return {f"{prefix}-{i:03d}.bin": rng.randbytes(rng.randint(size_min, size_max)) for i in range(count)}


def build_release(files: Mapping[str, bytes], media_type: str = MEDIA_TYPE_DEFAULT) -> ReleaseContent:
    """Chunk every file, make its FileManifest if it has several chunks, and the DirManifest."""
    blocks: dict[Cid, bytes] = {}
    entries: list[DirEntry] = []
    file_manifests: dict[Cid, None] = {}
    for path, data in files.items():
        cid, manifest = _add_file(blocks, data)
        entries.append(DirEntry(path, cid, len(data), media_type))
        if manifest is not None:
            file_manifests[cid] = None
    root = DirManifest.from_entries(entries)
    blocks[root.cid] = root.encode()
    return ReleaseContent(root.cid, dict(files), blocks, (root.cid, *file_manifests), _chunk_list(root, blocks))


def _add_file(blocks: dict[Cid, bytes], data: bytes) -> tuple[Cid, FileManifest | None]:
    chunk_bytes = chunk_bytes_for(len(data))
    chunks = []
    for offset, length in chunk_spans(len(data), chunk_bytes):
        piece = data[offset:offset + length]
        cid = cid_for_raw(piece)
        blocks[cid] = piece
        chunks.append(cid)
    cid, manifest = file_cid(chunks, len(data), chunk_bytes)
    if manifest is not None:
        blocks[cid] = manifest.encode()
    return cid, manifest


def _chunk_list(root: DirManifest, blocks: Mapping[Cid, bytes]) -> tuple[Cid, ...]:
    """Data chunks in the order `Swarm` lists them: per entry in manifest order, each once."""
    found: dict[Cid, None] = {}
    for entry in root.entries:
        if entry.cid.codec == RAW:
            found[entry.cid] = None
        else:
            found.update(dict.fromkeys(FileManifest.decode(blocks[entry.cid]).chunks))
    return tuple(found)


def release_inventory(store: MemoryChunkStore, root: str) -> tuple[list[tuple[str, bytes]], list[str]]:
    """What `store` holds of a root, as `FileStore.release_inventory` reports it: the manifests
    reachable from `root` that are here (re-hashed on read), and the data chunks that are here. A
    root may be a release (DirManifest), one file's FileManifest, or a raw chunk."""
    manifests: list[tuple[str, bytes]] = []
    present: list[str] = []
    cid = Cid.parse(root)
    if cid.codec == RAW:
        return manifests, [root] if store.has(cid) else []
    found = _read_manifest(store, cid)
    if found is None:
        return manifests, present
    manifests.append((root, found[0]))
    if isinstance(found[1], FileManifest):
        return manifests, [str(c) for c in found[1].chunks if store.has(c)]
    if not isinstance(found[1], DirManifest):
        return manifests, present  # not a release tree: the core reports it as invalid
    for entry in found[1].entries:
        if entry.cid.codec == RAW:
            present += [str(entry.cid)] if store.has(entry.cid) else []
            continue
        file_manifest = _read_manifest(store, entry.cid)
        if file_manifest is None or not isinstance(file_manifest[1], FileManifest):
            continue
        manifests.append((str(entry.cid), file_manifest[0]))
        present += [str(c) for c in file_manifest[1].chunks if store.has(c)]
    return manifests, present


def _read_manifest(store: MemoryChunkStore, cid: Cid) -> tuple[bytes, DirManifest | FileManifest] | None:
    if not store.has(cid):
        return None
    try:
        data = store.get(cid)
        return data, decode_manifest(data)
    except (MeshError, ValueError):
        return None


# ---- signing and publishing with an organizer's real key ---------------------------------------------


def sign_release(world: World, organizer: str, content: ReleaseContent, name: str) -> str:
    """Sign a release record of `content` with `organizer`'s key and store it in its state (not yet
    current, like `mesh release create`); returns the release id."""
    handle = world.nodes[organizer]
    identity = handle.identity
    seq = rel.ReleaseBook(handle.state, identity.authority_public_key, world.now).next_seq()
    release_id, blob = rel.create_release(identity.authority_public_key, identity.key, identity.chain,
                                          name, seq, str(content.root), world.now)
    world.mutate(organizer, lambda state: state.put_release(release_id, blob))
    return release_id


def publish(world: World, organizer: str, release_id: str) -> str:
    """Make `release_id` current (also a rollback: a new publication dated after the latest one);
    returns the publication id."""
    handle = world.nodes[organizer]
    identity = handle.identity
    book = rel.ReleaseBook(handle.state, identity.authority_public_key, world.now)
    at = rel.publication_time(book, world.now)
    pub_id, blob = rel.create_publication(identity.authority_public_key, identity.key, identity.chain,
                                          release_id, at)
    world.mutate(organizer, lambda state: state.put_publication(pub_id, blob))
    return pub_id


def seed_and_publish(world: World, organizer: str, content: ReleaseContent, name: str) -> str:
    """Put `content` into the organizer's store, sign it and make it current; the release id."""
    content.put_into(world.nodes[organizer].store)
    release_id = sign_release(world, organizer, content, name)
    publish(world, organizer, release_id)
    return release_id


# ---- captured media ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaContent:
    """One captured asset: its record and the blocks of its original and previews."""

    record: AssetRecord  # what `mesh add` writes to the shared state
    blocks: Mapping[Cid, bytes]  # every block of the original and of its previews

    @property
    def original_blocks(self) -> set[Cid]:
        """The blocks of the original file (its FileManifest or raw chunk, and its chunks)."""
        found = {Cid.parse(self.record.cid)}
        data = self.blocks[Cid.parse(self.record.cid)]
        if Cid.parse(self.record.cid).codec != RAW:
            found |= set(FileManifest.decode(data).chunks)
        return found

    @property
    def preview_blocks(self) -> set[Cid]:
        return set(self.blocks) - self.original_blocks


def build_media(name: str, data: bytes, added_by: str, added_at: float, tags: frozenset[str] = frozenset(),
                thumbnail: bytes | None = None, preview: bytes | None = None,
                subjects: frozenset[str] = frozenset(), media_type: str = "image/jpeg") -> MediaContent:
    """The blocks and record `mesh add` makes of one file and its previews (made elsewhere)."""
    from mesh.state.records import AssetRecord

    blocks: dict[Cid, bytes] = {}
    cid, _ = _add_file(blocks, data)
    extra: dict[str, str | None] = {"thumbnail": None, "preview": None}
    for key, content in (("thumbnail", thumbnail), ("preview", preview)):
        if content is not None:
            extra[key] = str(_add_file(blocks, content)[0])
    record = AssetRecord(cid=str(cid), name=name, size=len(data), media_type=media_type, added_at=added_at,
                         added_by=added_by, tags=frozenset(tags), subjects=frozenset(subjects), **extra)
    return MediaContent(record, blocks)


def capture(world: World, node: str, media: MediaContent) -> None:
    """Put captured media into a node's store and its record into its state, as `mesh add` does."""
    for cid, data in media.blocks.items():
        world.nodes[node].store.put(cid, data)
    world.mutate(node, lambda state: state.put_asset(media.record))


__all__ = [
    "MediaContent", "ReleaseContent", "build_media", "build_release", "capture", "publish", "random_files",
    "release_inventory", "seed_and_publish", "sign_release",
]
