"""Typed records of the shared state, independent of where they are kept.

The foundation keeps asset records in the local index; the shared Automerge document keeps the same
records under the same field names, so moving them is a copy, not a translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TAG_CHARS_MAX = 64
TAGS_PER_ASSET_MAX = 64
NAME_CHARS_MAX = 255


@dataclass(frozen=True, slots=True)  # slots: ~10,000 per read, fewer objects for the collector
class AssetRecord:
    """A file the mesh knows about."""

    cid: str  # CID of the file (its manifest, or its single chunk), multibase text
    name: str  # file name as added (no directories), shown to people
    size: int  # file size in bytes
    media_type: str  # IANA media type guessed from the name, e.g. "image/jpeg"
    added_at: float  # unix seconds when first added
    added_by: str  # node id of the node that added it
    tags: frozenset[str] = field(default_factory=frozenset)  # canonical tags
    subjects: frozenset[str] = frozenset()  # pseudonymous subject codes shown in the media
    retention_s: float | None = None  # seconds after added_at when it expires; None = keep
    thumbnail: str | None = None  # CID of a small JPEG: the image scaled down, or a video's poster frame
    preview: str | None = None  # CID of a short, small preview clip (MP4) of a video, if any


def normalize_tag(text: str) -> str:
    """Canonical form of a tag: stripped, lower-case, inner whitespace as single hyphens."""
    tag = "-".join(text.strip().lower().split())
    if not tag:
        raise ValueError("a tag cannot be empty")
    if len(tag) > TAG_CHARS_MAX:
        raise ValueError(f"a tag has at most {TAG_CHARS_MAX} characters")
    if any(not (ch.isalnum() or ch in "-_.:") for ch in tag):
        raise ValueError(f"tag {text!r} may use letters, digits and - _ . : only")
    return tag
