"""Import files as assets: store their bytes and previews, then record them in the shared state.

Two steps, each durable on its own (`mesh add`, `mesh watch` and the agent's ingest use both):
- `store_files` chunks every file into the store, makes its previews (`mesh.content.previews`) and
  stores each as its own object, then commits (or discards everything on any error);
- `record_imports` puts every asset record in ONE state transaction: tags and subjects are added to
  a known record, and a known record keeps its retention, thumbnail and preview when this import
  did not give them. A crash between the steps leaves only unreferenced chunks (gc removes them);
  importing the same bytes again gives the same CID, hence the same record.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mesh.content.previews import make_previews
from mesh.drivers.filestore import AddedFile, FileStore
from mesh.drivers.statefile import StateFile
from mesh.state.records import AssetRecord


@dataclass(frozen=True)
class Imported:
    """One file imported (stored; recorded once `record_imports` returned)."""

    cid: str  # the file's CID
    path: str  # the path as given
    size: int  # bytes
    new_bytes: int  # bytes that were not in the store before (dedup)
    record: AssetRecord  # the asset record this import puts (thumbnail/preview: None if not made)


def store_files(
    store: FileStore, node_id: str, files: Iterable[Path], tags: Iterable[str] = (),
    subjects: frozenset[str] = frozenset(), retention_s: float | None = None,
    on_bytes: Callable[[int], None] | None = None, now: float | None = None,
) -> list[Imported]:
    """Store files and their previews (durable on return); nothing is kept if one fails."""
    tag_list = sorted(set(tags))
    imported: list[Imported] = []
    with store.importing():
        try:
            for path in files:
                added = store.add_file(Path(path), node_id, tag_list, now=now, on_bytes=on_bytes)
                imported.append(_with_previews(store, added, subjects, retention_s))
            store.commit()
        except BaseException:
            store.discard()
            raise
    return imported


def _with_previews(store: FileStore, added: AddedFile, subjects: frozenset[str],
                   retention_s: float | None) -> Imported:
    previews = make_previews(Path(added.path), added.record.media_type)
    record = dataclasses.replace(
        added.record, subjects=frozenset(subjects), retention_s=retention_s,
        thumbnail=_store_bytes(store, previews.thumbnail), preview=_store_bytes(store, previews.preview),
    )
    return Imported(added.cid, added.path, added.size, added.new_bytes, record)


def _store_bytes(store: FileStore, data: bytes | None) -> str | None:
    """Store a small object (a thumbnail, a preview clip); its CID, or None for no data."""
    if data is None:
        return None
    cid, _ = store.add_stream(io.BytesIO(data), len(data))
    return cid


def record_imports(statefile: StateFile, actor: bytes, imported: Iterable[Imported],
                   keep_added_at: bool = False) -> list[AssetRecord]:
    """Put every record in one state transaction (durable on return); the records as put.

    `keep_added_at`: a known asset keeps its first `added_at` (a re-import must not restart its
    retention clock); otherwise it takes this import's time, as `mesh add` always did."""
    records = []
    with statefile.transaction(actor) as state:
        for item in imported:
            record = _merged(item.record, state.asset(item.cid), keep_added_at)
            state.put_asset(record)
            records.append(record)
    return records


def _merged(new: AssetRecord, known: AssetRecord | None, keep_added_at: bool) -> AssetRecord:
    if known is None:
        return new
    return dataclasses.replace(
        new,
        retention_s=new.retention_s if new.retention_s is not None else known.retention_s,
        thumbnail=new.thumbnail or known.thumbnail,
        preview=new.preview or known.preview,
        added_at=known.added_at if keep_added_at else new.added_at,
    )


def import_files(
    store: FileStore, statefile: StateFile, actor: bytes, node_id: str, files: Iterable[Path],
    tags: Iterable[str] = (), subjects: frozenset[str] = frozenset(), retention_s: float | None = None,
    on_bytes: Callable[[int], None] | None = None, now: float | None = None,
) -> list[Imported]:
    """`store_files`, then `record_imports`: what `mesh add` does."""
    imported = store_files(store, node_id, files, tags, subjects, retention_s, on_bytes, now)
    record_imports(statefile, actor, imported)
    return imported
