"""Thumbnails: a small JPEG of an image, made with Pillow, bounded in every dimension.

The input is untrusted (any file a user adds, or bytes a peer sent): images larger than
`source_pixels_max` are refused before decoding (Pillow's decompression-bomb guard raised to an
error), files larger than `source_bytes_max` are not read, and anything Pillow cannot decode as an
image yields None. The output fits in `thumb_px_max` pixels per side and is one small chunk.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

THUMB_PX_MAX = 320  # longest side of a thumbnail, pixels
THUMB_QUALITY = 80  # JPEG quality
SOURCE_PIXELS_MAX = 64_000_000  # refuse larger images undecoded (decompression bombs)
SOURCE_BYTES_MAX = 256 * 1024 * 1024  # do not even open larger files
THUMB_BYTES_MAX = 256 * 1024  # a thumbnail larger than this is a bug; refuse it
THUMB_MEDIA_TYPE = "image/jpeg"


def thumbnail_bytes(data: bytes, px_max: int = THUMB_PX_MAX) -> bytes | None:
    """JPEG bytes of a thumbnail of image `data`; None if it is not a decodable, sane image."""
    if len(data) > SOURCE_BYTES_MAX:
        return None
    return _thumbnail(io.BytesIO(data), px_max)


def thumbnail_of_file(path: Path, px_max: int = THUMB_PX_MAX) -> bytes | None:
    """Like `thumbnail_bytes` for a file on disk (read lazily by Pillow, never whole if huge)."""
    try:
        if path.stat().st_size > SOURCE_BYTES_MAX:
            return None
        with open(path, "rb") as handle:
            return _thumbnail(handle, px_max)
    except OSError:
        return None


def thumbnail_of_image(image, px_max: int = THUMB_PX_MAX) -> bytes | None:
    """JPEG bytes of an already decoded Pillow image (a video's poster frame) scaled to fit `px_max`."""
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > SOURCE_PIXELS_MAX:
        return None
    image = image.copy()
    image.thumbnail((px_max, px_max))
    return _encode(image)


def _thumbnail(handle, px_max: int) -> bytes | None:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                width, height = image.size
                if width <= 0 or height <= 0 or width * height > SOURCE_PIXELS_MAX:
                    return None
                image.draft("RGB", (px_max, px_max))  # JPEG: decode at reduced scale
                image = ImageOps.exif_transpose(image)
                image.thumbnail((px_max, px_max))
                return _encode(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, ValueError, SyntaxError, EOFError):
        return None
    except Exception:  # noqa: BLE001 - the trust boundary: Pillow's plugins raise many kinds on junk
        return None


def _encode(image) -> bytes | None:
    if image.mode not in ("RGB", "L"):
        image = _flatten(image)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    data = out.getvalue()
    return data if len(data) <= THUMB_BYTES_MAX else None


def _flatten(image):
    """RGB over white for images with alpha or a palette."""
    from PIL import Image

    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
