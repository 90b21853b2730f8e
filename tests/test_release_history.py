"""Release history as the crew dashboard shows it (issue 22, item 3): when a release was first
published and when it last became current, and which releases a rollback may go back to."""

from __future__ import annotations

import random

import pytest

from mesh.state import releases as rel
from mesh.state.document import MeshState, actor_id
from mesh.testing.identities import TestMesh
from tests.test_releases import LATER, NOW, make_release, new_state, publish, store_release


@pytest.fixture(scope="module")
def mesh() -> TestMesh:
    return TestMesh(random.Random(22), NOW - 60.0)


def test_history_has_first_and_latest_publication_and_marks_older_releases(mesh: TestMesh) -> None:
    state = new_state()
    ids = [store_release(state, make_release(mesh.founder, f"v{i}", i, NOW + i)) for i in (1, 2, 3)]
    for i, release_id in enumerate(ids):  # v1 at +10, v2 at +20, v3 at +30
        publish(state, mesh.founder, release_id, NOW + 10 * (i + 1))
    publish(state, mesh.founder, ids[1], NOW + 40)  # roll back to v2
    history = {h.release.name: h for h in rel.release_history(state, mesh.authority_public_key, LATER)}
    assert (history["v2"].first_published_at, history["v2"].published_at) == (NOW + 20, NOW + 40)
    assert (history["v3"].first_published_at, history["v3"].published_at) == (NOW + 30, NOW + 30)
    assert [(name, h.current, h.older) for name, h in history.items()] == [
        ("v3", False, False), ("v2", True, False), ("v1", False, True)]  # v3 is newer: not a rollback target

    # An existing document (saved before these fields existed: they are read, not stored) gives the same.
    loaded = MeshState.load(state.save(), actor_id("b", b"b_______"))
    again = rel.release_history(loaded, mesh.authority_public_key, LATER)
    assert [(h.first_published_at, h.published_at, h.older) for h in again] == [
        (h.first_published_at, h.published_at, h.older) for h in history.values()]


def test_history_without_a_current_release_marks_nothing_older(mesh: TestMesh) -> None:
    state = new_state()
    store_release(state, make_release(mesh.founder, "v1", 1, NOW))
    (entry,) = rel.release_history(state, mesh.authority_public_key, LATER)
    assert (entry.current, entry.older, entry.first_published_at, entry.published_at) == (False, False, None, None)
