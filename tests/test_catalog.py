"""The gateway's catalog is built on a worker thread after each change (mesh.gateway.catalog), and
in the moment before the fresh catalog lands every CID is judged against the live state, failing
closed: a withdrawn photo is hidden at once, a new asset's record is served only if it may be, a
CID the old catalog cannot vouch for serves nothing, and retention expires by the clock alone."""

from __future__ import annotations

import random
import time

import trio

from mesh.gateway.catalog import HIDDEN, OTHER, PREVIEW, UNSURE, VISIBLE, CatalogKeeper
from mesh.state import consent as c
from mesh.state.document import MeshState, actor_id
from mesh.state.records import AssetRecord
from mesh.testing.identities import TestMesh

SUBJECT = "7KQ2-M9X7"


def _mesh() -> TestMesh:
    return TestMesh(random.Random(11), time.time() - 60.0)


def _asset(cid: str, subjects=(), thumbnail: str | None = None, retention_s: float | None = None,
           added_at: float | None = None) -> AssetRecord:
    return AssetRecord(cid=cid, name=f"{cid}.jpg", size=10, media_type="image/jpeg",
                       added_at=time.time() if added_at is None else added_at, added_by="cam",
                       tags=frozenset({"stage"}), subjects=frozenset(subjects), thumbnail=thumbnail,
                       retention_s=retention_s)


def _state(mesh: TestMesh) -> MeshState:
    state = MeshState(actor_id("org", b"\x01" * 8))
    org = mesh.founder
    made = c.create_policy(org.authority_public_key, org.key, org.chain, "photo", "deny", "Photos of you",
                           time.time() - 30)
    c.set_policy(state, made)
    for index in range(50):
        state.put_asset(_asset(f"plain{index}"))
    state.put_asset(_asset("portrait", subjects=(SUBJECT,), thumbnail="portrait-thumb"))
    c.record_decision(state, SUBJECT, "photo", True, time.time() - 20, "door")
    return state


def test_between_a_change_and_the_fresh_catalog_every_cid_is_judged_live_and_fails_closed() -> None:
    mesh = _mesh()
    state = _state(mesh)
    keeper = CatalogKeeper(lambda: state, lambda: mesh.founder.authority_public_key)

    async def main() -> None:
        first = keeper.catalog()  # the first is built in place
        assert keeper.fresh(first) and keeper.builds == 1
        assert keeper.verdict("portrait")[0] == VISIBLE
        assert keeper.verdict("portrait-thumb")[0] == PREVIEW
        assert keeper.verdict("bafkunknown") == (OTHER, None)

        c.record_decision(state, SUBJECT, "photo", False, time.time(), "door")  # withdrawn
        state.put_asset(_asset("fresh", thumbnail="fresh-thumb"))
        stale = keeper.catalog()  # asks for a build on a worker; the last catalog answers lists
        assert stale is first and not keeper.fresh(stale)
        assert "portrait" in stale.visible  # the old list still has it, but no request gets it:
        assert keeper.verdict("portrait")[0] == HIDDEN
        assert keeper.verdict("portrait-thumb")[0] == HIDDEN
        assert not keeper.listed(stale.visible["portrait"])
        assert keeper.verdict("fresh")[0] == VISIBLE  # a new asset that may be shown is, at once
        assert keeper.verdict("fresh-thumb")[0] == UNSURE  # its thumbnail waits for the catalog

        with trio.fail_after(10):
            while not keeper.fresh(keeper.catalog()):
                await trio.sleep(0.01)
        built = keeper.catalog()
        assert keeper.builds == 2 and "portrait" not in built.visible and "fresh" in built.visible
        assert {"portrait", "portrait-thumb"} <= built.hidden
        assert keeper.verdict("fresh-thumb")[0] == PREVIEW

    trio.run(main)


def test_a_retention_expiry_hides_the_asset_by_the_clock_without_a_rebuild() -> None:
    mesh = _mesh()
    state = _state(mesh)
    soon = 0.6
    ends = time.time() + soon
    state.put_asset(_asset("brief", retention_s=60.0, added_at=ends - 60.0 - c.RETENTION_SKEW_S,
                           thumbnail="brief-thumb"))
    keeper = CatalogKeeper(lambda: state, lambda: mesh.founder.authority_public_key)

    async def main() -> None:
        catalog = keeper.catalog()
        assert "brief" in catalog.revocable and keeper.verdict("brief")[0] == VISIBLE
        await trio.sleep(soon + 0.3)
        assert keeper.catalog() is catalog and keeper.fresh(catalog)  # same state: no rebuild
        assert keeper.verdict("brief")[0] == HIDDEN
        assert keeper.verdict("brief-thumb")[0] == HIDDEN
        assert keeper.verdict("plain3")[0] == VISIBLE

    trio.run(main)


def test_a_burst_of_changes_costs_a_few_builds_not_one_per_change() -> None:
    mesh = _mesh()
    state = _state(mesh)
    keeper = CatalogKeeper(lambda: state, lambda: mesh.founder.authority_public_key)

    async def main() -> None:
        keeper.catalog()
        for index in range(30):
            state.put_asset(_asset(f"burst{index}"))
            keeper.catalog()
            await trio.sleep(0)
        with trio.fail_after(10):
            while not keeper.fresh(keeper.catalog()):
                await trio.sleep(0.01)
        assert keeper.builds <= 4, keeper.builds
        assert {f"burst{i}" for i in range(30)} <= set(keeper.catalog().visible)

    trio.run(main)


def test_a_warmed_keeper_builds_off_the_loop_and_a_new_thumbnail_waits_for_its_catalog_not_a_404() -> None:
    mesh = _mesh()
    state = _state(mesh)
    keeper = CatalogKeeper(lambda: state, lambda: mesh.founder.authority_public_key)

    async def main() -> None:
        await keeper.warm()  # what the agent does before its HTTP side listens
        assert keeper.builds == 1 and keeper.fresh(keeper.catalog())
        await keeper.warm()
        assert keeper.builds == 1  # once

        await keeper.settle("portrait-thumb", 5.0)  # known: no wait, no build
        assert keeper.builds == 1

        state.put_asset(_asset("early", thumbnail="early-thumb"))
        keeper.catalog()  # a build starts (after its gap) ...
        with trio.fail_after(10):
            while keeper._started < 2:
                await trio.sleep(0)
        state.put_asset(_asset("late", thumbnail="late-thumb"))  # ... from a state without this one
        assert keeper.verdict("late-thumb")[0] == UNSURE
        with trio.fail_after(10):
            await keeper.settle("late-thumb", 5.0)
        assert keeper.verdict("late-thumb") == (PREVIEW, state.asset("late"))
        assert keeper.builds in (2, 3)  # the running build (if it read the change: it reads the live
        #                                 document, again when it moved) or the next one

        with trio.fail_after(10):  # a CID no asset names: judged by the next catalog, then OTHER
            await keeper.settle("bafknobody", 5.0)
        assert keeper.verdict("bafknobody") == (OTHER, None)

        assert keeper.fresh(await keeper.current(5.0))  # fresh already: at once
        builds = keeper.builds
        state.put_asset(_asset("listed"))  # a page that lists assets right after a change
        with trio.fail_after(10):
            listed = await keeper.current(5.0)
        assert "listed" in listed.visible and keeper.builds == builds + 1

        state.put_asset(_asset("later", thumbnail="later-thumb"))
        started = trio.current_time()
        await keeper.settle("later-thumb", 0.0)  # the wait is bounded: still unsure, no bytes
        assert trio.current_time() - started < 1.0 and keeper.verdict("later-thumb")[0] == UNSURE

    trio.run(main)
