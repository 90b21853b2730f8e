"""Media inside `NodeCore`: which files of which assets this node wants, holds and announces.

Theory of operation:
- Every asset has up to three *objects* (mesh.state.media): its original, its thumbnail and its
  preview clip. Each is one file, a content root for the one scheduler (a FileManifest, or a single
  raw chunk): a wanted object that is not held here becomes a `Track` of mesh.core.swarming, in its
  priority class, and shares the node's pipelines and in-flight budget with the releases.
- What is wanted (mesh.state.media): previews of every visible asset on edges and hubs
  (CLASS_PREVIEW), originals whose tags this node pins (CLASS_PINNED_MEDIA), and any visible
  object a browser waits for (CLASS_ON_DEMAND, for ON_DEMAND_S after its last request). Hidden
  assets are wanted nowhere and their blocks are withheld (never served): pending ones stay on the
  node that captured them until their subject decides; withdrawn or expired ones are purged by the
  driver's periodic purge.
- The store is asked once what it holds of each object (LoadObjects, in batches). Held visible
  objects are announced whole to every peer that speaks FEATURE_MEDIA (HaveObjects): all of them
  when a session starts, each one when it becomes held or visible. Objects being fetched are
  announced chunk by chunk (Have, HaveUpdate) like releases, so nodes fetching the same photo trade
  its chunks, and the node that captured it uploads each chunk about once.
- Activation: background objects are fetched at most ACTIVE_OBJECTS_MAX at once, in class order,
  then in an order every node shares (newest first, see `_shared_order`), fewest known holders
  breaking ties, and only from peers known to hold them (announced whole or in part, or the node
  that captured them); an object nobody connected holds waits. Sharing the order matters: nodes
  working on the same few objects at once trade their chunks (rarest first, seed avoidance), so a
  burst of photos spreads like one release; in a per-node random order each node waited for whole
  objects from the capturer (1.6x the time bound in the World, against 1.07x). On-demand objects
  start at once. In an object's swarm the capturer is spared: when several whole copies are
  connected, a chunk is asked of another holder.
- Budget: with `budget_bytes` set (StoreUsage), background objects start only while the store has
  room for them (unpinned originals held here count as room: they can go). When what is stored plus
  what is arriving would pass the budget, the least recently used unpinned originals are evicted
  (EvictObjects) down to EVICT_HEADROOM below it. Releases, previews, pinned originals and
  originals this node captured are never evicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import blake3

from mesh.content.chunking import CHUNK_BYTES_START
from mesh.content.cid import RAW, Cid
from mesh.content.manifest import FileManifest, decode_manifest
from mesh.core.events import (
    EvictObjects, FetchRequested, LoadObjects, ObjectsEvicted, ObjectsInventory, ObjectsUsed, StoreUsage,
)
from mesh.core.session import Session
from mesh.core.swarm import Swarm
from mesh.core.swarming import CLASS_LIVE, CLASS_ON_DEMAND, CLASS_PINNED_MEDIA, CLASS_PREVIEW, Track
from mesh.state.consent import PENDING, VISIBLE
from mesh.state.media import ORIGINAL, asset_objects, pinned_tags, wants_original, wants_previews
from mesh.state.records import AssetRecord
from mesh.wire import messages as m

FEATURE_MEDIA = "media/1"  # a peer listing this in its Hello understands HaveObjects
ACTIVE_OBJECTS_MAX = 32  # background media files fetched at once (on-demand ones always start)
ON_DEMAND_S = 30.0  # a browser's request puts a file first in line for this long
OBJECTS_PER_PEER_MAX = 1 << 17  # files one peer may announce as held; more are ignored
INVENTORY_BATCH_MAX = 4096  # files asked of the store in one LoadObjects
MEDIA_STATUS_S = 0.5  # `status()["media"]` is counted again at most this often
EVICT_HEADROOM = 0.05  # eviction frees down to this share of the budget below it
PREVIEW_SIZE_GUESS = 128 * 1024  # a raw preview's size for the in-flight budget until its bytes arrive
ON_DEMAND_ACTIVE_MAX = 8  # files fetched for waiting browsers at once (more wait their turn)
EVICT_GRACE_S = 10.0  # the file read (or fetched for a browser) last, this recently, is being streamed: kept
EVICT_BACKOFF_S = 30.0  # after an eviction that freed nothing, the next waits this long


def _unown(owners: dict[Cid, set[str]], regrouped: set[Cid], cid: str, roots: list[Cid]) -> None:
    """Asset `cid` no longer has these objects (its record changed, or it went)."""
    for root in roots:
        found = owners.get(root)
        if found is not None:
            found.discard(cid)
        regrouped.add(root)


@dataclass
class _Object:
    """One media file this node knows of (an asset's original or preview)."""

    root: Cid  # the file's CID
    key: bytes  # ... binary, as in HaveObjects
    asset: str  # the asset's CID
    kind: str  # ORIGINAL, THUMBNAIL or PREVIEW (mesh.state.media)
    publisher: str  # the node that captured (added) the asset
    order: float  # its position within its class (the same on every node)
    size: int | None = None  # bytes, once known (originals: from the record)
    status: str = VISIBLE  # VISIBLE, PENDING or WITHDRAWN (mesh.state.consent)
    pinned: bool = False  # an original whose tags this node pins
    klass: int | None = None  # priority class while wanted here, else None
    inventoried: bool = False  # the store said what it holds of it
    held: bool = False  # every block of it is in the store
    chunks: tuple[Cid, ...] | None = None  # its chunk list, once known
    manifest: bytes | None = None  # its FileManifest's verified bytes, once known (raw files: None)
    present: set[Cid] = field(default_factory=set)  # chunks the store holds of it (not all: not held)
    used_at: float = 0.0  # last read by a browser or a peer (least recently used goes first)
    on_demand_until: float = 0.0  # a browser waits for it until then


class MediaSwarming:
    """The media half of `NodeCore` (a mixin beside `ReleaseSwarming`: it uses the core's sessions,
    tracks, transfers, state, `_send`, `_emit`). Attributes are set up by `_init_media`."""

    def _init_media(self, pin_tags: tuple[str, ...], pin_canonical: bool | None) -> None:
        self.media: dict[Cid, _Object] = {}  # every object of every asset in the shared state
        self.pin_tags = tuple(pin_tags)  # the config's pinned tags
        self.pin_canonical = pin_canonical  # the config's choice on the canonical tags (None: by role)
        self.pinned_tags: frozenset[str] = frozenset()  # what this node pins now
        self.store_used = 0  # bytes in the store, as the driver last said (plus what we stored since)
        self.budget_bytes: int | None = None  # how much the store may hold; None: no limit
        self._wanted: set[Cid] = set()  # objects with a class that are not held
        self._inventory_queue: list[Cid] = []  # objects to ask the store about
        self._inventory_due: set[Cid] = set()  # ... asked, not yet answered
        self._announce_queue: list[bytes] = []  # objects now held and visible: HaveObjects due
        self._served: dict[Cid, Cid] = {}  # block of a held visible object -> that object
        self._finished: list[Cid] = []  # object tracks complete: removed at the next media step
        self._on_demand: dict[Cid, float] = {}  # objects a browser waits for -> until when
        self._media_due = True  # an activation pass is due
        self._evicting: frozenset[Cid] = frozenset()  # the files of the EvictObjects out, not yet answered
        self._evict_after = 0.0  # no eviction before this (one freed nothing)
        self._whole: dict[bytes, int] = {}  # object -> sessions that announced it held (HaveObjects)

    # ---- what the gateway and drivers read ----------------------------------------------------

    def object_state(self, cid: str) -> str:
        """"held", "fetching", "checking" (asking the store), "waiting" (held by a peer, not yet
        asked), "unavailable" (no connected peer holds it), "hidden" or "unknown"."""
        obj = self._object(cid)
        if obj is None:
            return "unknown"
        if obj.status != VISIBLE:
            return "hidden"
        if obj.held:
            return "held"
        if obj.root in self.tracks:
            return "fetching"
        if not obj.inventoried:
            return "checking"
        return "waiting" if self._holder_count(obj) else "unavailable"

    def object_spans(self, cid: str) -> tuple[int, list[tuple[str, int]]] | None:
        """(size, [(chunk CID, length)...]) of a visible media file once its chunk list is known."""
        obj = self._object(cid)
        if obj is None or obj.status != VISIBLE:
            return None
        manifest = obj.manifest
        track = self.tracks.get(obj.root)
        if manifest is None and track is not None:
            manifest = track.swarm.manifest_data(obj.root)
        if obj.root.codec == RAW:
            size = track.swarm.total_bytes if track is not None and track.swarm.have_bytes else obj.size
            return (size, [(str(obj.root), size)]) if size is not None else None
        if manifest is None:
            return None
        parsed = FileManifest.decode(manifest)
        return parsed.size, [(str(chunk), length) for chunk, _, length in parsed.spans()]

    def object_available(self, cid: str) -> bool:
        """Held here, or held by a connected peer (a page may show it: it can be fetched)."""
        obj = self._object(cid)
        return obj is not None and obj.status == VISIBLE and (obj.held or self._holder_count(obj) > 0)

    def _object(self, cid: str) -> _Object | None:
        try:
            return self.media.get(Cid.parse(cid))
        except ValueError:
            return None

    def _media_status(self) -> dict:
        """The `media` part of `status()`: one pass over every media object, so a status asked
        many times a second (dashboards, `/api/status`) reuses it for MEDIA_STATUS_S."""
        cached = getattr(self, "_media_status_cached", None)
        if cached is not None and 0 <= self._now - cached[0] < MEDIA_STATUS_S:
            return dict(cached[1])
        made = self._media_status_now()
        self._media_status_cached = (self._now, made)
        return dict(made)

    def _media_status_now(self) -> dict:
        previews = wants_previews(self.identity.role)
        belongs = [o for o in self.media.values()
                   if o.status == VISIBLE and (o.pinned or (o.kind != ORIGINAL and previews))]
        held = [o for o in self.media.values() if o.held]
        return {
            "wanted": len(belongs),
            "held": sum(1 for o in belongs if o.held),
            "bytes": sum(o.size or 0 for o in held),
            "budget": self.budget_bytes,
            "store_bytes": self.store_used,
            "fetching": sum(1 for t in self.tracks.values() if t.release is None and t.klass != CLASS_LIVE),
            "pending": sum(1 for o in held if o.status == PENDING),
            "pinned_tags": sorted(self.pinned_tags),
        }

    # ---- policy: what is wanted ---------------------------------------------------------------

    def _refresh_media(self, records: list[AssetRecord], statuses: dict[str, str], now: float) -> bool:
        """Follow the shared state's assets, consent and pins; True if any object's status changed
        or objects came or went (the withheld blocks must be computed again). An asset whose record,
        status and pin are as the last pass saw them is skipped (a pass follows every asset: at
        10,000 only the few that changed cost more than a comparison)."""
        pins_before = getattr(self, "pinned_tags", None)
        self.pinned_tags = pinned_tags(self.state, self.identity.node_id, self.identity.role, self.pin_tags,
                                       self.pin_canonical)
        same_pins = self.pinned_tags == pins_before
        last = getattr(self, "_followed", {})  # asset CID -> (record, status, pinned, its roots)
        owners = self.__dict__.setdefault("_owners", {})  # root -> the followed assets it is an object of
        followed: dict[str, tuple] = {}
        touched: list[Cid] = []  # objects whose class may have changed
        regrouped: set[Cid] = set()  # roots whose owners changed
        changed = False
        for record in records:
            status = statuses.get(record.cid, VISIBLE)
            before = last.get(record.cid)
            if before is not None and before[0] is record and before[1] == status and same_pins:
                followed[record.cid] = before  # the state's index hands out the same record unchanged
                continue
            pinned = status == VISIBLE and wants_original(record, self.pinned_tags)
            if before is not None and before[1] == status and before[2] == pinned and before[0] == record:
                followed[record.cid] = before
                continue
            if before is not None:
                _unown(owners, regrouped, record.cid, before[3])
            roots = []
            for item in asset_objects(record):
                try:
                    root = Cid.parse(item.cid)
                except ValueError:
                    continue
                roots.append(root)
                touched.append(root)
                changed |= self._follow(root, item, record, status, pinned and item.kind == ORIGINAL)
            for root in roots:
                owners.setdefault(root, set()).add(record.cid)
                regrouped.add(root)
            followed[record.cid] = (record, status, pinned, roots)
        self._followed = followed
        if regrouped or len(followed) != len(last):  # an asset changed or went: drop what none follows
            for cid in last.keys() - followed.keys():
                _unown(owners, regrouped, cid, last[cid][3])
            for root in regrouped:
                if not owners.get(root):
                    owners.pop(root, None)
                    if root in self.media:
                        self._forget_object(root)
                        changed = True
            for root in {r for r in touched if len(owners.get(r, ())) > 1}:  # shared by assets: the
                for cid in sorted(owners[root]):  # last in CID order decides, as when all are followed
                    record, status, pinned, _ = followed[cid]
                    for item in asset_objects(record):
                        if item.cid == str(root):
                            changed |= self._follow(root, item, record, status, pinned and item.kind == ORIGINAL)
        if changed:
            self._index_served()
        for root in touched:
            obj = self.media.get(root)
            if obj is not None:
                self._classify(obj, now)
        self._media_due = True
        return changed

    def _follow(self, root: Cid, item, record: AssetRecord, status: str, pinned: bool) -> bool:
        """Create or update one object; True if it is new or its status changed."""
        obj = self.media.get(root)
        new = obj is None
        if new:
            obj = self.media[root] = _Object(root, root.to_bytes(), item.asset, item.kind, record.added_by,
                                             _shared_order(record, root), size=record.size if item.kind == ORIGINAL else None)
            self._inventory_queue.append(root)
        obj.pinned = pinned
        if obj.status == status and not new:
            return False
        became_visible = status == VISIBLE and obj.status != VISIBLE
        obj.status = status
        if became_visible and obj.held:
            self._announce_queue.append(obj.key)
        return True

    def _classify(self, obj: _Object, now: float) -> None:
        """Its priority class now, and what follows for its track."""
        obj.klass = self._klass_of(obj, now)
        if obj.klass is None or obj.held:
            self._wanted.discard(obj.root)
        else:
            self._wanted.add(obj.root)
        track = self.tracks.get(obj.root)
        if track is None or track.release is not None:
            return
        if obj.klass is None:
            self._drop_object_track(obj.root)
        else:
            track.klass = obj.klass
            track.swarm.endgame_enabled = obj.klass == CLASS_ON_DEMAND

    def _klass_of(self, obj: _Object, now: float) -> int | None:
        if obj.status != VISIBLE:
            return None
        if obj.on_demand_until > now:
            return CLASS_ON_DEMAND
        if obj.kind != ORIGINAL:
            return CLASS_PREVIEW if wants_previews(self.identity.role) else None
        return CLASS_PINNED_MEDIA if obj.pinned else None

    def _forget_object(self, root: Cid) -> None:
        """The asset is gone from the shared state."""
        self._drop_object_track(root)
        self.media.pop(root, None)
        self._wanted.discard(root)
        self._on_demand.pop(root, None)

    def _index_served(self) -> None:
        """Which blocks belong to held visible objects (served, counted as seeds, used for LRU)."""
        self._served = {}
        for obj in self.media.values():
            if obj.held and obj.status == VISIBLE:
                self._serve_blocks(obj)

    def _serve_blocks(self, obj: _Object) -> None:
        self._served[obj.root] = obj.root
        for chunk in obj.chunks or ():
            self._served.setdefault(chunk, obj.root)

    def _media_withheld(self) -> set[Cid]:
        """Blocks of hidden assets' objects (known so far) that no visible object uses."""
        hidden: set[Cid] = set()
        visible: set[Cid] = set()
        for obj in self.media.values():
            blocks = visible if obj.status == VISIBLE else hidden
            blocks.add(obj.root)
            blocks.update(obj.chunks or ())
        return hidden - visible

    def _media_manifest(self, cid: Cid) -> bytes | None:
        """The verified FileManifest bytes of a held visible object (served from memory)."""
        obj = self.media.get(cid)
        return obj.manifest if obj is not None and obj.held and obj.status == VISIBLE else None

    def _holds_media_chunk(self, cid: Cid) -> bool:
        return cid in self._served

    # ---- the store's answers ------------------------------------------------------------------

    def _on_objects_inventory(self, event: ObjectsInventory, now: float) -> None:
        hidden_learned = False
        for inventory in event.objects:
            try:
                root = Cid.parse(inventory.root)
            except ValueError:
                continue
            self._inventory_due.discard(root)
            obj = self.media.get(root)
            if obj is not None:
                known = obj.chunks
                self._take_inventory(obj, dict(inventory.manifests), set(inventory.present), now)
                hidden_learned |= obj.status != VISIBLE and obj.chunks != known
        if hidden_learned:
            self._apply_withheld()  # the chunks of a hidden file, learnt from the store: never served
        self._media_due = True

    def _take_inventory(self, obj: _Object, manifests: dict[str, bytes], present: set[str], now: float) -> None:
        obj.inventoried = True
        if obj.root.codec == RAW:
            obj.chunks = (obj.root,)
            held = str(obj.root) in present
        else:
            data = manifests.get(str(obj.root))
            if data is not None and not self._learn_manifest(obj, data):
                return
            held = data is not None and all(str(c) in present for c in obj.chunks)
        obj.present = {Cid.parse(c) for c in present} if not held else set()
        if held:
            self._now_held(obj, now)
        self._classify(obj, now)

    def _learn_manifest(self, obj: _Object, data: bytes) -> bool:
        try:
            manifest = decode_manifest(data)
        except ValueError:
            return False
        if not isinstance(manifest, FileManifest):
            return False
        obj.manifest, obj.chunks, obj.size = data, tuple(manifest.chunks), manifest.size
        return True

    def _now_held(self, obj: _Object, now: float) -> None:
        obj.held = True
        obj.present = set()
        obj.used_at = max(obj.used_at, now)
        self._wanted.discard(obj.root)
        if obj.status == VISIBLE:
            self._serve_blocks(obj)
            self._announce_queue.append(obj.key)

    def _load_objects(self) -> None:
        """Ask the store about objects not yet inventoried (in batches)."""
        while self._inventory_queue:
            batch = self._inventory_queue[:INVENTORY_BATCH_MAX]
            del self._inventory_queue[:INVENTORY_BATCH_MAX]
            batch = [root for root in batch if root in self.media]
            if batch:
                self._inventory_due.update(batch)
                self._actions.append(LoadObjects(tuple(str(root) for root in batch)))

    def _on_objects_evicted(self, event: ObjectsEvicted, now: float) -> None:
        self._evicting = frozenset()
        if not event.freed_bytes:  # kept by something else (a store pin), or the gc failed: do not spin
            self._evict_after = now + EVICT_BACKOFF_S
        self.store_used = max(0, self.store_used - event.freed_bytes)
        for text in event.roots:
            obj = self._object(text)
            if obj is not None and obj.held:
                obj.held = False
                obj.inventoried = False
                self._inventory_queue.append(obj.root)  # what is left of it (chunks shared elsewhere)
                self._emit("media.evicted", cid=text, asset=obj.asset, bytes=obj.size or 0)
                self._classify(obj, now)  # a browser that asked meanwhile gets it fetched again
        self._index_served()
        self._media_due = True

    def _on_store_usage(self, event: StoreUsage, now: float) -> None:
        self.store_used, self.budget_bytes = event.used_bytes, event.budget_bytes
        self._media_due = True

    def _on_objects_used(self, event: ObjectsUsed, now: float) -> None:
        for text in event.roots:
            obj = self._object(text)
            if obj is not None:
                obj.used_at = now

    def _note_served(self, cid: Cid, now: float) -> None:
        """A peer fetched a block of ours: its object was used."""
        root = self._served.get(cid)
        if root is not None:
            self.media[root].used_at = now

    # ---- peers' announcements -----------------------------------------------------------------

    def _media_ready(self, session: Session, now: float) -> None:
        """A new ready session learns every visible object we hold."""
        self._media_due = True
        if FEATURE_MEDIA not in session.features:
            return
        keys = [obj.key for obj in self.media.values() if obj.held and obj.status == VISIBLE]
        for start in range(0, len(keys), m.HAVE_OBJECTS_MAX):
            self._send(session, m.HaveObjects(tuple(keys[start:start + m.HAVE_OBJECTS_MAX])), now)

    def _flush_announcements(self, now: float) -> None:
        keys, self._announce_queue = list(dict.fromkeys(self._announce_queue)), []
        if not keys:
            return
        messages = [m.encode(m.HaveObjects(tuple(keys[start:start + m.HAVE_OBJECTS_MAX])))
                    for start in range(0, len(keys), m.HAVE_OBJECTS_MAX)]
        for session in self.peers():
            if FEATURE_MEDIA in session.features:
                for data in messages:
                    self._send_encoded(session, data, now)

    def _on_have_objects(self, session: Session, msg: m.HaveObjects, now: float) -> None:
        held = session.held_objects
        for key in msg.roots:
            if len(held) >= OBJECTS_PER_PEER_MAX:
                self._count("media.announcements_dropped")
                break
            if key in held:
                continue
            held.add(key)
            self._whole[key] = self._whole.get(key, 0) + 1
            try:
                root = Cid.from_bytes(key)
            except ValueError:
                continue  # not a CID we could ever want; kept only as a bounded set entry
            track = self.tracks.get(root)
            if track is not None and track.release is None:
                track.swarm.peer_has_all(session.node_id)
        self._media_due = True

    def _media_holder_seen(self, key: bytes) -> None:
        """A peer announced part of a root we do not track: perhaps an object we wait for (an
        activation pass only then: a peer announcing roots we know nothing of costs nothing)."""
        try:
            root = Cid.from_bytes(key)
        except ValueError:
            return
        if root in self._wanted:
            self._media_due = True

    def _media_lacked(self, session: Session, cid: Cid) -> None:
        """The peer cannot serve a block of a file it announced whole (it evicted the file since):
        it is no longer counted as holding it."""
        roots = [cid] if cid in self.media else [r for r, t in self.tracks.items()
                                                 if t.release is None and t.swarm.lists(cid)]
        for root in roots:
            obj = self.media.get(root)
            if obj is None:
                continue
            session.peer_haves.pop(obj.key, None)  # what it said it held of it is void too
            self._media_due = True
            if obj.key not in session.held_objects:
                continue
            session.held_objects.discard(obj.key)
            left = self._whole.get(obj.key, 0) - 1
            if left > 0:
                self._whole[obj.key] = left
            else:
                self._whole.pop(obj.key, None)
            self._media_due = True

    def _media_session_gone(self, session: Session) -> None:
        """A session ended: the objects it announced have one holder less."""
        whole = self._whole
        for key in session.held_objects:
            left = whole.get(key, 0) - 1
            if left > 0:
                whole[key] = left
            else:
                whole.pop(key, None)
        session.held_objects = set()
        self._media_due = True

    def _holder_count(self, obj: _Object) -> int:
        """Peers known to hold it whole; if none, whether a connected peer holds some of it or is
        its capturer (1) or not (0)."""
        count = self._whole.get(obj.key, 0)
        if count:
            return count
        for conn_id in self._ready.values():
            session = self._sessions[conn_id]
            have = session.peer_haves.get(obj.key)
            if session.node_id == obj.publisher or (have is not None and have[0] and any(have[1])):
                return 1
        return 0

    # ---- fetching -----------------------------------------------------------------------------

    def _on_fetch_requested(self, event: FetchRequested, now: float) -> None:
        obj = self._object(event.cid)
        if obj is None or obj.status != VISIBLE:
            return
        obj.used_at = now
        if obj.held and obj.root not in self._evicting:
            return
        obj.on_demand_until = now + ON_DEMAND_S  # (a file being evicted is fetched again once gone)
        self._on_demand[obj.root] = obj.on_demand_until
        self._classify(obj, now)
        self._media_due = True

    def _media_step(self, now: float) -> None:
        """Per event: reap finished tracks, end lapsed on-demand waits, ask the store, start
        what should run, announce, evict."""
        if self._finished:
            for root in self._finished:
                track = self.tracks.get(root)
                if track is not None and track.release is None and track.completed:
                    del self.tracks[root]
            self._finished = []
        if self._on_demand and min(self._on_demand.values()) <= now:
            for root in [r for r, until in self._on_demand.items() if until <= now]:
                del self._on_demand[root]
                if root in self.media:
                    self._classify(self.media[root], now)
        self._load_objects()
        if self._media_due:
            self._media_due = False
            self._activate_media(now)
            self._maybe_evict(now)
        self._flush_announcements(now)

    def _media_deadline(self) -> float | None:
        return min(self._on_demand.values()) if self._on_demand else None

    def _activate_media(self, now: float) -> None:
        """Park tracks no connected peer can feed; start tracks for wanted objects: on-demand ones
        up to ON_DEMAND_ACTIVE_MAX, background ones up to ACTIVE_OBJECTS_MAX and the budget's
        room, by class, the shared order, fewest holders."""
        self._park_orphans()
        media_tracks = [t for t in self.tracks.values() if t.release is None and t.klass != CLASS_LIVE]
        active = sum(1 for t in media_tracks if t.klass != CLASS_ON_DEMAND)
        on_demand = len(media_tracks) - active
        background = active < ACTIVE_OBJECTS_MAX
        if not background and (on_demand >= ON_DEMAND_ACTIVE_MAX or all(r in self.tracks for r in self._on_demand)):
            return  # full, and no browser waits for something that could start
        candidates = []
        for root in self._wanted:
            obj = self.media.get(root)
            if obj is None or root in self.tracks or not obj.inventoried or obj.klass is None:
                continue
            if not background and obj.klass != CLASS_ON_DEMAND:
                continue
            holders = self._holder_count(obj)
            if holders:
                candidates.append((obj.klass, obj.order, holders, obj))
        if not candidates:
            return
        candidates.sort(key=lambda c: c[:3])
        room = self._media_room()
        for klass, _, _, obj in candidates:
            if klass == CLASS_ON_DEMAND:
                if on_demand >= ON_DEMAND_ACTIVE_MAX:
                    continue  # its turn comes when one of those completes (the browser waits)
                on_demand += 1
            else:
                size = obj.size or CHUNK_BYTES_START
                if active >= ACTIVE_OBJECTS_MAX or (room is not None and size > room):
                    continue
                active += 1
                room = None if room is None else room - size
            self._start_object_track(obj, now)

    def _park_orphans(self) -> None:
        """Background tracks whose every holder went away give their slot back (what arrived of
        them is kept, and they start again when a holder is seen)."""
        for root, track in list(self.tracks.items()):
            obj = self.media.get(root)
            if (track.release is None and track.klass != CLASS_ON_DEMAND and not track.completed
                    and obj is not None and not self._holder_count(obj)):
                swarm = track.swarm
                if swarm.chunks is not None:
                    obj.present = {cid for cid in swarm.chunks if swarm.holds(cid)}
                if obj.manifest is None and root.codec != RAW:
                    obj.manifest = swarm.manifest_data(root)
                self._drop_object_track(root)

    def _start_object_track(self, obj: _Object, now: float) -> None:
        hint = obj.size if obj.size is not None else PREVIEW_SIZE_GUESS  # (the record gives originals' sizes)
        swarm = Swarm(obj.root, self.swarm_limits, self._rng, obj.publisher, self.transfers, size_hint=hint)
        swarm.spare_publisher = True
        swarm.endgame_enabled = obj.klass == CLASS_ON_DEMAND
        track = Track(None, swarm, True, klass=obj.klass, order=obj.order)
        self.tracks[obj.root] = track
        if obj.manifest is not None:
            swarm.add_manifest(obj.root, obj.manifest)
        if obj.present:
            swarm.add_present(obj.present)
        self._replay_haves(track)
        for session in self.peers():
            if obj.key in session.held_objects:
                swarm.peer_has_all(session.node_id)
        if swarm.ready:
            self._on_list_known(track, now)  # announces what we hold of it; may be complete already

    def _object_fetched(self, track: Track) -> None:
        """An object track is complete: the object is held (the track goes at the next step)."""
        swarm = track.swarm
        obj = self.media.get(swarm.root)
        self._emit("media.stored", cid=str(swarm.root), asset=obj.asset if obj else "", kind=obj.kind if obj else "",
                   bytes=swarm.total_bytes)
        self._finished.append(swarm.root)
        self._on_demand.pop(swarm.root, None)
        self._media_due = True
        if obj is None:
            return
        obj.on_demand_until = 0.0  # the wait is over: evicted later, it is fetched again only when asked
        obj.chunks = tuple(swarm.chunks)
        obj.size = swarm.total_bytes
        if swarm.root.codec != RAW:
            obj.manifest = swarm.manifest_data(swarm.root)
        self._now_held(obj, self._now)

    def _drop_object_track(self, root: Cid) -> None:
        """Stop fetching an object (no longer wanted): cancel what we asked for it."""
        track = self.tracks.get(root)
        if track is None or track.release is not None:
            return
        del self.tracks[root]
        obj = self.media.get(root)
        if obj is not None and obj.chunks is None and track.swarm.chunks is not None:
            obj.chunks = tuple(track.swarm.chunks)  # if it became hidden, every block of it is withheld
        others = [t.swarm for t in self.tracks.values()]
        for cid in [root, *(track.swarm.chunks or ())]:
            if any(swarm.lists(cid) for swarm in others):
                continue  # another root wants it too
            for node in self.transfers.drop_everywhere(cid):
                self._cancel_request(node, cid, self._now)
            for node in list(self.transfers.manifest_inflight.pop(cid, {})):
                self._cancel_request(node, cid, self._now)

    # ---- the storage budget -------------------------------------------------------------------

    def _incoming_bytes(self) -> int:
        return sum(t.swarm.missing_bytes for t in self.tracks.values() if t.fetch)

    def _evictable(self) -> list[_Object]:
        """Held originals nothing here keeps (not pinned, not captured here, not a file of a
        release), least recently used first; never the most recently used one while it was read
        or fetched for a browser in the last EVICT_GRACE_S (it is being streamed)."""
        me = self.identity.node_id
        releases = [t.swarm for t in self._release_tracks()]
        found = [o for o in self.media.values()
                 if o.held and o.kind == ORIGINAL and not o.pinned and o.publisher != me and o.root not in self.tracks
                 and not any(swarm.lists(o.root) for swarm in releases)]
        found.sort(key=lambda o: (o.used_at, o.order))
        if found and found[-1].used_at > self._now - EVICT_GRACE_S:
            found.pop()
        return found

    def _media_room(self) -> int | None:
        """Bytes background fetches may still take; None without a budget."""
        if self.budget_bytes is None:
            return None
        evictable = sum(o.size or 0 for o in self._evictable())
        return self.budget_bytes - self.store_used - self._incoming_bytes() + evictable

    def _maybe_evict(self, now: float) -> None:
        """Evict unpinned originals before what is stored and arriving passes the budget."""
        if self.budget_bytes is None or self._evicting or now < self._evict_after:
            return
        over = self.store_used + self._incoming_bytes() - self.budget_bytes
        if over <= 0:
            return
        target = over + int(self.budget_bytes * EVICT_HEADROOM)
        picked: list[_Object] = []
        freed = 0
        for obj in self._evictable():
            picked.append(obj)
            freed += obj.size or 0
            if freed >= target:
                break
        if picked:
            self._evicting = frozenset(o.root for o in picked)
            self._emit("media.evicting", files=len(picked), bytes=freed, over=over)
            self._actions.append(EvictObjects(tuple(str(o.root) for o in picked)))


def _shared_order(record: AssetRecord, root: Cid) -> float:
    """An object's place within its class, the same on every node: newest first (attendees look
    for what just happened), ties by a hash of the object. Nodes that fetch the same few objects at
    once trade their chunks as a release's swarm does; the capturer sends each chunk about once."""
    tie = int.from_bytes(blake3.blake3(root.to_bytes()).digest()[:4], "big") / 2**32
    return -record.added_at + tie * 1e-3
