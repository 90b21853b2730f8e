"""A synthetic camera: a moving pattern with a burnt-in clock and a 440 Hz tone, pushed like a camera.

The clock is machine-readable so tests and benchmarks can measure glass-to-phone latency from any
decoded frame. It is a band of `_CLOCK_ROWS` x `_CLOCK_COLS` big black/white blocks across the top of
the picture: 42 bits of the capture wall-clock time in milliseconds since the epoch (plain binary,
most significant bit first, good until 2109) followed by 6 check bits (bit k is the parity of data
bits i with i % 6 == k). Blocks are an eighteenth of the frame wide, so H.264 at any sane bitrate keeps
them; `read_clock` samples the middle of each block and rejects a frame whose check bits disagree.
The same time is printed below the band in digits for humans.
"""

from __future__ import annotations

import array
import json
import math
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from io import BytesIO

import av
from PIL import Image, ImageDraw, ImageFont, ImageStat

_CLOCK_DATA_BITS = 42
_CLOCK_CHECK_BITS = 6
_CLOCK_ROWS = 3
_CLOCK_COLS = (_CLOCK_DATA_BITS + _CLOCK_CHECK_BITS) // _CLOCK_ROWS  # 16
_CLOCK_MARGIN_COLS = 2  # one empty block column each side, so the band never touches the edge
_TONE_HZ = 440
_AUDIO_RATE_HZ = 48_000
_AUDIO_FRAME_SAMPLES = 1024
_TONE_AMPLITUDE = 0.3
_CONNECT_RETRY_S = 0.1
_SINK_TIMES_MAX = 10_000


# --- the clock code ---------------------------------------------------------------------------------


def clock_bits(ms: int) -> list[int]:
    """The 48 bits drawn for wall-clock time `ms` (milliseconds since the epoch)."""
    data = [(ms >> (_CLOCK_DATA_BITS - 1 - i)) & 1 for i in range(_CLOCK_DATA_BITS)]
    check = [sum(data[k::_CLOCK_CHECK_BITS]) & 1 for k in range(_CLOCK_CHECK_BITS)]
    return data + check


def clock_from_bits(bits: list[int]) -> int | None:
    """The time in milliseconds that `bits` encode, or None when the check bits disagree."""
    data, check = bits[:_CLOCK_DATA_BITS], bits[_CLOCK_DATA_BITS:]
    if [sum(data[k::_CLOCK_CHECK_BITS]) & 1 for k in range(_CLOCK_CHECK_BITS)] != check:
        return None
    return int("".join(map(str, data)), 2)


def _block_boxes(size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Pixel boxes of the clock's blocks, row by row, for a frame of `size`."""
    width, height = size
    block_w = width // (_CLOCK_COLS + _CLOCK_MARGIN_COLS)
    block_h = max(8, height // 16)
    left = (width - block_w * _CLOCK_COLS) // 2
    top = block_h // 2
    return [
        (left + c * block_w, top + r * block_h, left + (c + 1) * block_w, top + (r + 1) * block_h)
        for r in range(_CLOCK_ROWS)
        for c in range(_CLOCK_COLS)
    ]


def _band_bottom(size: tuple[int, int]) -> int:
    return _block_boxes(size)[-1][3]


def draw_clock(image: Image.Image, ms: int) -> None:
    """Burn wall-clock time `ms` into `image` (RGB) as blocks plus human-readable digits."""
    draw = ImageDraw.Draw(image)
    boxes = _block_boxes(image.size)
    band = (boxes[0][0] - 4, boxes[0][1] - 4, boxes[-1][2] + 4, boxes[-1][3] + 4)
    draw.rectangle(band, fill=(128, 128, 128))
    for box, bit in zip(boxes, clock_bits(ms)):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255) if bit else (0, 0, 0))
    text = time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d} UTC"
    y = _band_bottom(image.size) + 8
    draw.rectangle((0, y - 2, image.size[0], y + _font(image.size).size + 4), fill=(0, 0, 0))
    draw.text((8, y), text, fill=(255, 255, 0), font=_font(image.size))


_FONTS: dict[int, ImageFont.ImageFont] = {}


def _font(size: tuple[int, int]):
    points = max(10, size[1] // 14)
    if points not in _FONTS:
        _FONTS[points] = ImageFont.load_default(size=points)
    return _FONTS[points]


def read_clock_image(image: Image.Image) -> float | None:
    """The burnt-in wall-clock time of one picture, in seconds, or None if it carries none."""
    gray = image.convert("L")
    bits = []
    for x0, y0, x1, y1 in _block_boxes(gray.size):
        dx, dy = (x1 - x0) // 4, (y1 - y0) // 4
        mean = ImageStat.Stat(gray.crop((x0 + dx, y0 + dy, x1 - dx, y1 - dy))).mean[0]
        bits.append(1 if mean >= 128 else 0)
    ms = clock_from_bits(bits)
    return None if ms is None else ms / 1000


def read_clock(segment: bytes) -> float | None:
    """The burnt-in wall-clock time (seconds) of the first video frame of a TS segment, or None."""
    try:
        with av.open(BytesIO(segment), "r", format="mpegts") as container:
            if not container.streams.video:
                return None
            for frame in container.decode(video=0):
                return read_clock_image(frame.to_image())
    except av.FFmpegError:
        return None
    return None


# --- the picture and the tone -----------------------------------------------------------------------


def pattern_picture(size: tuple[int, int], t_s: float, ms: int) -> Image.Image:
    """One frame of the pattern at media time `t_s`: colour bars, a sweeping bar, the clock."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    bars = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192)]
    bar_w = math.ceil(width / len(bars))
    for i, colour in enumerate(bars):
        draw.rectangle((i * bar_w, 0, (i + 1) * bar_w, height), fill=colour)
    sweep_x = int((t_s * width / 4) % width)
    draw.rectangle((sweep_x, height * 2 // 3, sweep_x + width // 10, height), fill=(255, 255, 255))
    draw_clock(image, ms)
    return image


# One second of the tone is a whole number of cycles; two seconds let any frame be one slice.
_TONE_TABLE = array.array(
    "f", (_TONE_AMPLITUDE * math.sin(2 * math.pi * _TONE_HZ * i / _AUDIO_RATE_HZ) for i in range(_AUDIO_RATE_HZ))
) * 2


def tone_frame(first_sample: int):
    """`_AUDIO_FRAME_SAMPLES` of the 440 Hz tone (stereo, float planar) starting at `first_sample`."""
    start = first_sample % _AUDIO_RATE_HZ
    samples = _TONE_TABLE[start : start + _AUDIO_FRAME_SAMPLES].tobytes()
    frame = av.AudioFrame(format="fltp", layout="stereo", samples=_AUDIO_FRAME_SAMPLES)
    for plane in frame.planes:
        plane.update(samples)
    frame.sample_rate = _AUDIO_RATE_HZ
    frame.pts = first_sample
    frame.time_base = Fraction(1, _AUDIO_RATE_HZ)
    return frame


# --- pushing ------------------------------------------------------------------------------------------


_VIDEO_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
_AUDIO_ENCODERS = {"mp3": "libmp3lame"}


@dataclass(frozen=True)
class _Camera:
    """What the synthetic camera sends."""

    fps: int  # frames per second
    size: tuple[int, int]  # picture width, height
    codec: str  # video codec name
    audio_codec: str  # audio codec name
    keyframe_interval_s: float  # a keyframe this often
    bit_rate: int  # video bits per second
    realtime: bool  # frames at their wall time (else as fast as possible)
    constant_rate: bool = False  # H.264 at exactly bit_rate (CBR with filler), as a camera set to a fixed rate


def push_test_stream(
    url: str,
    seconds: float,
    *,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    stop: threading.Event | None = None,
    realtime: bool = True,
    codec: str = "h264",
    audio_codec: str = "aac",
    keyframe_interval_s: float = 1.0,
    bit_rate: int = 600_000,
    connect_timeout_s: float = 10.0,
    constant_rate: bool = False,
) -> None:
    """Encode `seconds` of the test pattern and tone and push it to `url` (RTMP) or write it to a file.

    `codec` is the video codec ("h264", or e.g. "mpeg4", "flv1", "hevc" to exercise a transcode);
    RTMP carries FLV, so it takes h264, flv1 and hevc, a file takes what its extension's format takes.
    A keyframe comes every `keyframe_interval_s`. With `realtime`, frames are produced at their wall
    time, as a camera would; otherwise as fast as possible, the clock then reading the time each
    frame would have been captured. `constant_rate` makes H.264 fill `bit_rate` exactly (the
    test pattern compresses far below it otherwise). An RTMP push retries a refused connection for `connect_timeout_s`
    (the listener may still be starting). Returns early when `stop` is set.

    PyAV holds the GIL while it connects an output: push from another process (`spawn_test_stream`)
    when the RTMP listener is in this one.
    """
    camera = _Camera(fps, size, codec, audio_codec, keyframe_interval_s, bit_rate, realtime, constant_rate)
    stop = stop or threading.Event()
    container = _open_output(url, stop, connect_timeout_s)
    try:
        _push(container, camera, seconds, stop)
    finally:
        container.close()


def _open_output(url: str, stop: threading.Event, connect_timeout_s: float):
    if not url.startswith(("rtmp://", "rtmps://")):
        return av.open(url, "w")
    deadline = time.monotonic() + connect_timeout_s
    while True:
        try:
            return av.open(url, "w", format="flv")
        except ConnectionRefusedError:
            if time.monotonic() >= deadline or stop.wait(_CONNECT_RETRY_S):
                raise


def _add_streams(container, camera: _Camera):
    video = container.add_stream(_VIDEO_ENCODERS.get(camera.codec, camera.codec), rate=camera.fps)
    video.width, video.height = camera.size
    video.pix_fmt = "yuv420p"
    video.bit_rate = camera.bit_rate
    video.codec_context.gop_size = max(1, round(camera.keyframe_interval_s * camera.fps))
    if camera.codec == "h264":
        options = {"preset": "veryfast", "tune": "zerolatency", "sc_threshold": "0"}
        if camera.constant_rate:
            rate = str(camera.bit_rate)
            options.update({"x264-params": "nal-hrd=cbr:force-cfr=1", "minrate": rate, "maxrate": rate,
                            "bufsize": str(camera.bit_rate // 2)})
        video.codec_context.options = options
    audio = container.add_stream(_AUDIO_ENCODERS.get(camera.audio_codec, camera.audio_codec), rate=_AUDIO_RATE_HZ)
    audio.layout = "stereo"
    audio.bit_rate = 96_000
    return video, audio


def _push(container, camera: _Camera, seconds: float, stop: threading.Event) -> None:
    video, audio = _add_streams(container, camera)
    start_wall_s, start_mono_s = time.time(), time.monotonic()
    next_sample = 0
    for index in range(round(seconds * camera.fps)):
        t_s = index / camera.fps
        if camera.realtime and stop.wait(max(0.0, start_mono_s + t_s - time.monotonic())):
            break
        if stop.is_set():
            break
        ms = round((time.time() if camera.realtime else start_wall_s + t_s) * 1000)
        container.mux(video.encode(_video_frame(camera.size, t_s, ms, index, camera.fps)))
        while next_sample < (t_s + 1 / camera.fps) * _AUDIO_RATE_HZ:
            container.mux(audio.encode(tone_frame(next_sample)))
            next_sample += _AUDIO_FRAME_SAMPLES
    container.mux(video.encode(None))
    container.mux(audio.encode(None))


def _video_frame(size, t_s: float, ms: int, index: int, fps: int):
    frame = av.VideoFrame.from_image(pattern_picture(size, t_s, ms)).reformat(format="yuv420p")
    frame.pts = index
    frame.time_base = Fraction(1, fps)
    return frame


def spawn_test_stream(url: str, seconds: float, **options) -> subprocess.Popen:
    """`push_test_stream` in a child process, as a real camera is another device.

    PyAV keeps the GIL while it connects an output, and FFmpeg's RTMP listener needs the GIL for its
    timeout callback: a pusher and a listener in one process can deadlock on the handshake.
    """
    argv = [sys.executable, "-m", "mesh.testing.livestream", json.dumps({"url": url, "seconds": seconds, **options})]
    return subprocess.Popen(argv, stderr=subprocess.PIPE)


def _main(argv: list[str]) -> int:
    options = json.loads(argv[1])
    if "size" in options:
        options["size"] = tuple(options["size"])
    push_test_stream(options.pop("url"), options.pop("seconds"), **options)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))


class RtmpSink:
    """A local RTMP server (FFmpeg listening on a loopback URL) that counts the frames it receives.

    It takes one publisher at a time and listens again when that one leaves, until `close()`;
    `close()` also drops the current publisher, as a crashed server would.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections = 0  # publishers accepted so far
        self.video_packets = 0  # video packets received, all connections together
        self.codecs: list[str] = []  # the last publisher's stream codecs
        self.video_times_s: deque[float] = deque(maxlen=_SINK_TIMES_MAX)  # dts of the latest video packets
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rtmp-sink", daemon=True)

    def start(self) -> "RtmpSink":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5.0)

    def wait_video_packets(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.video_packets < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.video_packets >= count

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                container = av.open(self.url, format="flv", options={"listen": "1", "timeout": "1"}, timeout=(10, 10))
            except (TimeoutError, av.FFmpegError, OSError):
                continue
            self.connections += 1
            self.video_times_s.clear()
            try:
                self._receive(container)
            finally:
                container.close()

    def _receive(self, container) -> None:
        self.codecs = [s.codec_context.name for s in container.streams]
        try:
            for packet in container.demux():
                if self._closed.is_set():
                    return
                if packet.dts is not None and packet.stream.type == "video":
                    self.video_packets += 1
                    self.video_times_s.append(float(packet.dts * packet.time_base))
        except (av.FFmpegError, OSError):
            return
