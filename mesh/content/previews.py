"""Previews of media files: a thumbnail (JPEG) and, for a video, a short preview clip (MP4).

An image's thumbnail is the image scaled down (`mesh.content.thumbs`). A video gets both from one
pass over its first seconds with PyAV (FFmpeg bundled; no system ffmpeg): the poster frame is the
frame about `POSTER_AT_S` in (`POSTER_DURATION_SHARE` of a shorter video; the first frame when the
duration is unknown), and the clip is the first `PREVIEW_S_MAX` seconds re-encoded small (H.264 and
AAC, or silent) with its index first (`+faststart`), so a browser starts playing it at once.

The input is untrusted (any file a user adds, any camera): FFmpeg may open only local files with
the demuxers of `VIDEO_FORMATS` (a playlist named .mp4 fetches nothing); a stream over
`SOURCE_PIXELS_MAX`, more than `PACKETS_MAX` packets or `DEMUX_BYTES_MAX` bytes demuxed,
`FRAMES_DECODED_MAX` frames decoded or `WALL_S_MAX` seconds spent end the pass; anything FFmpeg
cannot read yields no previews, never an exception. A clip over `PREVIEW_BYTES_MAX` is not kept.
PyAV is imported only when a video is previewed (`mesh add` and `mesh cat` start fast).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.content.thumbs import THUMB_PX_MAX, thumbnail_of_file, thumbnail_of_image

PREVIEW_S_MAX = 4.0  # seconds of the video the clip shows (from the start)
PREVIEW_HEIGHT_MAX = 360  # clip height, pixels
PREVIEW_WIDTH_MAX = 640  # clip width, pixels (ultra-wide videos)
PREVIEW_FPS_MAX = 30  # clip frame rate; faster sources drop frames
PREVIEW_FPS_DEFAULT = 25  # when the source does not say
PREVIEW_BYTES_MAX = 4 * 1024 * 1024  # a larger clip is not kept
PREVIEW_FRAMES_MIN = 2  # fewer frames is a still, not a clip
PREVIEW_CRF = 30  # x264 constant rate factor (higher: smaller)
PREVIEW_MAXRATE = "1M"  # x264 bitrate ceiling, bits per second (noise and confetti stay small)
AUDIO_BIT_RATE = 64_000  # AAC, bits per second (stereo; mono gets AUDIO_MONO_BIT_RATE)
AUDIO_MONO_BIT_RATE = 48_000
AUDIO_FRAME_SAMPLES = 1024  # AAC frame size
AUDIO_SLACK_S = 1.0  # past the window, audio lagging the video this long is given up
POSTER_AT_S = 1.0  # the poster frame is about this far in ...
POSTER_DURATION_SHARE = 0.1  # ... or this share of a shorter video
SOURCE_PIXELS_MAX = 36_000_000  # larger frames (8K is 35.4 Mpx) are refused undecoded
SOURCE_FPS_MAX = 1000  # a claimed rate above this is treated as unknown
PACKETS_MAX = 20_000  # demuxed packets per pass (video and audio)
DEMUX_BYTES_MAX = 256 * 1024 * 1024  # bytes of packets demuxed per pass
FRAMES_DECODED_MAX = 1_500  # decoded frames per pass (video and audio)
DECODE_ERRORS_MAX = 50  # packets that fail to decode before the pass gives up
WALL_S_MAX = 30.0  # seconds one pass may take
DECODE_THREADS = 2  # decoder threads (the boxes have 2 cores)
VIDEO_FORMATS = "mov,matroska,avi,mpegts,mpeg,flv,asf,ogg,mxf,dv,h264,hevc,m4v,ivf,nut"  # demuxers allowed


@dataclass(frozen=True)
class Previews:
    """What `make_previews` made of one file (each part None when it could not be made)."""

    thumbnail: bytes | None  # JPEG, at most THUMB_PX_MAX px per side: the image, or a video's poster frame
    preview: bytes | None  # MP4 (H.264 + AAC, or silent), <= PREVIEW_S_MAX s, <= PREVIEW_HEIGHT_MAX px tall, faststart


NO_PREVIEWS = Previews(None, None)


def make_previews(path: Path, media_type: str) -> Previews:
    """The thumbnail (images, videos) and preview clip (videos) of a file; never raises on junk."""
    if media_type.startswith("image/"):
        return Previews(thumbnail_of_file(Path(path)), None)
    if media_type.startswith("video/"):
        return video_previews(Path(path))
    return NO_PREVIEWS


def video_previews(path: Path) -> Previews:
    """Poster frame and preview clip of a video file; NO_PREVIEWS if it is not a sane video."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency
        return NO_PREVIEWS
    import tempfile  # with fractions, ~10 ms that `mesh add` of a photo does not pay

    try:
        with tempfile.TemporaryDirectory(prefix="mesh-preview-") as tmp:
            return _previews(av, Path(path), Path(tmp) / "preview.mp4")
    except Exception:  # noqa: BLE001 - the trust boundary: FFmpeg and PyAV raise many kinds on junk
        return NO_PREVIEWS


def _previews(av, path: Path, clip_path: Path) -> Previews:
    options = {"protocol_whitelist": "file", "format_whitelist": VIDEO_FORMATS}
    with av.open("file:" + str(path.absolute()), container_options=options, metadata_errors="ignore") as source:
        plan = _plan(source)
        if plan is None:
            return NO_PREVIEWS
        run = _Pass(av, plan, clip_path)
        run.run(source)
    thumbnail = thumbnail_of_image(run.poster) if run.poster is not None else None
    return Previews(thumbnail, _read_clip(clip_path) if run.clip_ok else None)


# --- what to do -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The streams of one video and the times that matter."""

    video: Any  # the video stream (av.VideoStream)
    audio: Any | None  # the audio stream copied into the clip, if any
    start_s: float  # the container's start time: frame times count from it
    poster_at_s: float  # the first frame at or after this time is the poster
    fps: int  # frame rate of the clip


def _plan(source) -> _Plan | None:
    """What one pass does, or None for a file without a sane video stream."""
    if not source.streams.video:
        return None
    video = source.streams.video[0]
    width, height = video.codec_context.width, video.codec_context.height
    if width < 0 or height < 0 or width * height > SOURCE_PIXELS_MAX:
        return None
    duration_s = _duration_s(source, video)
    if duration_s is not None and duration_s <= 0:
        return None
    video.thread_type = "AUTO"
    video.thread_count = DECODE_THREADS
    audio = source.streams.audio[0] if source.streams.audio else None
    start_s = source.start_time / 1_000_000 if source.start_time is not None else 0.0
    poster_at_s = 0.0 if duration_s is None else min(POSTER_AT_S, duration_s * POSTER_DURATION_SHARE)
    return _Plan(video, audio, start_s, poster_at_s, _clip_fps(video))


def _duration_s(source, video) -> float | None:
    if source.duration is not None:
        return source.duration / 1_000_000
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    return None


def _clip_fps(video) -> int:
    rate = video.average_rate or video.base_rate
    if not rate or not 0 < float(rate) <= SOURCE_FPS_MAX:
        return PREVIEW_FPS_DEFAULT
    return max(1, min(PREVIEW_FPS_MAX, round(float(rate))))


@dataclass(frozen=True)
class _Geometry:
    """How decoded frames become the poster and the clip's frames."""

    rotation: int  # degrees counterclockwise to display the frame (0, 90, -90, 180)
    clip: tuple[int, int]  # clip width and height as displayed (even)
    poster: tuple[int, int]  # poster width and height as displayed


def _geometry(frame, stream) -> _Geometry | None:
    """None for frames too large or empty."""
    width, height = frame.width, frame.height
    if width <= 0 or height <= 0 or width * height > SOURCE_PIXELS_MAX:
        return None
    sar = stream.codec_context.sample_aspect_ratio
    display_w = width * (float(sar) if sar and 0.1 <= float(sar) <= 10 else 1.0)
    rotation = _right_angle(getattr(frame, "rotation", 0) or 0)
    shown = (height, display_w) if rotation in (90, -90) else (display_w, height)
    clip = _fit(shown, PREVIEW_WIDTH_MAX, PREVIEW_HEIGHT_MAX, even=True)
    return _Geometry(rotation, clip, _fit(shown, THUMB_PX_MAX, THUMB_PX_MAX, even=False))


def _right_angle(degrees: float) -> int:
    """The nearest of 0, 90, -90, 180 (display matrices of cameras and phones are right angles)."""
    return min((0, 90, -90, 180), key=lambda a: min(abs(degrees - a), abs(degrees - a - 360), abs(degrees - a + 360)))


def _fit(size: tuple[float, float], width_max: int, height_max: int, even: bool) -> tuple[int, int]:
    """`size` scaled down (never up) to fit the box, keeping its aspect."""
    scale = min(1.0, width_max / size[0], height_max / size[1])
    step = 2 if even else 1
    return tuple(max(step, int(round(side * scale / step)) * step) for side in size)  # type: ignore[return-value]


# --- the pass -------------------------------------------------------------------------------------


class _Budget:
    """The bounds of one pass: packets, bytes, frames, decode errors, wall time."""

    def __init__(self) -> None:
        self.packets = self.bytes = self.frames = self.errors = 0
        self.deadline = time.monotonic() + WALL_S_MAX

    def exhausted(self) -> bool:
        return (self.packets > PACKETS_MAX or self.bytes > DEMUX_BYTES_MAX or self.frames > FRAMES_DECODED_MAX
                or self.errors > DECODE_ERRORS_MAX or time.monotonic() > self.deadline)


class _Pass:
    """One decode of a video's first seconds: catches the poster, writes the clip."""

    def __init__(self, av, plan: _Plan, clip_path: Path) -> None:
        self.av, self.plan, self.clip_path = av, plan, clip_path
        self.poster = None  # a Pillow image, once caught
        self.clip: _Clip | None = None
        self.clip_ok = False  # the clip was written whole
        self.clip_failed = False  # the clip was given up (too large, an encoder error)
        self.refused = False  # the frames are absurd: stop
        self.geometry: _Geometry | None = None
        self.last_frame = None  # the poster of a video shorter than it claimed
        self.video_t = -1.0  # time of the latest video frame seen
        self.audio_done = plan.audio is None
        self.budget = _Budget()

    def run(self, source) -> None:
        try:
            self._demux(source)
        except self.av.FFmpegError:  # damaged past its start: keep what was decoded
            pass
        self._finish()

    def _demux(self, source) -> None:
        streams = [s for s in (self.plan.video, self.plan.audio) if s is not None]
        for packet in source.demux(*streams):
            self.budget.packets += 1
            self.budget.bytes += packet.size
            for frame in self._decode(packet):
                self._frame(frame)
            if self._done() or self.refused or self.budget.exhausted():
                return

    def _decode(self, packet) -> list:
        try:
            frames = packet.decode()
        except self.av.FFmpegError:
            self.budget.errors += 1
            return []
        self.budget.frames += len(frames)
        return frames

    def _done(self) -> bool:
        video_done = self.poster is not None and self.video_t >= PREVIEW_S_MAX
        return video_done and (self.audio_done or self.video_t >= PREVIEW_S_MAX + AUDIO_SLACK_S)

    def _frame(self, frame) -> None:
        t = (frame.time if frame.time is not None else 0.0) - self.plan.start_s
        if isinstance(frame, self.av.AudioFrame):
            self._audio(frame, t)
        else:
            self._video(frame, t)

    def _video(self, frame, t: float) -> None:
        if self.geometry is None:
            self.geometry = _geometry(frame, self.plan.video)
            if self.geometry is None:
                self.refused = True
                return
        self.video_t = max(self.video_t, t)
        self.last_frame = frame
        if self.poster is None and t >= self.plan.poster_at_s - 0.5 / self.plan.fps:
            self.poster = _image(frame, self.geometry, self.geometry.poster)
        if t < PREVIEW_S_MAX:
            self._clip_step(lambda clip: clip.add_video(frame, t))

    def _audio(self, frame, t: float) -> None:
        if t >= PREVIEW_S_MAX:
            self.audio_done = True
        elif self.clip is not None and not self.audio_done:  # audio before the first video frame is dropped
            self._clip_step(lambda clip: self._audio_into(clip, frame, t))

    def _audio_into(self, clip: _Clip, frame, t: float) -> None:
        if not clip.add_audio(frame, t):
            self.audio_done = True

    def _clip_step(self, step) -> None:
        """Run `step` on the clip (opened on first use); an encoder failure gives the clip up."""
        if self.clip_failed:
            return
        try:
            if self.clip is None:
                self.clip = _Clip(self.av, self.clip_path, self.geometry, self.plan)
            step(self.clip)
        except Exception:  # noqa: BLE001 - too large, or an encoder refusing odd input: no clip
            self._abandon_clip()

    def _finish(self) -> None:
        if self.poster is None and self.last_frame is not None:
            self.poster = _image(self.last_frame, self.geometry, self.geometry.poster)
        if self.clip is None or self.clip_failed:
            return
        try:
            self.clip_ok = self.clip.close()
        except Exception:  # noqa: BLE001 - as in _clip_step
            self._abandon_clip()

    def _abandon_clip(self) -> None:
        self.clip_failed = True
        self.clip_ok = False
        if self.clip is not None:
            self.clip.abandon()


def _image(frame, geometry: _Geometry, shown: tuple[int, int]):
    """A Pillow image of `frame` at `shown` size, turned upright."""
    coded = (shown[1], shown[0]) if geometry.rotation in (90, -90) else shown
    image = frame.to_image(width=coded[0], height=coded[1])
    return image.rotate(geometry.rotation, expand=True) if geometry.rotation else image


class _Clip:
    """The preview MP4 being written: H.264 (yuv420p) and, if the source has sound, AAC."""

    def __init__(self, av, path: Path, geometry: _Geometry, plan: _Plan) -> None:
        from fractions import Fraction

        self.av, self.geometry, self.fps = av, geometry, plan.fps
        self.out = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        self.video = self.out.add_stream("libx264", rate=self.fps, options={
            "crf": str(PREVIEW_CRF), "preset": "veryfast", "maxrate": PREVIEW_MAXRATE, "bufsize": "2M",
            "threads": str(DECODE_THREADS),
        })
        self.video.width, self.video.height = geometry.clip
        self.video.pix_fmt = "yuv420p"
        self.time_base = Fraction(1, self.fps)
        self.video.codec_context.time_base = self.time_base
        self.audio, self.resampler = self._audio_stream(plan.audio)
        self.audio_time_base = Fraction(1, self.audio.codec_context.sample_rate) if self.audio else None
        self.next_slot = 0  # the next frame slot (1/fps) the clip may fill
        self.frames = 0
        self.audio_samples_max = 0
        self.audio_pts: int | None = None
        self.bytes = 0

    def _audio_stream(self, source_audio):
        if source_audio is None:
            return None, None
        layout = "mono" if source_audio.codec_context.layout.nb_channels == 1 else "stereo"
        rate = 44_100 if source_audio.codec_context.sample_rate == 44_100 else 48_000
        stream = self.out.add_stream("aac", rate=rate, layout=layout)
        stream.bit_rate = AUDIO_MONO_BIT_RATE if layout == "mono" else AUDIO_BIT_RATE
        resampler = self.av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=AUDIO_FRAME_SAMPLES)
        return stream, resampler

    def add_video(self, frame, t: float) -> None:
        slot = max(0, int(round(t * self.fps)))
        if slot < self.next_slot or slot >= PREVIEW_S_MAX * self.fps:
            return
        out = self._clip_frame(frame)
        out.pts, out.time_base = slot, self.time_base
        self.next_slot = slot + 1
        self.frames += 1
        self._mux(self.video.encode(out))

    def _clip_frame(self, frame):
        width, height = self.geometry.clip
        if not self.geometry.rotation:
            return frame.reformat(width=width, height=height, format="yuv420p")
        return self.av.VideoFrame.from_image(_image(frame, self.geometry, self.geometry.clip))

    def add_audio(self, frame, t: float) -> bool:
        """Encode one decoded audio frame; False once the window is full."""
        if self.audio is None:
            return False
        rate = self.audio.codec_context.sample_rate
        if self.audio_pts is None:
            self.audio_pts = max(0, int(round(t * rate)))
            self.audio_samples_max = int(PREVIEW_S_MAX * rate)
        frame.pts = None  # the resampler counts samples itself
        for out in self.resampler.resample(frame):
            if self.audio_pts + out.samples > self.audio_samples_max:
                return False
            out.pts, out.time_base = self.audio_pts, self.audio_time_base
            self.audio_pts += out.samples
            self._mux(self.audio.encode(out))
        return True

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes += packet.size
            if self.bytes > PREVIEW_BYTES_MAX:
                raise _ClipTooLarge()
            self.out.mux(packet)

    def close(self) -> bool:
        """Flush the encoders and write the index; True if the clip is worth keeping."""
        self._mux(self.video.encode(None))
        if self.audio is not None:
            self._mux(self.audio.encode(None))
        self.out.close()
        return self.frames >= PREVIEW_FRAMES_MIN

    def abandon(self) -> None:
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - closing a half-written clip that is thrown away anyway
            pass


class _ClipTooLarge(Exception):
    """The clip outgrew PREVIEW_BYTES_MAX: it is not kept."""


def _read_clip(path: Path) -> bytes | None:
    try:
        if path.stat().st_size > PREVIEW_BYTES_MAX:
            return None
        return path.read_bytes()
    except OSError:
        return None
