"""Replication policy for media: which objects of which asset belong on which node.

Rules (read from the shared state; the merge rules are those of the entries they read):
- Every asset has up to three *objects*: its original (the asset's own CID), its thumbnail (a small
  JPEG: the image scaled down, or a video's poster frame) and its preview clip (a video's first
  seconds, small). Previews are the thumbnail and the clip.
- Previews of every visible asset belong on every edge and hub (pages show them everywhere).
- An original belongs on a node that pins one of the asset's tags; elsewhere it is fetched on
  demand. A node pins: the canonical tags (the event's declared tag set) when it is an edge (its
  config's `pin_canonical` decides otherwise), the tags of its config's `pin_tags`, and the tags it
  pinned in the shared state (`mesh pin --tag T`).
- Node pins are one boolean entry per (node, tag) in the `node_pins` map: pin writes true, unpin
  writes false; concurrent writes of one entry resolve last-writer-wins (Automerge's rule for a
  map key, the same on every replica), writes of different entries all survive.
- The canonical tag set is the `tags` map (tag -> {description}); `tags set` declares the listed
  tags and undeclares the others (a concurrent declare of a tag another replica undeclared keeps
  it: a put wins over a concurrent delete of the same key in Automerge).
- Hidden assets (see mesh.state.consent: pending or withdrawn, or expired) belong nowhere, except a
  pending one on the node that captured it (`added_by`), where it waits for its subject's decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.state.document import MeshState
from mesh.state.records import AssetRecord

ORIGINAL = "original"
THUMBNAIL = "thumbnail"
PREVIEW = "preview"
PREVIEW_ROLES = frozenset({"edge", "hub"})  # roles that hold every visible asset's previews
CANONICAL_TAGS_MIN = 3  # event playbooks advise a small canonical set: warn outside this range
CANONICAL_TAGS_MAX = 6


@dataclass(frozen=True)
class MediaObject:
    """One object of an asset."""

    cid: str  # the object's CID (a FileManifest or a raw chunk)
    asset: str  # the asset's CID (the original's)
    kind: str  # ORIGINAL, THUMBNAIL or PREVIEW


def asset_objects(record: AssetRecord) -> list[MediaObject]:
    """The original and the previews of an asset, each once."""
    found = [MediaObject(record.cid, record.cid, ORIGINAL)]
    for cid, kind in ((record.thumbnail, THUMBNAIL), (record.preview, PREVIEW)):
        if cid and cid not in {o.cid for o in found}:
            found.append(MediaObject(cid, record.cid, kind))
    return found


def pinned_tags(state: MeshState, node_id: str, role: str, config_tags: tuple[str, ...] = (),
                pin_canonical: bool | None = None) -> frozenset[str]:
    """The tags whose originals `node_id` keeps."""
    canonical = role == "edge" if pin_canonical is None else pin_canonical
    tags = set(config_tags) | set(state.node_pins(node_id))
    if canonical:
        tags |= set(state.tag_descriptions())
    return frozenset(tags)


def wants_previews(role: str) -> bool:
    """Whether a node of this role keeps every visible asset's previews."""
    return role in PREVIEW_ROLES


def wants_original(record: AssetRecord, pinned: frozenset[str]) -> bool:
    """Whether a node pinning `pinned` keeps this (visible) asset's original."""
    return not pinned.isdisjoint(record.tags)


def canonical_set_advice(tags: list[str] | set[str]) -> str | None:
    """A warning when a canonical set is outside the advised size; None when it is fine."""
    count = len(tags)
    if CANONICAL_TAGS_MIN <= count <= CANONICAL_TAGS_MAX:
        return None
    return (f"{count} canonical tag(s): event playbooks advise {CANONICAL_TAGS_MIN} to {CANONICAL_TAGS_MAX} "
            "(attendees find media by a few clear tags); set anyway")


def set_canonical_tags(state: MeshState, tags: dict[str, str | None]) -> None:
    """Make `tags` the event's canonical set: each tag declared (with its new description, or the
    one it had, or ""), every other declared tag undeclared."""
    current = state.tag_descriptions()
    for tag in sorted(set(current) - set(tags)):
        state.undeclare_tag(tag)
    for tag, description in sorted(tags.items()):
        text = description if description is not None else current.get(tag, "")
        if current.get(tag) != text or tag not in current:
            state.set_tag_description(tag, text)
