"""The visible catalog: which assets attendees may see (consent and retention), their tags,
thumbnails and previews, and search over them.

At 10,000 assets building a catalog reads every asset record (~0.4 s), so a running gateway never
builds it on the event loop: the agent builds the first one on a worker before its HTTP side
listens (`CatalogKeeper.warm`), and `CatalogKeeper` builds the next ones on a worker thread
(`state_pass`: the live document read from there), one build at a time, whenever the state's heads
moved (a moment after they did: CATALOG_GAP_S_MIN plus a little per asset, so a burst of changes
costs a few builds). Until the fresh catalog lands the last one answers counts, pages that list
assets wait a moment for the fresh one (`current`), and every single CID a request names is
judged against the live state (`CatalogKeeper.verdict`: the asset's record read again, ~50 us,
under the consent in force now). That judgement fails closed: a CID the last catalog does not
know and the live state names as no asset (a new asset's thumbnail, say) is "unsure", which
serves no bytes until a catalog vouches for it; a request for one waits for the fresh catalog
(`settle`). CIDs consent or retention may hide later (`Catalog.revocable`) are judged against the
clock on every request, so an expiry needs no rebuild either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import trio

from mesh.drivers.passes import state_pass
from mesh.drivers.purge import consent_view
from mesh.state import consent as cs
from mesh.state.records import AssetRecord

log = logging.getLogger("mesh.gateway")

CATALOG_AGE_S_MAX = 30.0  # a catalog is rebuilt at least this often (policies come into force by the clock)
CATALOG_GAP_S_MIN = 0.05  # a build starts no sooner than this after it was asked for ...
CATALOG_GAP_PER_ASSET_S = 0.00005  # ... plus this per asset (0.55 s at 10,000: a burst of changes costs
#                                    a few builds a second, each a fork of the state and a worker's pass)
SEARCH_RESULTS_MAX = 200
QUERY_CHARS_MAX = 100

VISIBLE, PREVIEW, HIDDEN, OTHER, UNSURE = "visible", "preview", "hidden", "other", "unsure"


@dataclass(frozen=True)
class TagInfo:
    """One tag of the tag cloud."""

    tag: str  # canonical tag
    count: int  # visible assets with the tag
    description: str  # the event's description of it, "" for tags in use but not declared
    canonical: bool = False  # one of the event's declared tags (shown first, with its description)


@dataclass(frozen=True)
class Catalog:
    """What attendees may see, built from the shared state at one moment."""

    visible: dict[str, AssetRecord]  # asset CID -> record, only visible assets
    hidden: frozenset[str]  # CIDs never served: hidden assets and their previews
    thumb_owner: dict[str, str]  # thumbnail CID -> asset CID
    tags: list[TagInfo]  # tag cloud: declared tags first, then tags in use
    policies: cs.Policies  # policies in force
    heads: tuple[bytes, ...] = ()  # state heads it was built from
    built_at: float = 0.0  # unix seconds
    search_text: dict[str, str] = field(default_factory=dict)  # asset CID -> lower-case name and tags
    revocable: frozenset[str] = frozenset()  # visible CIDs that consent or retention may hide later
    preview_owner: dict[str, str] = field(default_factory=dict)  # preview clip CID -> asset CID
    tag_media: dict[str, tuple[int, int]] = field(default_factory=dict)  # tag -> (assets shown, hidden)

    def owner(self, cid: str) -> str | None:
        """The asset whose thumbnail or preview clip `cid` is (None if neither)."""
        return self.thumb_owner.get(cid) or self.preview_owner.get(cid)


EMPTY_CATALOG = Catalog({}, frozenset(), {}, [], cs.Policies())


def build_catalog(state, authority_public_key: bytes | None, now: float) -> Catalog:
    """The visible catalog of a state at `now` (failures close: unverifiable reads as hidden)."""
    view = consent_view(state, authority_public_key, now)
    visible: dict[str, AssetRecord] = {}
    hidden: set[str] = set()
    thumb_owner: dict[str, str] = {}
    preview_owner: dict[str, str] = {}
    tag_media: dict[str, list[int]] = {}
    for record in state.assets():
        shown = view.visible(record, now)
        (visible.__setitem__(record.cid, record) if shown else hidden.add(record.cid))
        for cid, owners in ((record.thumbnail, thumb_owner), (record.preview, preview_owner)):
            if cid:
                owners[cid] = record.cid
                if not shown:
                    hidden.add(cid)
        for tag in record.tags:
            if not tag.startswith(cs.SCOPE_TAG):
                tag_media.setdefault(tag, [0, 0])[0 if shown else 1] += 1
    hidden -= set(visible)  # a CID shared with a visible asset stays servable
    hidden -= {c for r in visible.values() for c in (r.thumbnail, r.preview) if c}
    text = {cid: " ".join([r.name.lower(), *sorted(r.tags)]) for cid, r in visible.items()}
    revocable = {c for r in visible.values() if r.subjects or r.retention_s is not None
                 for c in (r.cid, r.thumbnail, r.preview) if c}
    return Catalog(visible, frozenset(hidden), thumb_owner, tag_cloud(state, visible.values()),
                   view.policies, built_at=now, search_text=text, revocable=frozenset(revocable),
                   preview_owner=preview_owner, tag_media={t: (a, b) for t, (a, b) in tag_media.items()})


def tag_cloud(state, records) -> list[TagInfo]:
    counts: dict[str, int] = {}
    for record in records:
        for tag in record.tags:
            if not tag.startswith(cs.SCOPE_TAG):
                counts[tag] = counts.get(tag, 0) + 1
    declared = state.tag_descriptions()
    cloud = [TagInfo(tag, counts.get(tag, 0), text, canonical=True) for tag, text in declared.items()]
    cloud += [TagInfo(tag, n, "") for tag, n in sorted(counts.items()) if tag not in declared]
    return cloud


def tag_counts(catalog: Catalog, views: dict[str, int], sold: dict[str, int] | None = None) -> list[dict]:
    """[{"tag", "shown", "hidden", "views", "sold"}] for every tag in use, viewed or sold (drop units),
    most media first."""
    counts = {tag: {"tag": tag, "shown": shown, "hidden": hidden, "views": 0, "sold": 0}
              for tag, (shown, hidden) in catalog.tag_media.items()}

    def row(tag: str) -> dict:
        return counts.setdefault(tag, {"tag": tag, "shown": 0, "hidden": 0, "views": 0, "sold": 0})

    for tag, n in views.items():
        row(tag)["views"] = n
    for tag, n in (sold or {}).items():
        row(tag)["sold"] = n
    return sorted(counts.values(), key=lambda r: (-(r["shown"] + r["hidden"]), -r["views"], r["tag"]))


def search_catalog(catalog: Catalog, query: str = "", tag: str | None = None,
                   keep: Callable[[AssetRecord], bool] | None = None) -> list[AssetRecord]:
    """Visible assets with `tag` (if given) whose name or tags contain every word of `query` (and
    that `keep` accepts, if given), newest first, at most SEARCH_RESULTS_MAX."""
    words = query.lower()[:QUERY_CHARS_MAX].split()
    found = []
    for cid, record in sorted(catalog.visible.items(), key=lambda item: (-item[1].added_at, item[0])):
        if tag and tag not in record.tags:
            continue
        if all(word in catalog.search_text.get(cid, "") for word in words) and (keep is None or keep(record)):
            found.append(record)
            if len(found) >= SEARCH_RESULTS_MAX:
                break
    return found


class CatalogKeeper:
    """The catalog of a live state (`state()` returns it, or None before the agent runs), rebuilt
    on a worker thread after every change; see the module docstring."""

    def __init__(self, state: Callable[[], object | None], authority_public_key: Callable[[], bytes | None],
                 limiter: trio.CapacityLimiter | None = None) -> None:
        self._state = state
        self._key = authority_public_key
        self._limiter = limiter  # shared with the agent's other passes over every asset
        self._catalog: Catalog | None = None
        self._wanted: trio.Event | None = None  # set: a build should start (None: no builder runs yet)
        self._started = 0  # builds started off the loop ...
        self._landed = 0  # ... and the number of the last that landed
        self._landing: trio.Event | None = None  # set when the next build lands
        self.builds = 0  # catalogs built (on a worker; in place only without `warm` or outside trio)

    def catalog(self) -> Catalog:
        """The latest catalog built: exact for the state it was built from (`fresh` says whether
        that is the state now). Asks for a rebuild when the state moved on or it is old."""
        state = self._state()
        if state is None:
            return EMPTY_CATALOG
        catalog = self._catalog
        if catalog is None or not self._in_trio():  # the first without `warm` (tests), or a caller outside trio
            if catalog is None or not self.fresh(catalog):
                catalog = self._catalog = self._build(state)
            return catalog
        if not self.fresh(catalog) or time.time() - catalog.built_at >= CATALOG_AGE_S_MAX:
            self._want_build()
        return catalog

    def fresh(self, catalog: Catalog) -> bool:
        state = self._state()
        return state is not None and catalog.heads == tuple(state.heads())

    def verdict(self, cid: str) -> tuple[str, AssetRecord | None]:
        """What `cid` is now: (VISIBLE, record) an asset attendees may see; (PREVIEW, owner's record)
        a visible asset's thumbnail or preview clip; (HIDDEN, None) a hidden asset or its preview;
        (OTHER, None) no asset's (release files, anything else); (UNSURE, None) a CID the last
        catalog does not know while a newer state is being built (serve nothing for it)."""
        catalog = self.catalog()
        fresh = self.fresh(catalog)
        owner = catalog.owner(cid)
        if fresh and cid not in catalog.revocable:
            if cid in catalog.hidden:
                return HIDDEN, None
            if cid in catalog.visible:
                return VISIBLE, catalog.visible[cid]
            return (PREVIEW, catalog.visible.get(owner)) if owner else (OTHER, None)
        state, now = self._state(), time.time()
        view = consent_view(state, self._key(), now)
        if fresh:  # revocable: the records are current, only the clock moved
            record = catalog.visible.get(owner or cid)
        else:  # the state moved on: read the record again
            record = state.asset(cid)
            if record is not None:
                return (VISIBLE, record) if view.visible(record, now) else (HIDDEN, None)
            if owner is None:
                return (HIDDEN, None) if cid in catalog.hidden else (UNSURE, None)
            record = state.asset(owner)
            if record is not None and cid not in (record.thumbnail, record.preview):
                return UNSURE, None  # no longer its preview: maybe another asset's now
        if record is None or not view.visible(record, now):
            return HIDDEN, None
        return (VISIBLE if record.cid == cid else PREVIEW), record

    def listed(self, record: AssetRecord) -> bool:
        """Whether a record of the last catalog may still be listed now."""
        catalog = self._catalog
        if catalog is not None and self.fresh(catalog) and record.cid not in catalog.revocable:
            return True
        return self.verdict(record.cid)[0] == VISIBLE

    # ---- building ----------------------------------------------------------------------------------

    def _build(self, state) -> Catalog:
        heads = tuple(state.heads())
        self.builds += 1
        return replace(build_catalog(state, self._key(), time.time()), heads=heads)

    @staticmethod
    def _in_trio() -> bool:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return False
        return True

    def _want_build(self) -> None:
        if self._wanted is None:
            self._wanted = trio.Event()
            trio.lowlevel.spawn_system_task(self._builder, name="mesh.gateway.catalog")
        self._wanted.set()

    async def _builder(self) -> None:
        """Build one catalog at a time on a worker thread (`state_pass`); a change made
        while one builds starts the next right after."""
        while True:
            await self._wanted.wait()
            state = self._state()
            if state is None:
                self._wanted = trio.Event()
                continue
            await trio.sleep(CATALOG_GAP_S_MIN + CATALOG_GAP_PER_ASSET_S * state.asset_count())
            self._wanted = trio.Event()  # changes from here on want the next build
            try:
                await self._build_off_loop(self._state())
            except Exception:  # a bug: keep the last catalog (verdicts stay live) and say so
                log.exception("gateway.catalog_failed")
                await trio.sleep(1.0)

    async def settle(self, cid: str, timeout: float) -> None:
        """Return once `cid` is no longer UNSURE: at once if it is not, else when a catalog built
        from the state as it is now (or later) landed, or after `timeout` seconds. A request for
        a new asset's thumbnail waits here for its catalog instead of failing."""
        await self._wait_built(lambda: self.verdict(cid)[0] != UNSURE, timeout)

    async def current(self, timeout: float) -> Catalog:
        """The catalog of the state as it is now: the latest if it is, else the one built next
        (waiting at most `timeout` seconds, then the latest). Pages that list assets ask for it,
        so a list right after a change (or start-up) is not the one from before it."""
        await self._wait_built(lambda: self.fresh(self.catalog()), timeout)
        return self.catalog()

    async def _wait_built(self, done: Callable[[], bool], timeout: float) -> None:
        """Until `done()`, or a build that started from now on landed, or `timeout` passed."""
        if done():
            return
        mark = self._started  # a build already running may predate the change that matters
        self._want_build()
        with trio.move_on_after(timeout):
            while self._landed <= mark and not done():
                if self._landing is None:
                    self._landing = trio.Event()
                await self._landing.wait()

    async def warm(self) -> None:
        """Build the first catalog on a worker thread (the agent does this before its HTTP side
        listens, so no request builds one on the event loop); a no-op once there is one."""
        state = self._state()
        if state is not None and self._catalog is None:
            await self._build_off_loop(state)

    async def _build_off_loop(self, state) -> None:
        self._started += 1
        number = self._started
        heads, now = tuple(state.heads()), time.time()
        try:
            built = await state_pass(state, build_catalog, self._key(), now, limiter=self._limiter)
            self.builds += 1
            self._catalog = replace(built, heads=heads)
        finally:  # landed, or failed: waiters judge again either way
            self._landed = max(self._landed, number)
            landing, self._landing = self._landing, None
            if landing is not None:
                landing.set()
