"""Previews: a video's poster frame and short faststart clip, an image's thumbnail; junk gives none."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mesh.content.previews import (
    NO_PREVIEWS, PREVIEW_HEIGHT_MAX, PREVIEW_S_MAX, THUMB_PX_MAX, make_previews,
)

AUDIO_RATE = 48_000
AUDIO_FRAME = 1024


def _pattern(width: int, height: int, index: int) -> Image.Image:
    """A test card with a box that moves each frame (so the encoder has something to do)."""
    image = Image.new("RGB", (width, height), (20, 40 + index % 200, 90))
    draw = ImageDraw.Draw(image)
    x = (index * 8) % max(1, width - width // 5)
    draw.rectangle([x, height // 4, x + width // 5, height // 2], fill=(240, 200, 10))
    return image


def _tone(index: int) -> bytes:
    """One frame of a 440 Hz stereo tone, s16 interleaved."""
    samples = []
    for n in range(AUDIO_FRAME):
        value = int(8000 * math.sin(2 * math.pi * 440 * (index * AUDIO_FRAME + n) / AUDIO_RATE))
        samples += [value, value]
    return struct.pack(f"<{len(samples)}h", *samples)


def synth_video(path: Path, seconds: float = 3, size: tuple[int, int] = (640, 360), fps: int = 25,
                audio: bool = True, faststart: bool = False) -> Path:
    """Write an H.264 MP4 test pattern (with an AAC tone when `audio`) with PyAV."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", container_options=options) as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo") if audio else None
        for index in range(int(seconds * fps)):
            out.mux(video.encode(av.VideoFrame.from_image(_pattern(*size, index))))
        out.mux(video.encode(None))
        for index in range(int(seconds * AUDIO_RATE / AUDIO_FRAME)) if sound else ():
            frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_FRAME)
            frame.planes[0].update(_tone(index))
            frame.rate, frame.pts = AUDIO_RATE, index * AUDIO_FRAME
            out.mux(sound.encode(frame))
        if sound:
            out.mux(sound.encode(None))
    return path


def top_level_boxes(data: bytes) -> list[str]:
    """The MP4 top-level box types in file order."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            break
        boxes.append(kind.decode("latin-1"))
        pos += size
    return boxes


def assert_poster(data: bytes, aspect: float) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and max(image.size) <= THUMB_PX_MAX
    assert abs(image.size[0] / image.size[1] - aspect) < 0.02


def assert_clip(data: bytes, audio: bool) -> float:
    """A faststart H.264 MP4 within the bounds; its duration in seconds."""
    boxes = top_level_boxes(data)
    assert "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"), boxes
    with av.open(io.BytesIO(data)) as clip:
        assert "mp4" in clip.format.name
        video = clip.streams.video[0]
        assert video.codec_context.name == "h264" and video.codec_context.height <= PREVIEW_HEIGHT_MAX
        assert video.codec_context.width % 2 == 0 and video.codec_context.height % 2 == 0
        assert bool(clip.streams.audio) == audio
        if audio:
            assert clip.streams.audio[0].codec_context.name == "aac"
        frames = sum(1 for _ in clip.decode(video=0))
        duration_s = clip.duration / 1_000_000
    assert frames >= 2 and duration_s <= PREVIEW_S_MAX
    return duration_s


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "sound": synth_video(root / "long-with-sound.mp4", seconds=5, audio=True),
        "silent": synth_video(root / "silent.mp4", seconds=3, audio=False),
        "portrait": synth_video(root / "portrait.mov", seconds=1, size=(180, 320), fps=30, audio=False),
        "small": synth_video(root / "small.mp4", seconds=1, size=(160, 90), fps=10, audio=True, faststart=True),
    }


def test_video_with_sound_gets_a_poster_and_a_short_faststart_clip(videos) -> None:
    previews = make_previews(videos["sound"], "video/mp4")
    assert_poster(previews.thumbnail, 640 / 360)
    assert Image.open(io.BytesIO(previews.thumbnail)).size == (320, 180)
    assert PREVIEW_S_MAX - 0.2 <= assert_clip(previews.preview, audio=True)  # cut at the window, not the end


def test_silent_video_gets_a_silent_clip_of_its_whole_length(videos) -> None:
    previews = make_previews(videos["silent"], "video/mp4")
    assert_poster(previews.thumbnail, 640 / 360)
    assert 2.8 <= assert_clip(previews.preview, audio=False) <= 3.05


def test_portrait_video_keeps_its_aspect(videos) -> None:
    previews = make_previews(videos["portrait"], "video/quicktime")
    assert_poster(previews.thumbnail, 180 / 320)
    assert_clip(previews.preview, audio=False)


def test_images_get_a_thumbnail_and_no_clip(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (1000, 500), (200, 10, 10)).save(path)
    previews = make_previews(path, "image/png")
    assert Image.open(io.BytesIO(previews.thumbnail)).size == (THUMB_PX_MAX, 160)
    assert previews.preview is None


def test_junk_truncated_empty_and_playlists_give_nothing(tmp_path: Path, videos) -> None:
    whole = videos["silent"].read_bytes()  # moov at the end: a truncated copy has no index
    cases = {
        "empty.mp4": b"",
        "junk.mp4": bytes(range(256)) * 40,
        "notes.mp4": b"just some text, not a video\n" * 20,
        "truncated.mp4": whole[: len(whole) // 2],
        "playlist.mp4": f"ffconcat version 1.0\nfile {videos['silent']}\n".encode(),
        "hls.mp4": b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert make_previews(tmp_path / name, "video/mp4") == NO_PREVIEWS, name
    assert make_previews(tmp_path / "missing.mp4", "video/mp4") == NO_PREVIEWS
    assert make_previews(videos["silent"], "application/octet-stream") == NO_PREVIEWS
    assert make_previews(tmp_path / "notes.mp4", "text/plain") == NO_PREVIEWS


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.mp4"
    path.write_bytes(data)
    previews = make_previews(path, "video/mp4")
    if previews.thumbnail is not None:
        assert Image.open(io.BytesIO(previews.thumbnail)).format == "JPEG"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=40))
def test_damaged_videos_never_raise_and_what_they_give_is_sound(tmp_path: Path, videos, damage) -> None:
    data = bytearray(videos["small"].read_bytes())
    for where, value in damage:
        data[int(where * len(data))] = value
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    previews = make_previews(path, "video/mp4")
    if previews.thumbnail is not None:
        assert Image.open(io.BytesIO(previews.thumbnail)).format == "JPEG"
    if previews.preview is not None:
        assert top_level_boxes(previews.preview).index("moov") < top_level_boxes(previews.preview).index("mdat")
