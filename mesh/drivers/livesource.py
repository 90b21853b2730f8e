"""Live ingest: a camera's stream cut into independently decodable MPEG-TS segments (PyAV).

Theory of operation:

- A *source* is an RTMP push we listen for, an RTMP/other URL we pull, a local device (V4L2 video,
  optionally an ALSA audio device beside it) or a file played at its native speed as if it were live.
  Listening waits for one publisher at a time; when it goes away the next one continues the same
  stream (its first segment is flagged `discontinuity`), until `stop`.
- Each stream is *routed*: H.264 video and AAC audio are copied packet for packet (no re-encode);
  anything else is decoded and encoded to H.264 (the first of `H264_ENCODERS` this FFmpeg has) or AAC.
- Packets are placed on one output timeline (seconds from `TIMELINE_LEAD_S`, continuing across
  publishers), then *cut*: a segment opens at a video keyframe and closes at the first keyframe at or
  after `segment_s` of media. Each segment is muxed by a fresh MPEG-TS muxer into memory, so it
  starts with PAT/PMT and SPS/PPS and decodes alone.
- Every wait is bounded: listening re-arms every `LISTEN_POLL_S` so `stop` is seen within about a
  second; a connected source that sends nothing for `timeout_s` is dropped; a segment that grows
  past `segment_bytes_max` or `segment_s_max` (a camera that sends no keyframes) is an error.

FFmpeg notes (the bundled build of PyAV 18): RTMP and RTMPS work, both ways; SRT does not (FFmpeg is
built without libsrt), so `srt://` sources give a clear `LiveSourceError`. FFmpeg's RTMP listener
accepts any app and stream key: the key in a listen URL is not checked, so bind the interface the
camera is on, not one the public can reach.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

import av

from mesh.errors import MeshError

LISTEN_POLL_S = 1  # FFmpeg's RTMP listen timeout is whole seconds
LISTEN_HANDSHAKE_S_MAX = 10.0  # a connection that is not streaming by then is dropped (one at a time)
TIMELINE_LEAD_S = 1.0  # where the output timeline starts: room for B-frames and early audio
KEYFRAME_SLACK_S = 0.005  # timestamp rounding (1/1000 s FLV time base) tolerated when cutting
H264_ENCODERS = ("libx264", "libopenh264", "h264_v4l2m2m", "h264_vaapi", "h264_nvenc")
AAC_RATES_HZ = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
AUDIO_QUEUE_PACKETS_MAX = 256  # a side audio device's packets waiting for the video loop
SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"
LISTEN_HOSTS = {"", "0.0.0.0", "::", "localhost"}
_BIND_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}

log = logging.getLogger("mesh.live")


@dataclass(frozen=True)
class Segment:
    """One complete MPEG-TS media segment, ready to serve as an HLS segment."""

    seq: int  # 0, 1, 2, ... in cutting order; never reused within one run
    data: bytes  # PAT/PMT, then a keyframe first; H.264 video + AAC audio (if the source has audio)
    duration_s: float  # media time from this segment's first video frame to the next segment's
    pts_s: float  # presentation time of the first video frame on the output timeline
    discontinuity: bool = False  # a new publisher starts here: put EXT-X-DISCONTINUITY before it


class LiveSourceError(MeshError):
    """A live source cannot be opened or read; the message is one user-facing line."""


# --- what to open -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """How to open a source, and how to talk about it."""

    url: str  # what FFmpeg opens
    kind: str  # "listen" | "pull" | "device" | "file"
    format: str | None  # FFmpeg input format, None to probe
    options: dict[str, str]  # FFmpeg format/protocol options
    label: str  # the source for messages (an RTMP stream key left out)
    paced: bool  # read at the media's own speed (a file played as if live)


def _listen_by_default(host: str) -> bool:
    """Listen when HOST is a wildcard or loopback name, or an address this machine can bind."""
    if host in LISTEN_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a DNS name: a server to pull from
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))  # no packet is sent: bind only asks whether the address is ours
        except OSError:
            return False
    return True


def redact_url(url: str) -> str:
    """`url` fit for messages and logs: no stream key (the last path element), query or password."""
    parts = urlsplit(url)
    path = parts.path.rsplit("/", 1)[0] if parts.path.count("/") > 1 else parts.path
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{path}"


def _classify(source: str, listen: bool | None, input_format: str | None) -> _Input:
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme == "srt":
        raise LiveSourceError(f"{redact_url(source)}: SRT is not supported (this FFmpeg has no libsrt); push RTMP")
    if scheme in ("rtmp", "rtmps"):
        return _classify_rtmp(source, scheme, listen)
    if scheme:
        return _Input(source, "pull", input_format, {}, redact_url(source), False)
    if input_format is not None or source.startswith("/dev/"):
        fmt = input_format or "v4l2"
        options = {"timestamps": "abs"} if fmt in ("v4l2", "video4linux2") else {}
        return _Input(source, "device", fmt, options, source, fmt == "lavfi")
    return _Input(source, "file", None, {}, source, True)


def _classify_rtmp(source: str, scheme: str, listen: bool | None) -> _Input:
    host = urlsplit(source).hostname or ""
    if listen is None:
        listen = _listen_by_default(host)
    if listen and scheme == "rtmps":
        raise LiveSourceError(f"{redact_url(source)}: cannot listen for RTMPS; listen with rtmp://")
    if listen:
        options = {"listen": "1", "timeout": str(LISTEN_POLL_S), "rtmp_live": "live"}
        return _Input(source, "listen", "flv", options, redact_url(source), False)
    return _Input(source, "pull", "flv", {"rtmp_live": "live"}, redact_url(source), False)


# --- opening, with user-facing errors ---------------------------------------------------------------


def _open(inp: _Input, stop: threading.Event, timeout_s: float):
    """The opened container, or None when `stop` was set first (listening only)."""
    if inp.kind == "file" and not os.path.exists(inp.url):
        raise LiveSourceError(f"cannot open {inp.label}: no such file")
    if inp.kind == "device" and inp.format != "lavfi" and not os.path.exists(inp.url):
        raise LiveSourceError(f"cannot open {inp.label}: no such device")
    open_s = min(timeout_s, LISTEN_HANDSHAKE_S_MAX) if inp.kind == "listen" else timeout_s
    while not stop.is_set():
        try:
            return av.open(inp.url, format=inp.format, options=inp.options, timeout=(open_s, timeout_s))
        except (TimeoutError, av.ExitError):  # listening: nobody came, or a connection stayed silent
            if inp.kind != "listen":
                raise LiveSourceError(f"{inp.label}: no answer within {timeout_s:g} s") from None
        except (av.FFmpegError, OSError) as exc:
            if inp.kind != "listen" or getattr(exc, "errno", None) in _BIND_ERRNOS:
                raise LiveSourceError(_open_error_text(inp, exc)) from None
            # Someone connected and failed the RTMP handshake (a scanner, a wrong protocol):
            # the stream is not theirs to end.
            log.warning("live.publisher_failed source=%s reason=%s", inp.label, _reason(exc))
    return None


def _open_error_text(inp: _Input, exc: BaseException) -> str:
    """One line saying why `inp` did not open."""
    code = getattr(exc, "errno", None)
    if inp.kind == "listen":
        where = f"{urlsplit(inp.url).hostname}:{urlsplit(inp.url).port or 1935}"
        if code == errno.EADDRINUSE:
            return f"cannot listen on {where}: the port is in use"
        if code == errno.EADDRNOTAVAIL:
            return f"cannot listen on {where}: not an address of this machine"
        if code == errno.EACCES:
            return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
        return f"cannot listen on {where}: {_reason(exc)}"
    if code == errno.ECONNREFUSED:
        return f"{inp.label}: nothing is listening"
    if inp.kind == "device":
        return f"cannot open {inp.label}: {_device_reason(exc)}"
    if isinstance(exc, av.InvalidDataError):
        return f"cannot open {inp.label}: not a video this FFmpeg can read"
    return f"cannot open {inp.label}: {_reason(exc)}"


def _device_reason(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return "no such device"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (is this user in the 'video'/'audio' group?)"
    if code == errno.EBUSY:
        return "the device is busy (another program is using it)"
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0].lower() if text else type(exc).__name__


# --- routes: copy or transcode one stream -----------------------------------------------------------


@functools.cache
def h264_encoder() -> str | None:
    """The name of the first H.264 encoder this FFmpeg has that opens, or None (asked once)."""
    for name in H264_ENCODERS:
        try:
            context = av.CodecContext.create(name, "w")
            context.width, context.height, context.pix_fmt = 64, 64, "yuv420p"
            context.time_base = Fraction(1, 25)
            context.open()
        except (av.FFmpegError, ValueError, OSError):
            continue
        return name
    return None


class _CopyRoute:
    """Packets of an H.264 or AAC stream go through untouched."""

    def __init__(self, stream) -> None:
        self.template = stream  # a stream whose codec parameters the segment muxers copy

    def packets(self, packet) -> list:
        return [packet]

    def flush(self) -> list:
        return []


class _TranscodeRoute:
    """A route that decodes the camera's packets and encodes each frame (`_encode`) anew."""

    decoder = None  # the input stream's codec context

    def packets(self, packet) -> list:
        return self._encoded(packet)

    def _encoded(self, packet) -> list:
        """What `_encode` makes of the frames `packet` decodes to (None: the decoder's last ones)."""
        out = []
        for frame in self.decoder.decode(packet):
            out += self._encode(frame)
        return out

    def _encode(self, frame) -> list:
        raise NotImplementedError


class _VideoTranscodeRoute(_TranscodeRoute):
    """Decode video, encode H.264 with a keyframe every `keyframe_s` (so cuts land on time)."""

    def __init__(self, stream, keyframe_s: float, encoder: str) -> None:
        self.decoder = stream.codec_context
        self.rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        self.keyframe_s, self.encoder_name = keyframe_s, encoder
        self.template = None  # made at the first frame, when the picture size is known
        self._holder = None  # the output container that owns the encoder (never written to)
        self._next_keyframe_s = None

    def flush(self) -> list:
        out = self._encoded(None)
        if self.template is not None:
            out += list(self.template.encode(None))
        return out

    def _encode(self, frame) -> list:
        if not _has_time(frame):
            return []
        if self.template is None:
            self._open_encoder(frame)
        frame = frame.reformat(format="yuv420p", width=self.template.width, height=self.template.height)
        t_s = frame.time
        frame.pts, frame.time_base = round(t_s * 90000), Fraction(1, 90000)
        if self._next_keyframe_s is None or t_s >= self._next_keyframe_s - KEYFRAME_SLACK_S:
            frame.pict_type = av.video.frame.PictureType.I
            self._next_keyframe_s = t_s + self.keyframe_s
        else:
            frame.pict_type = av.video.frame.PictureType.NONE
        return list(self.template.encode(frame))

    def _open_encoder(self, frame) -> None:
        self._holder = av.open(BytesIO(), "w", format="mpegts")
        stream = self._holder.add_stream(self.encoder_name, rate=self.rate)
        stream.width, stream.height = frame.width - frame.width % 2, frame.height - frame.height % 2
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, 90000)
        stream.codec_context.time_base = Fraction(1, 90000)
        stream.codec_context.gop_size = max(1, round(self.keyframe_s * float(self.rate) * 4))
        if self.encoder_name == "libx264":
            stream.codec_context.options = {
                "preset": "veryfast", "tune": "zerolatency", "crf": "23", "forced-idr": "1", "sc_threshold": "0",
            }
        self._holder.start_encoding()  # opens the encoder and fills the stream's codec parameters
        self.template = stream


class _AudioTranscodeRoute(_TranscodeRoute):
    """Decode audio, encode AAC (same rate when AAC allows it, mono or stereo)."""

    def __init__(self, stream) -> None:
        self.decoder = stream.codec_context
        rate = stream.codec_context.sample_rate or 48000
        self.rate = rate if rate in AAC_RATES_HZ else 48000
        channels = stream.codec_context.channels or 2
        self.layout = "mono" if channels == 1 else "stereo"
        self._holder = av.open(BytesIO(), "w", format="mpegts")
        self.template = self._holder.add_stream("aac", rate=self.rate)
        self.template.layout = self.layout
        self.template.bit_rate = 128_000
        self._holder.start_encoding()
        frame_size = self.template.codec_context.frame_size or 1024
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate, frame_size=frame_size)
        self._next_pts = None  # in 1/rate; set from the first frame's time, then by sample count

    def flush(self) -> list:
        out = self._encoded(None)
        for frame in self._resampler.resample(None):
            out += self._encode_resampled(frame)
        return out + list(self.template.encode(None))

    def _encode(self, frame) -> list:
        if not _has_time(frame):
            return []
        start = round(frame.time * self.rate)
        if self._next_pts is None or abs(start - self._next_pts) > self.rate // 10:
            self._next_pts = start  # first frame, or a gap in the source: re-anchor on its clock
        frame.pts = None
        out = []
        for resampled in self._resampler.resample(frame):
            out += self._encode_resampled(resampled)
        return out

    def _encode_resampled(self, frame) -> list:
        frame.pts, frame.time_base = self._next_pts, Fraction(1, self.rate)
        self._next_pts += frame.samples
        return list(self.template.encode(frame))


def _has_time(frame) -> bool:
    t_s = frame.time
    return t_s is not None and not math.isnan(t_s)


def _codec_name(stream) -> str | None:
    """The codec's own name ("mp3", "flv1"), not its decoder's ("mp3float", "flv")."""
    return stream.codec_context.codec.canonical_name if stream.codec_context else None


def _route(stream, segment_s: float, encoder: str | None):
    name = _codec_name(stream)
    if stream.type == "video":
        if name == "h264":
            return _CopyRoute(stream)
        if encoder is None:
            raise LiveSourceError(f"the camera sends {name} video and this FFmpeg has no H.264 encoder")
        return _VideoTranscodeRoute(stream, segment_s, encoder)
    if name == "aac":
        return _CopyRoute(stream)
    return _AudioTranscodeRoute(stream)


# --- the timeline and the cutter --------------------------------------------------------------------


class _Timeline:
    """Moves one session's packets onto the output timeline (seconds), continuing after the last."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s  # where this session's first kept packet lands
        self.origin_s: float | None = None  # source time of that packet
        self.end_s = offset_s  # latest presentation end seen so far, output time

    def place(self, packet) -> None:
        tb = packet.time_base
        if packet.pts is None:
            packet.pts = packet.dts
        if self.origin_s is None:
            self.origin_s = float(packet.dts * tb)
        shift = round((self.offset_s - self.origin_s) / tb)
        packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
        self.end_s = max(self.end_s, float((packet.pts + (packet.duration or 0)) * tb))


class _SegmentMuxer:
    """One segment being written: a fresh MPEG-TS muxer into memory."""

    def __init__(self, templates: dict[str, Any], pts_s: float) -> None:
        self.buffer = BytesIO()
        self.container = av.open(self.buffer, "w", format="mpegts")
        self.streams = {kind: self.container.add_stream_from_template(t) for kind, t in templates.items()}
        self.pts_s = pts_s
        self.last_video_end_s = pts_s

    def write(self, kind: str, packet) -> None:
        packet.stream = self.streams[kind]
        if kind == "video":
            frame_s = float(packet.duration * packet.time_base) if packet.duration else 0.0
            self.last_video_end_s = max(self.last_video_end_s, float(packet.pts * packet.time_base) + frame_s)
        self.container.mux(packet)

    def size(self) -> int:
        return self.buffer.tell()

    def close(self) -> bytes:
        self.container.close()
        return self.buffer.getvalue()


@dataclass
class _Cutter:
    """Cuts placed packets into segments at keyframes; calls `on_segment` with each finished one."""

    on_segment: Callable[[Segment], None]
    segment_s: float
    segment_s_max: float
    segment_bytes_max: int
    seq: int = 0
    discontinuity: bool = False  # the next segment starts a new publisher
    routes: dict[str, Any] = field(default_factory=dict)  # "video"/"audio" -> this session's route
    current: _SegmentMuxer | None = None

    def feed(self, kind: str, packet) -> None:
        t_s = float(packet.pts * packet.time_base)
        if kind == "video" and packet.is_keyframe:
            if self.current is None or t_s - self.current.pts_s >= self.segment_s - KEYFRAME_SLACK_S:
                self._emit(end_s=t_s)
                templates = {k: r.template for k, r in self.routes.items() if r.template is not None}
                self.current = _SegmentMuxer(templates, t_s)
        if self.current is None:
            return  # nothing is kept before the first keyframe
        self.current.write(kind, packet)
        self._check_limits(t_s)

    def _check_limits(self, t_s: float) -> None:
        if t_s - self.current.pts_s > self.segment_s_max or self.current.size() > self.segment_bytes_max:
            raise LiveSourceError(
                f"the camera sent no keyframe for {self.segment_s_max:g} s; set its keyframe interval "
                f"(GOP) to {self.segment_s:g} s or less"
            )

    def finish(self) -> None:
        """End the session: the open segment goes out with the media it has."""
        self._emit(end_s=None)

    def abandon(self) -> None:
        """End the session on an error: the open segment is dropped."""
        if self.current is not None:
            self.current.container.close()
            self.current = None

    def _emit(self, end_s: float | None) -> None:
        if self.current is None:
            return
        segment, self.current = self.current, None
        end_s = end_s if end_s is not None else segment.last_video_end_s
        data = segment.close()
        self.on_segment(Segment(self.seq, data, round(end_s - segment.pts_s, 6), segment.pts_s, self.discontinuity))
        self.seq += 1
        self.discontinuity = False


# --- reading ----------------------------------------------------------------------------------------


class _Pacer:
    """Holds packets of a file back until their media time has come (stop-aware)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.start: tuple[float, float] | None = None  # (monotonic time, media time) of the first packet

    def wait(self, media_s: float) -> None:
        if self.start is None:
            self.start = (time.monotonic(), media_s)
        due = self.start[0] + (media_s - self.start[1])
        self.stop.wait(max(0.0, due - time.monotonic()))


class _SideAudio:
    """An audio device read in its own thread beside a video device; packets wait in a bounded queue."""

    def __init__(self, device: str, stop: threading.Event, timeout_s: float) -> None:
        fmt = "alsa" if not device.startswith("/") else None
        if fmt == "alsa" and os.path.exists(SYSTEM_ALSA_CONF):
            # PyAV's wheel bundles an alsa-lib that looks for its config under its build prefix;
            # without the system's, no "hw:N" name exists.
            os.environ.setdefault("ALSA_CONFIG_PATH", SYSTEM_ALSA_CONF)
        try:
            self.container = av.open(device, format=fmt, timeout=(timeout_s, timeout_s))
        except (av.FFmpegError, OSError) as exc:
            reason = "no such device, or it is busy" if fmt == "alsa" else _device_reason(exc)
            raise LiveSourceError(f"cannot open audio {device}: {reason}") from None
        if not self.container.streams.audio:
            self.container.close()
            raise LiveSourceError(f"cannot open audio {device}: it has no audio")
        self.stream = self.container.streams.audio[0]
        self.queue: queue.Queue = queue.Queue(AUDIO_QUEUE_PACKETS_MAX)
        self._done = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._read, name="live-audio", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for packet in self.container.demux(self.stream):
                if self._stop.is_set() or self._done.is_set():
                    break
                if packet.dts is not None:
                    try:
                        self.queue.put_nowait(packet)
                    except queue.Full:
                        pass  # the video loop stalled: drop audio rather than grow
        except (av.FFmpegError, OSError):
            pass  # the device went away: the stream goes on without sound

    def drain(self) -> Iterator:
        while True:
            try:
                yield self.queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2.0)
        self.container.close()


def _session(container, side_audio: _SideAudio | None, cutter: _Cutter, timeline: _Timeline,
             stop: threading.Event, inp: _Input, segment_s: float, encoder: str | None) -> None:
    """Read one opened source to its end (or `stop`), feeding the cutter."""
    if not container.streams.video:
        raise LiveSourceError("the camera sent no video")
    video = container.streams.video[0]
    kinds = {video.index: "video"}
    cutter.routes = {"video": _route(video, segment_s, encoder)}
    if side_audio is not None:
        cutter.routes["audio"] = _route(side_audio.stream, segment_s, encoder)
    elif container.streams.audio:
        audio = container.streams.audio[0]
        kinds[audio.index] = "audio"
        cutter.routes["audio"] = _route(audio, segment_s, encoder)
    pacer = _Pacer(stop) if inp.paced else None
    try:
        for packet in _packets(container, [container.streams[i] for i in kinds], inp):
            if stop.is_set():
                break
            if pacer:
                pacer.wait(float(packet.dts * packet.time_base))
            _route_packet(cutter, timeline, kinds[packet.stream.index], packet)
            for side in side_audio.drain() if side_audio else ():
                _route_packet(cutter, timeline, "audio", side)
        for kind, route in cutter.routes.items():
            for out in route.flush():
                _place_and_feed(cutter, timeline, kind, out)
    except BaseException:
        cutter.abandon()
        raise
    cutter.finish()


def _packets(container, streams, inp: _Input) -> Iterator:
    """Demuxed packets with timestamps; a publisher that hangs up ends the iteration."""
    try:
        for packet in container.demux(streams):
            if packet.dts is not None:
                yield packet
    except av.ExitError:
        if inp.kind in ("listen", "pull"):
            return  # silent for timeout_s: treat as gone
        raise LiveSourceError(f"{inp.label}: the source stopped sending") from None
    except (av.FFmpegError, OSError) as exc:
        if inp.kind in ("listen", "pull"):
            return  # the camera hung up (FFmpeg's RTMP says EIO): the session is over
        raise LiveSourceError(f"{inp.label}: read failed ({_reason(exc)})") from None


def _route_packet(cutter: _Cutter, timeline: _Timeline, kind: str, packet) -> None:
    route = cutter.routes[kind]
    if timeline.origin_s is None and (kind == "audio" or (isinstance(route, _CopyRoute) and not packet.is_keyframe)):
        return  # nothing is kept before the first video keyframe (a decoder finds its own start)
    for out in route.packets(packet):
        _place_and_feed(cutter, timeline, kind, out)


def _place_and_feed(cutter: _Cutter, timeline: _Timeline, kind: str, packet) -> None:
    if packet.dts is None and packet.pts is None:
        return
    if packet.dts is None:
        packet.dts = packet.pts
    if timeline.origin_s is None and (kind == "audio" or not packet.is_keyframe):
        return  # an encoder's audio can come out before the first video keyframe
    timeline.place(packet)
    cutter.feed(kind, packet)


def run_segmenter(
    source: str,
    on_segment: Callable[[Segment], None],
    stop: threading.Event,
    *,
    segment_s: float = 2.0,
    listen: bool | None = None,
    audio: str | None = None,
    input_format: str | None = None,
    timeout_s: float = 30.0,
    segment_s_max: float | None = None,
    segment_bytes_max: int = 64 * 1024 * 1024,
    paced: bool | None = None,
    input_options: dict[str, str] | None = None,
) -> None:
    """Cut `source` into segments, calling `on_segment` (in this thread) with each; blocks.

    `source`: `rtmp://HOST:PORT/APP/KEY` (listen for a camera's push when `listen`, or when `listen`
    is None and HOST is a wildcard/loopback address or one of this machine's; otherwise pull from
    that server), another FFmpeg URL (pulled), a device (`/dev/video0`, `input_format` "v4l2" by
    default, `audio` an ALSA device such as "hw:1") or a file (played at its native speed).
    Returns when `stop` is set or the source ends (listening: only on `stop`; each publisher that
    leaves is followed by the next). Raises `LiveSourceError` when the source is unusable.

    `paced` None reads files (and lavfi) at their native speed and everything else as it comes;
    False reads a file as fast as possible (a recording to cut up); `segment_s_max` (default
    max(5 x segment_s, 10 s)) and `segment_bytes_max` bound one segment. `input_options` go to
    FFmpeg's demuxer, e.g. {"video_size": "1280x720", "framerate": "25", "input_format": "mjpeg"}
    for a V4L2 camera.
    """
    inp = _classify(source, listen, input_format)
    if paced is not None:
        inp = dataclasses.replace(inp, paced=paced)
    if input_options:
        inp = dataclasses.replace(inp, options={**inp.options, **input_options})
    segment_s_max = segment_s_max if segment_s_max is not None else max(5 * segment_s, 10.0)
    cutter = _Cutter(on_segment, segment_s, segment_s_max, segment_bytes_max)
    offset_s = TIMELINE_LEAD_S
    encoder = h264_encoder()
    while not stop.is_set():
        container = _open(inp, stop, timeout_s)
        if container is None:
            return
        side_audio = _SideAudio(audio, stop, timeout_s) if audio else None
        timeline = _Timeline(offset_s)
        try:
            _session(container, side_audio, cutter, timeline, stop, inp, segment_s, encoder)
        finally:
            if side_audio:
                side_audio.close()
            container.close()
        if timeline.origin_s is not None:
            offset_s = timeline.end_s + 1.0  # the next publisher lands a second after this one ended
            cutter.discontinuity = True
        if inp.kind != "listen":
            return



# --- probing (mesh doctor) --------------------------------------------------------------------------


def probe_source(source: str, *, input_format: str | None = None, timeout_s: float = 5.0) -> dict:
    """What `source` carries, for `mesh doctor`: {"ok", "detail", "video", "audio"}; never raises.

    A listening RTMP URL waits up to `timeout_s` for a camera to push.
    """
    try:
        inp = _classify(source, None, input_format)
        if inp.kind == "listen":
            inp = dataclasses.replace(inp, options={**inp.options, "timeout": str(max(1, math.ceil(timeout_s)))})
        container = _open_once(inp, timeout_s)
    except LiveSourceError as exc:
        return {"ok": False, "detail": str(exc), "video": None, "audio": None}
    except Exception as exc:  # noqa: BLE001 - the trust boundary: FFmpeg raises many kinds on junk
        return {"ok": False, "detail": f"cannot open {source}: {_reason(exc)}", "video": None, "audio": None}
    try:
        return _describe(container)
    except Exception as exc:  # noqa: BLE001 - as above
        return {"ok": False, "detail": f"{inp.label}: unreadable ({_reason(exc)})", "video": None, "audio": None}
    finally:
        container.close()


def _open_once(inp: _Input, timeout_s: float):
    if inp.kind == "listen":
        try:
            return av.open(inp.url, format=inp.format, options=inp.options, timeout=(timeout_s + 5, timeout_s))
        except TimeoutError:
            raise LiveSourceError(f"{inp.label}: no camera pushed within {timeout_s:g} s") from None
        except (av.FFmpegError, OSError) as exc:
            raise LiveSourceError(_open_error_text(inp, exc)) from None
    return _open(inp, threading.Event(), timeout_s)


def _describe(container) -> dict:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    video_text = audio_text = None
    if video is not None:
        rate = video.average_rate or video.guessed_rate
        fps = f" {float(rate):.3g}fps" if rate else ""
        video_text = f"{_codec_name(video)} {video.codec_context.width}x{video.codec_context.height}{fps}"
    if audio is not None:
        audio_text = f"{_codec_name(audio)} {audio.codec_context.sample_rate}Hz"
    if video is None:
        return {"ok": False, "detail": "the camera sent no video", "video": None, "audio": audio_text}
    return {"ok": True, "detail": _plan_text(video, audio), "video": video_text, "audio": audio_text}


def _plan_text(video, audio) -> str:
    """What run_segmenter will do with these streams."""
    steps = []
    v_name = _codec_name(video)
    steps.append("H.264 video copied" if v_name == "h264" else f"{v_name} video encoded to H.264 ({h264_encoder()})")
    if audio is None:
        steps.append("no audio")
    else:
        a_name = _codec_name(audio)
        steps.append("AAC audio copied" if a_name == "aac" else f"{a_name} audio encoded to AAC")
    return ", ".join(steps)
