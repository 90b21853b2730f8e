"""Thumbnails: bounded, JPEG, safe on hostile input (bombs, truncation, junk)."""

from __future__ import annotations

import io
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mesh.content.thumbs import THUMB_PX_MAX, thumbnail_bytes, thumbnail_of_file


def _image(mode: str, size: tuple[int, int], fmt: str, **save) -> bytes:
    out = io.BytesIO()
    color = (10, 200, 30, 128) if mode == "RGBA" else (10 if mode in ("L", "P") else (10, 200, 30))
    Image.new(mode, size, color).save(out, fmt, **save)
    return out.getvalue()


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_large_jpeg_shrinks_to_bound_keeping_aspect() -> None:
    thumb = thumbnail_bytes(_image("RGB", (3000, 2000), "JPEG"))
    image = _decoded(thumb)
    assert image.format == "JPEG" and image.size == (THUMB_PX_MAX, 213)


def test_png_with_alpha_and_palette_gif_become_rgb_jpeg() -> None:
    for data in (_image("RGBA", (500, 900), "PNG"), _image("P", (640, 640), "GIF")):
        image = _decoded(thumbnail_bytes(data))
        assert image.mode == "RGB" and max(image.size) == THUMB_PX_MAX


def test_small_images_are_not_enlarged() -> None:
    assert _decoded(thumbnail_bytes(_image("RGB", (40, 30), "PNG"))).size == (40, 30)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    thumb = thumbnail_bytes(_image("RGB", (640, 320), "JPEG", exif=exif.tobytes()))
    assert _decoded(thumb).size == (160, 320)


def test_not_images_truncated_and_empty_give_none() -> None:
    jpeg = _image("RGB", (800, 600), "JPEG")
    for junk in (b"", b"hello world", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, jpeg[: len(jpeg) // 3]):
        assert thumbnail_bytes(junk) is None


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_without_decoding() -> None:
    assert thumbnail_bytes(_png_header_only(100_000, 100_000)) is None
    assert thumbnail_bytes(_png_header_only(20_000, 20_000)) is None  # 400 Mpx: over the limit


def test_from_file(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_image("RGB", (1000, 1000), "JPEG"))
    assert _decoded(thumbnail_of_file(path)).size == (THUMB_PX_MAX, THUMB_PX_MAX)
    assert thumbnail_of_file(tmp_path / "missing.jpg") is None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = thumbnail_bytes(data)
    assert result is None or _decoded(result).format == "JPEG"


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000))
def test_any_size_fits_the_bound(width: int, height: int) -> None:
    image = _decoded(thumbnail_bytes(_image("RGB", (width, height), "PNG")))
    assert max(image.size) <= THUMB_PX_MAX and min(image.size) >= 1
