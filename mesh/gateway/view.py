"""The gateway's view of a running agent: files by CID and in the current release, the visible
catalog (search, tags, thumbnails), consent, and the crew's data and actions.

Reads run on the event loop (the core's shared state is only touched there). Writes go through
`agent.statefile.transaction(actor)` on a worker thread with the same library functions the CLI
uses; the agent's state poll picks them up within `state_poll_interval_s` and syncs them to peers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

from mesh.content.cid import Cid
from mesh.content.manifest import DirEntry, DirManifest, decode_manifest
from mesh.drivers.purge import consent_view
from mesh.drivers.runtime import Agent
from mesh.errors import CredentialError, MeshError, NotFoundError, UsageError
from mesh.gateway.app import IMMUTABLE, REVALIDATE, FileRef, ServedFile
from mesh.gateway.catalog import HIDDEN, UNSURE, VISIBLE, Catalog, CatalogKeeper, search_catalog, tag_counts
from mesh.state import consent as cs
from mesh.state import drops as dr
from mesh.state import releases as rel
from mesh.state.document import actor_id
from mesh.state.membership import Role, create_revocation
from mesh.state.records import AssetRecord

DEFAULT_MEDIA_TYPE = "application/octet-stream"
OFFLINE_FILE_BYTES_MAX = 2 * 1024 * 1024  # the service worker caches release files up to this size
OFFLINE_FILES_MAX = 500
STATE_WAIT_S = 3.0  # how long a write waits for the agent to see it before the page redirects
BADGE_CHECKS_WAITING_MAX = 16  # grants queued behind a running badge check; more are answered 503
FETCH_START_S = 10.0  # how long a request for a file held elsewhere waits for its size and chunk list
FETCH_STALL_S = 30.0  # ... and for each next chunk, before the response ends short
FETCH_RENEW_S = 10.0  # while a browser waits, the fetch is asked for again this often (it lapses otherwise)
DROP_ORDERS_SHOWN_MAX = 20  # a drop's unpaid reservations listed on the dashboard (the rest are counted)
HOSTS_REFRESH_S = 10.0  # the allowed host names are re-read this often (a new certificate adds names)
UNAVAILABLE_GRACE_S = 2.0  # a file no connected peer holds is given this long for an announcement
LIST_WAIT_S = 1.0  # how long a page that lists assets waits for the catalog of the state as it is now
SETTLE_S = 3.0  # how long a request for a CID the catalog cannot vouch for yet waits for the next one
SERVED_FILES_MAX = 4096  # `/c/CID` answers cached per catalog (dropped all at once past this)


class AgentView:
    """Implements `GatewayView` over an `Agent` (its store and its core's shared state)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._release_cache: tuple[str, dict[str, DirEntry]] | None = None
        self._catalogs = CatalogKeeper(lambda: agent.core.state if agent.core is not None else None,
                                       lambda: agent.home.info.authority_public_key,
                                       getattr(agent, "state_passes", None))
        self._write_lock = trio.Lock()
        self._badge_limiter = trio.CapacityLimiter(1)  # badge checks (scrypt): one core at most
        self._hosts: tuple[float, frozenset[str]] | None = None  # (monotonic time, names) cached
        self._served: tuple[Catalog | None, dict[str, ServedFile]] = (None, {})  # valid for that catalog

    # ---- node ---------------------------------------------------------------------------------

    def status(self) -> dict:
        return self.agent.status()

    def node_info(self) -> dict:
        info = self.agent.home.info
        return {"node_id": info.node_id, "name": info.name, "role": info.role, "mesh_id": info.mesh_id,
                "organizer": info.role == Role.ORGANIZER.value, "mesh_name": info.mesh_name}

    def http_address(self) -> tuple[str, int] | None:
        return self.agent.config.http

    def http_hosts(self) -> frozenset[str]:
        """The names (besides IP addresses) this node's HTTP side answers to (mesh.gateway.hosts)."""
        now = time.monotonic()
        if self._hosts is None or now - self._hosts[0] > HOSTS_REFRESH_S:
            from mesh.gateway.hosts import own_names

            self._hosts = (now, own_names((*self.agent.config.http_hosts, *self.agent.tls_names())))
        return self._hosts[1]

    def lan_hosts(self) -> list[str]:
        """Addresses other devices can use to reach this node (no loopback)."""
        host = (self.http_address() or ("127.0.0.1", 0))[0]
        if host not in ("0.0.0.0", "::"):
            return [host]
        import ifaddr

        found = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                    found.append(ip.ip)
        return found

    def record_view(self, cid: str) -> None:
        """Count a view of an asset (aggregated per tag by the agent; nothing per person)."""
        record = getattr(self.agent, "record_view", None)
        catalog = self.catalog()
        if record is not None and cid not in catalog.thumb_owner and cid not in catalog.preview_owner:
            record(cid)  # previews are not views
        used = getattr(self.agent, "note_used", None)
        if used is not None:
            used(cid)

    def counters(self) -> dict[str, float]:
        """Numbers for /metrics, read at scrape time."""
        found: dict[str, float] = {}
        for name, value in dict(getattr(self.agent, "counters", {}) or {}).items():
            found[str(name)] = float(value)
        core = self.agent.core
        for name, value in dict(getattr(core, "counters", {}) or {}).items():
            if isinstance(value, (int, float)):
                found[str(name)] = float(value)
        return found

    def events(self) -> list[dict]:
        return list(getattr(self.agent, "recent_events", []) or [])

    # ---- files ------------------------------------------------------------------------------------

    def served_file(self, cid: str) -> ServedFile | None:
        """What `/c/CID` needs for a file held here and not hidden; None for anything else
        (unknown, hidden, malformed, arriving), which takes the full path. The store's part (size,
        chunks) is kept per built catalog; whether the CID may be served, and how long a browser
        may keep it, is judged on every request (`CatalogKeeper.verdict`: a few dict lookups, or a
        record read while a newer catalog is being built). A file deleted from the store meanwhile
        fails its first chunk read: 404, never bytes."""
        if not _looks_like_cid(cid):
            return None
        if not self._may_serve(cid):
            return None
        catalog = self.catalog()
        cached_for, served = self._served
        if cached_for is not catalog:
            served = {}
            self._served = (catalog, served)
        found = served.get(cid)
        if found is None:
            found = self._look_up_served(cid)
            if found is None:
                return None
            if len(served) >= SERVED_FILES_MAX:
                served.clear()
            served[cid] = found
        cache = REVALIDATE if self.may_hide(cid) else IMMUTABLE
        return found if found.cache == cache else ServedFile(found.ref, cache, found.spans)

    def _look_up_served(self, cid: str) -> ServedFile | None:
        ref = self.file_by_cid(cid)
        if ref is None:
            return None
        try:
            spans = tuple(self.chunk_spans(cid))
        except MeshError:
            return None
        return ServedFile(ref, REVALIDATE if self.may_hide(cid) else IMMUTABLE, spans)

    def file_by_cid(self, cid: str, vouched: bool = False) -> FileRef | None:
        """A file held completely here and not hidden; None otherwise (never partial bytes, never
        an asset lacking consent or past its retention, nor its thumbnail; while the catalog is
        rebuilt, nor a CID it cannot vouch for yet, unless it is a release's file or the caller
        `vouched` for it as no asset's: a live segment the core names)."""
        if not self._may_serve(cid, vouched):
            return None
        store = self.agent.store
        try:
            size, _ = store.object_chunks(cid)
            if store.missing_chunks(cid):
                return None
        except MeshError:
            return None
        return FileRef(cid, size, self._media_type(cid))

    def may_hide(self, cid: str) -> bool:
        """Consent or retention may hide this CID later: browsers must revalidate, not keep it
        (anything asked while the catalog is rebuilt, too)."""
        catalog = self.catalog()
        return cid in catalog.revocable or not self._catalogs.fresh(catalog)

    def is_hidden(self, cid: str) -> bool:
        """The CID is a hidden asset or a hidden asset's thumbnail (serve 410, never bytes)."""
        return self._catalogs.verdict(cid)[0] == HIDDEN

    def _may_serve(self, cid: str, vouched: bool = False) -> bool:
        """Not hidden, and not a CID the catalog cannot vouch for yet, unless it is a release's
        file or the caller `vouched` for it as no asset's."""
        kind, _ = self._catalogs.verdict(cid)
        return kind != HIDDEN and (kind != UNSURE or vouched or self._in_release(cid))

    def _in_release(self, cid: str) -> bool:
        return any(str(entry.cid) == cid for entry in self._release_entries().values())

    def _media_type(self, cid: str) -> str:
        kind, record = self._catalogs.verdict(cid)
        if kind == VISIBLE:
            return record.media_type
        catalog = self.catalog()
        if cid in catalog.thumb_owner or (record is not None and cid == record.thumbnail):
            return "image/jpeg"
        if cid in catalog.preview_owner or (record is not None and cid == record.preview):
            return "video/mp4"
        for entry in self._release_entries().values():
            if str(entry.cid) == cid:
                return entry.media_type
        return DEFAULT_MEDIA_TYPE

    def file_in_current_release(self, path: str) -> FileRef | None:
        entry = self._release_entries().get(path)
        if entry is None:
            return None
        ref = self.file_by_cid(str(entry.cid))
        return None if ref is None else FileRef(ref.cid, ref.size, entry.media_type)

    def release_paths(self) -> list[tuple[str, int]]:
        """(path, size) of every file of the current release, sorted."""
        return sorted((path, entry.size) for path, entry in self._release_entries().items())

    def offline_files(self) -> list[str]:
        """Release paths small enough for the service worker to keep, held here and not hidden."""
        found = []
        for path, size in self.release_paths():
            if size <= OFFLINE_FILE_BYTES_MAX and self.file_in_current_release(path) is not None:
                found.append(path)
            if len(found) >= OFFLINE_FILES_MAX:
                break
        return found

    def _release_entries(self) -> dict[str, DirEntry]:
        core = self.agent.core
        if core is None or core.swarm is None:
            return {}
        root = str(core.swarm.root)
        if self._release_cache is None or self._release_cache[0] != root:
            try:
                manifest = decode_manifest(self.agent.store.read_chunk(Cid.parse(root)))
            except (MeshError, ValueError):
                return {}
            if not isinstance(manifest, DirManifest):
                return {}
            self._release_cache = (root, {entry.path: entry for entry in manifest.entries})
        return self._release_cache[1]

    def chunk_spans(self, cid: str) -> list[tuple[str, int]]:
        store = self.agent.store
        try:
            _, chunks = store.object_chunks(cid)
            return [(chunk, store.size(Cid.parse(chunk))) for chunk in chunks]
        except NotFoundError:  # a media file still arriving: its manifest (or size) is known to the core
            found = self.agent.core.object_spans(cid) if self.agent.core is not None else None
            if found is None:
                raise
            return found[1]

    # ---- media held elsewhere: fetched on demand, streamed as it arrives -------------------------

    def can_show(self, cid: str | None) -> bool:
        """A page may link this media file: held here, or held by a connected peer (fetched on
        demand when a browser asks); otherwise it shows a placeholder."""
        if not cid or self.is_hidden(cid):
            return False
        core = self.agent.core
        return self.has_file(cid) or (core is not None and core.object_available(cid))

    async def fetch_file(self, cid: str) -> FileRef | None:
        """A visible media file this node lacks: ask the mesh for it and return its FileRef once
        its size and chunk list are known (the bytes stream as they arrive, see `wait_chunk`);
        None if no connected peer holds it (after UNAVAILABLE_GRACE_S) or it is not media."""
        core = self.agent.core
        if core is None or core.object_state(cid) in ("unknown", "hidden"):
            return None
        self.agent.request_fetch(cid)
        waited = 0.0
        with trio.move_on_after(FETCH_START_S):
            while True:
                if self.has_file(cid):
                    return self.file_by_cid(cid)
                spans = core.object_spans(cid)
                if spans is not None:
                    return FileRef(cid, spans[0], self._media_type(cid), arriving=True)
                if core.object_state(cid) == "unavailable" and waited >= UNAVAILABLE_GRACE_S:
                    return None
                await self.agent.wait_stored(0.25)
                waited += 0.25
        return None

    async def wait_chunk(self, file_cid: str, chunk_cid: str) -> None:
        """Return once `chunk_cid` (of the file being fetched) is stored and verified here;
        MeshError if it stops coming (FETCH_STALL_S without it) or the file became hidden."""
        store, core = self.agent.store, self.agent.core
        chunk = Cid.parse(chunk_cid)
        waited = renewed = 0.0
        while not store.has(chunk):
            if waited >= FETCH_STALL_S or core is None or self.is_hidden(file_cid):
                raise MeshError(f"{file_cid} stopped arriving")
            if renewed >= FETCH_RENEW_S:
                self.agent.request_fetch(file_cid)
                renewed = 0.0
            await self.agent.wait_stored(0.5)
            waited, renewed = waited + 0.5, renewed + 0.5

    def read_chunk_into(self, cid: str, buffers: list[memoryview], cached_only: bool = False) -> int:
        """A chunk's bytes into `buffers`, checked against the checksum recorded when the chunk
        entered the store (CID-verified then); CorruptChunkError if they fail. `cached_only`: on
        the event loop, BlockingIOError if the page cache lacks them; otherwise it blocks."""
        return self.agent.store.read_for_peer_into(cid, buffers, cached_only)

    def open_chunk_into(self, cid: str, buffers: list[memoryview], cached_only: bool = False) -> int:
        """`read_chunk_into`, keeping the chunk's file open: its descriptor, to send the bytes just
        checked from (the caller closes it)."""
        return self.agent.store.open_for_peer_into(cid, buffers, cached_only)[1]

    def has_file(self, cid: str) -> bool:
        try:
            self.agent.store.object_chunks(cid)
            return not self.agent.store.missing_chunks(cid)
        except MeshError:
            return False

    # ---- catalog ----------------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The latest visible catalog (lists, counts, tags; mesh.gateway.catalog): built on a worker
        after each change, so it may be a moment older than the state; single CIDs are judged
        against the live state meanwhile (`asset`, `is_hidden`, `file_by_cid`)."""
        return self._catalogs.catalog()

    async def warm(self) -> None:
        """The first catalog, built on a worker (before the HTTP side listens)."""
        await self._catalogs.warm()

    async def refresh(self) -> None:
        """Wait (at most LIST_WAIT_S) for the catalog of the state as it is now; pages that list
        assets call this first."""
        await self._catalogs.current(LIST_WAIT_S)

    async def settle(self, cid: str) -> None:
        """Wait (at most SETTLE_S) while `cid` is one the last catalog cannot vouch for yet (a new
        asset's thumbnail, say) for the catalog of the state as it is now."""
        await self._catalogs.settle(cid, SETTLE_S)

    def search(self, query: str = "", tag: str | None = None) -> list[AssetRecord]:
        """Visible assets matching, newest first (each one still visible now)."""
        return search_catalog(self.catalog(), query, tag, keep=self._catalogs.listed)

    def asset(self, cid: str) -> AssetRecord | None:
        """A visible asset's record; None if unknown, hidden, or a CID that is no asset."""
        kind, record = self._catalogs.verdict(cid)
        return record if kind == VISIBLE else None

    # ---- consent ----------------------------------------------------------------------------------

    def consent_rows(self, code: str) -> list[dict]:
        """Per scope in force or decided: plain-language description, default, granted now."""
        core = self.agent.core
        view = consent_view(core.state, self.agent.home.info.authority_public_key, time.time())
        return consent_rows(view, code)

    async def badge_holds(self, code: str, secret: str) -> bool:
        """Whether `secret` is the badge secret of subject `code` in this mesh (ValueError if
        either is malformed). The KDF runs on a worker thread, one check at a time, so a flood of
        wrong secrets costs one core and never the event loop."""
        mesh_id = self.agent.home.info.mesh_id
        return await trio.to_thread.run_sync(cs.badge_holds, code, secret, mesh_id,
                                             limiter=self._badge_limiter)

    def badge_checks_busy(self) -> bool:
        """Too many grants already wait for a badge check (the queue's limit)."""
        return self._badge_limiter.statistics().tasks_waiting >= BADGE_CHECKS_WAITING_MAX

    async def decide(self, code: str, scope: str, grant: bool) -> None:
        """Record a grant or revoke for subject `code` (UsageError on a bad code or scope). Who
        may grant is the caller's check: the public page asks for the badge secret first."""
        subject = cs.parse_subject_code(code)
        cs.check_scope(scope)
        node_id = self.agent.home.info.node_id
        await self._transact(lambda state: cs.record_decision(state, subject, scope, grant, time.time(), node_id))
        await self.wait_state(lambda: any(row["scope"] == scope and row["granted"] == grant
                                          for row in self.consent_rows(subject)))

    async def wait_state(self, condition: Callable[[], bool]) -> bool:
        """Wait (at most STATE_WAIT_S) until the agent's state poll has picked up our write, so the
        page we redirect to shows it."""
        with trio.move_on_after(STATE_WAIT_S):
            while not condition():
                await trio.sleep(0.05)
            return True
        return False

    # ---- crew ---------------------------------------------------------------------------------------

    def verify_crew(self, token: str):
        """The CrewGrant of a token, or CredentialError."""
        from mesh.gateway.crew_token import verify_crew_token

        info = self.agent.home.info
        now = time.time()
        revocations = rel.state_revocations(self.agent.core.state, info.authority_public_key, now)
        return verify_crew_token(token, info.authority_public_key, now, revocations)

    def renew_crew(self, token: str | None) -> str:
        """A fresh crew token signed by this organizer node for a request that is crew now (its
        own token, if it used one, must still verify: a revoked organizer's crew renews nothing)."""
        from mesh.cli.web_cmds import crew_token_for

        if token is not None:
            self.verify_crew(token)
        made = crew_token_for(self.agent.home)
        if made is None:
            raise UsageError("only an organizer node signs crew tokens: renew on the organizer's laptop")
        return made

    def members(self) -> list[dict]:
        """Every member with role, online and last seen; this node first."""
        status = self.status()
        info = self.agent.home.info
        me = {"node_id": info.node_id, "name": info.name, "role": info.role, "online": True,
              "last_seen": time.time(), "self": True, "health": status.get("health"),
              "store": status.get("store"), "release": status.get("release")}
        peers = {p["node_id"]: p for p in status.get("peers", [])}
        rows = [me]
        for member in status.get("members", []) or self._members_fallback():
            peer = peers.get(member["node_id"], {})
            rows.append({**member, "self": False, "health": peer.get("health"),
                         "release": peer.get("release"), "addr": peer.get("addr")})
        return rows

    def _members_fallback(self) -> list[dict]:
        online = {p["node_id"] for p in self.status().get("peers", [])}
        return [{"node_id": m.node_id, "name": m.name, "role": m.role, "online": m.node_id in online,
                 "last_seen": None} for m in self.agent.core.state.members()
                if m.node_id != self.agent.home.info.node_id]

    def releases(self) -> list[dict]:
        """The release history, newest first, with which one is current."""
        info = self.agent.home.info
        book = rel.ReleaseBook(self.agent.core.state, info.authority_public_key, time.time())
        rows = []
        for entry in book.history():
            r = entry.release
            rows.append({"id": r.id, "name": r.name, "seq": r.seq, "root": r.root, "publisher": r.publisher,
                         "created_at": r.created_at, "current": entry.current, "previous": entry.previous,
                         "published_at": entry.published_at, "first_published_at": entry.first_published_at,
                         "older": entry.older})
        return rows

    def policies_json(self) -> dict:
        return policies_json(self.catalog().policies)

    def tag_counts(self) -> list[dict]:
        """Per tag: media shown, media hidden (no consent yet, withdrawn, or past retention) and
        views counted over every node (aggregated; nothing per person). Most media first."""
        core = self.agent.core
        if core is None:
            return []
        sold = dr.sales_per_tag(core.state, self.agent.home.info.authority_public_key, time.time())
        return tag_counts(self.catalog(), cs.tag_views(core.state), sold)

    # ---- drops --------------------------------------------------------------------------------------

    def drop_signer(self) -> dr.Signer:
        """This node's key for drop operations (any member box sells from its own allowance)."""
        home = self.agent.home
        return dr.Signer(home.info.authority_public_key, home.node_key(), home.info.chain)

    def drop_book(self, now: float) -> dr.DropBook:
        return dr.DropBook(self.agent.core.state, self.agent.home.info.authority_public_key, now)

    def drop_rows(self) -> list[dict]:
        """Every drop as the dashboard shows it: the tally, this box's reservations awaiting payment,
        and each box's share by name."""
        names = {m.node_id: m.name for m in self.agent.core.state.members()}
        node = self.agent.home.info.node_id
        rows = []
        for tally in self.drop_book(time.time()).tallies():
            shares = [{"node_id": n, "name": names.get(n) or n[:10], "self": n == node, **share}
                      for n, share in tally.as_json()["per_node"].items()]
            waiting = [{"order": o.code, "expires": o.expires} for (n, _), o in sorted(tally.orders.items())
                       if n == node and o.status == dr.RESERVED]
            rows.append({**tally.as_json(), "shares": shares, "waiting": waiting[:DROP_ORDERS_SHOWN_MAX],
                         "waiting_more": max(0, len(waiting) - DROP_ORDERS_SHOWN_MAX)})
        return rows

    async def settle_order(self, drop_id: str, code: str, paid: bool) -> dr.Order:
        """Mark this box's reservation `code` paid (or cancel it): the POS's and the dashboard's way."""
        do = dr.mark_paid if paid else dr.cancel
        return await self._transact(lambda state: do(state, self.drop_signer(), drop_id, code, time.time()))

    def crew_actions_allowed(self) -> str | None:
        """None if this node can sign crew actions; otherwise why not, in plain language."""
        if self.agent.home.info.role != Role.ORGANIZER.value:
            return (f"This node is an {self.agent.home.info.role} node. Rollback, revocations and policies "
                    "must be signed by an organizer's key: open this dashboard on the organizer's laptop.")
        return None

    async def rollback(self, release_id: str | None) -> dict:
        """Publish `release_id` again (None: the previous release); the release's summary."""
        self._require_organizer()
        home = self.agent.home
        authority = home.info.authority_public_key

        def body(state) -> dict:
            now = time.time()
            book = rel.ReleaseBook(state, authority, now)
            target = book.previous() if release_id is None else book.release(release_id)
            if target is None:
                raise NotFoundError("no such release to roll back to")
            at = rel.publication_time(book, now)
            pub_id, blob = rel.create_publication(authority, home.node_key(), home.info.chain, target.id, at)
            state.put_publication(pub_id, blob)
            return {"id": target.id, "name": target.name, "root": target.root, "at": at}

        return await self._transact(body)

    async def revoke_member(self, node_id: str, reason: str) -> None:
        self._require_organizer()
        home = self.agent.home
        if node_id == home.info.node_id:
            raise UsageError("a node cannot revoke itself; ask another organizer")
        from mesh.ids import parse_node_id

        try:
            target = parse_node_id(node_id.strip())
        except ValueError:
            raise UsageError(f"{node_id!r} is not a node id") from None
        blob = create_revocation(home.info.authority_public_key, home.node_key(), home.info.chain,
                                 target, time.time(), reason or "revoked from the dashboard")
        await self._transact(lambda state: state.put_revocation(target, blob))

    async def admit_box(self, node_id: str, code: str, role: str, name: str | None) -> str:
        """Admit a box waiting on the LAN (one this node's mDNS heard) by the code it shows."""
        from mesh.drivers.pairing import admission_token, admit_at, normalize_code
        from mesh.drivers.settings import parse_address
        from mesh.state.membership import Role

        self._require_organizer()
        box = self.agent.pending_boxes.get(node_id.strip())
        if box is None:
            raise UsageError("that box is no longer waiting (refresh the page)")
        secret = normalize_code(code)
        try:
            Role(role)
        except ValueError:
            raise UsageError(f"unknown role {role!r}") from None
        home = self.agent.home
        hints = [tuple(address) for address in self.agent.listen_addresses()]
        return await admit_at(parse_address(box["addr"]), secret,
                              lambda: admission_token(home, role, name, hints, time.time()))

    async def set_policy(self, scope: str, default: str, description: str) -> str:
        self._require_organizer()
        home = self.agent.home
        made = cs.create_policy(home.info.authority_public_key, home.node_key(), home.info.chain,
                                scope, default, description, time.time())
        return await self._transact(lambda state: cs.set_policy(state, made))

    def _require_organizer(self) -> None:
        why = self.crew_actions_allowed()
        if why is not None:
            raise CredentialError(why)

    async def _transact(self, body: Callable):
        """Run `body(state)` inside a state-file transaction on a worker thread, one at a time,
        once the state log holds what the agent's state does (a drop that arrived a moment ago
        and is on the page, say)."""
        statefile = self.agent.statefile
        actor = actor_id(self.agent.home.info.node_id, os.urandom(8))

        def run():
            with statefile.transaction(actor) as state:
                return body(state)

        async with self._write_lock:
            persisted = getattr(self.agent, "persisted", None)
            if persisted is not None:
                await persisted()
            return await trio.to_thread.run_sync(run)


# ---- pure helpers shared with the static export ----------------------------------------------------


def _looks_like_cid(text: str) -> bool:
    try:
        Cid.parse(text)
    except ValueError:
        return False
    return True


def policies_json(policies: cs.Policies) -> dict:
    return {
        "scopes": [{"scope": p.scope, "default": "grant" if p.default_grant else "deny",
                    "description": p.description, "at": p.at} for p in policies.scopes.values()],
        "retention": [{"category": r.category, "retention_s": r.retention_s,
                       "plain": plain_retention(r.retention_s)} for r in policies.retention.values()],
    }


def plain_retention(seconds: float | None) -> str:
    """'7 days', '12 hours', ... for a retention; 'kept until deleted' for None."""
    if seconds is None:
        return "kept until the crew deletes it"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:.0f} seconds"


def consent_rows(view: cs.ConsentView, code: str) -> list[dict]:
    subject = cs.parse_subject_code(code)
    scopes = set(view.policies.scopes) | set(view.subject_scopes(subject))
    rows = []
    for scope in sorted(scopes):
        policy = view.policies.scopes.get(scope)
        rows.append({"scope": scope, "granted": view.granted(subject, scope),
                     "default": "grant" if view.policies.default_grant(scope) else "deny",
                     "description": policy.description if policy else "(no policy describes this scope)"})
    return rows
