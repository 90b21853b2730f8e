"""What the store must keep: the roots of garbage collection, under consent and retention.

Used by `mesh gc`, `mesh consent forget` and the running agent's periodic purge.
"""

from __future__ import annotations

import time

from mesh.state.records import AssetRecord


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
               now: float | None = None) -> set[str]:
    """Files and blocks the shared state keeps alive: every *visible* asset (consented, not
    expired) and its thumbnail and, given the store and the mesh authority key, every block here of
    the current and the previous release (root manifest, file manifests, chunks), so a rollback
    needs no download. Releases older than those are kept only by pins (`mesh release create` pins
    what it imports). Hidden assets are not roots: their chunks go unless a root still needs them.
    Without the authority key no policy verifies and assets naming a subject count as hidden."""
    now = time.time() if now is None else now
    roots = set()
    for record in visible_records(state, authority_public_key, now):
        roots.add(record.cid)
        if record.thumbnail:
            roots.add(record.thumbnail)
    if store is None or authority_public_key is None:
        return roots
    from mesh.state.releases import ReleaseBook, release_chunks

    book = ReleaseBook(state, authority_public_key, now)
    for kept in (book.current(), book.previous()):
        if kept is not None:
            roots.update(str(cid) for cid in release_chunks(store, kept.root, partial=True))
    return roots
