"""What the store must keep: the roots of garbage collection, under consent and retention.

Used by `mesh gc`, `mesh consent forget` and the running agent's periodic purge. The agent
computes its keep set on a worker thread (`mesh.drivers.passes.state_pass`), never on the trio
thread (reading 10,000 assets takes ~0.3 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mesh.state.records import AssetRecord


@dataclass(frozen=True)
class KeepSet:
    """What a garbage collection keeps and what it must let go even if pinned."""

    roots: set[str] = field(default_factory=set)  # files and blocks to keep
    hidden: set[str] = field(default_factory=set)  # asset CIDs hidden by consent or retention


def consent_view(state, authority_public_key: bytes | None, now: float):
    """A `ConsentView` under the policies in force; without the authority key no policy can be
    verified, so every scope reads as denied (failures close: hide rather than show)."""
    from mesh.state.consent import ConsentView, Policies, effective_policies

    if authority_public_key is None:
        return ConsentView(state, Policies())
    return ConsentView(state, effective_policies(state, authority_public_key, now))


def visible_records(state, authority_public_key: bytes | None, now: float,
                    tag: str | None = None) -> list[AssetRecord]:
    """The assets that may be listed, served and kept here now (consented and not expired)."""
    view = consent_view(state, authority_public_key, now)
    return [record for record in state.assets(tag) if view.visible(record, now)]


def live_roots(state, store=None, authority_public_key: bytes | None = None,
               now: float | None = None, node_id: str | None = None) -> set[str]:
    """The roots of `keep_set`."""
    return keep_set(state, store, authority_public_key, now, node_id).roots


def keep_set(state, store=None, authority_public_key: bytes | None = None,
             now: float | None = None, node_id: str | None = None, evicting=frozenset()) -> KeepSet:
    """Files and blocks the shared state keeps alive: every *visible* asset (consented, not
    expired) with its previews (thumbnail, preview clip), the *pending* assets this node (`node_id`)
    captured, waiting for their subject's decision, with theirs, and, given the store and the mesh
    authority key, every block here of the current and the previous release (root manifest, file
    manifests, chunks), so a rollback needs no download. Releases older than those are kept only by
    pins (`mesh release create` pins what it imports). Withdrawn or expired assets, and pending ones
    captured elsewhere, are not roots, not even inside a kept release: their chunks go unless a
    root still needs them.
    Media files in `evicting` (the storage budget's choice) are not kept as assets; a release that
    contains one keeps it.
    Without the authority key no policy verifies and assets naming a subject count as hidden."""
    from mesh.state.consent import PENDING, VISIBLE

    now = time.time() if now is None else now
    roots = set()
    hidden = set()
    view = consent_view(state, authority_public_key, now)
    for record in state.assets():
        status = view.status(record, now)
        if status != VISIBLE:
            hidden.add(record.cid)
        if status == VISIBLE or (status == PENDING and node_id is not None and record.added_by == node_id):
            roots.update(cid for cid in (record.cid, record.thumbnail, record.preview) if cid and cid not in evicting)
    if store is None or authority_public_key is None:
        return KeepSet(roots, hidden)
    from mesh.state.releases import ReleaseBook, release_chunks

    book = ReleaseBook(state, authority_public_key, now)
    for kept in (book.current(), book.previous()):
        if kept is not None:
            roots.update(str(cid) for cid in release_chunks(store, kept.root, partial=True, skip=hidden))
    return KeepSet(roots, hidden)


def agent_keep_set(state, store, authority_public_key: bytes | None, now: float,
                   arriving=(), withheld=frozenset(), releases=(), node_id: str | None = None,
                   evicting=frozenset()) -> KeepSet:
    """What a running agent's periodic purge keeps: `keep_set` less the media files being evicted
    (`evicting`), plus every block here of the releases it fetches (`releases`: roots of the
    current and pinned ones; a file both a release and an evicted asset stays) and the blocks of
    the roots still arriving (`arriving`: releases and media files), except what consent or
    retention withheld."""
    from mesh.state.releases import release_chunks

    keep = keep_set(state, store, authority_public_key, now, node_id, evicting)
    for root in releases:
        keep.roots.update(str(cid) for cid in release_chunks(store, root, partial=True, skip=keep.hidden))
    keep.roots.update(str(cid) for cid in arriving if cid not in withheld)
    return keep
