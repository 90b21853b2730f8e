"""The optional uplink: live TS segments remuxed into one long-lived RTMP(S) publish, retried forever.

Theory of operation:

- `run_relay` (blocking, in the caller's worker thread) pulls segments with `segments(timeout_s)`
  and hands them one at a time to an *uplink worker*, a child process (`python -m
  mesh.drivers.liverelay`) that owns the FFmpeg output. A child, not a thread: PyAV holds the GIL
  while FFmpeg connects an output (TCP, TLS, the RTMP handshake) and writes its header, which would
  freeze the agent's trio loop for as long as a slow WAN takes; a child freezes only itself.
- The worker remuxes each segment's packets (no re-encode) into one FLV output, shifting each
  segment so it starts where the previous one ended: timestamps stay continuous even when the caller
  dropped segments because the uplink was slow.
- Flow control is one segment in flight: the worker says `ready` after each segment, and only then
  does the relay ask `segments` for another, so a slow uplink never buffers here: it is the caller
  that keeps only the newest segments.
- Connection loss (any worker error or exit) becomes "retrying" and a reconnect after a backoff
  that starts at `BACKOFF_S_MIN`, doubles to `backoff_s_max`, and resets once a connection went live.
- The stream key is a secret: it travels to the worker on stdin (not argv) and no state text or
  error names it.

Worker protocol: stdin carries frames of a 4-byte big-endian length and a body: first a JSON header
{"url": ...}, then one TS segment per frame; a zero length ends the stream. stdout carries lines:
`live` (the server accepted the publish), `ready` (send the next segment), `error TEXT`.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import IO

from mesh.drivers.livesource import Segment, redact_url

BACKOFF_S_MIN = 1.0
POLL_S = 0.2  # how often a wait looks at `stop`
STOP_GRACE_S = 1.0  # a worker that has not exited this long after end-of-stream is killed
STALL_S_MAX = 15.0  # a worker that takes longer to connect or to send one segment is killed
SEGMENT_BYTES_MAX = 64 * 1024 * 1024
_LINE_BYTES_MAX = 4096

StateCallback = Callable[[str, "str | None"], None]


def run_relay(
    url: str,
    segments: Callable[[float], Segment | None],
    stop: threading.Event,
    *,
    backoff_s_max: float = 30.0,
    on_state: StateCallback | None = None,
) -> None:
    """Publish the segments `segments(timeout_s)` returns to `url` until `stop`; blocks.

    States go to `on_state(state, error)`: "connecting", "live", "retrying" (with the error text),
    and "stopped" last.
    """
    report = on_state or (lambda state, error: None)
    backoff_s = BACKOFF_S_MIN
    while not stop.is_set():
        report("connecting", None)
        went_live, error = _one_connection(url, segments, stop, report)
        if stop.is_set():
            break
        backoff_s = BACKOFF_S_MIN if went_live else backoff_s
        report("retrying", error)
        if stop.wait(backoff_s):
            break
        backoff_s = min(backoff_s * 2, backoff_s_max)
    report("stopped", None)


def _one_connection(url, segments, stop, report) -> tuple[bool, str | None]:
    """Run one worker until it fails or `stop`: (whether it went live, the error text)."""
    worker = _Worker.start(url)
    try:
        return worker.feed(segments, stop, report)
    finally:
        worker.close()


class _Worker:
    """The parent's handle on one uplink worker process."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines = _LineReader(process.stdout)
        self.live = False

    @classmethod
    def start(cls, url: str) -> "_Worker":
        process = subprocess.Popen(
            [sys.executable, "-m", "mesh.drivers.liverelay"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_worker_env(),
        )
        worker = cls(process)
        worker._send(json.dumps({"url": url}).encode())
        return worker

    def feed(self, segments, stop, report) -> tuple[bool, str | None]:
        ready = True  # the worker reads its first segment right after the header
        sent_at = 0.0
        while not stop.is_set():
            if ready:
                segment = segments(POLL_S)
                if segment is not None:
                    if not self._send(segment.data):
                        return self.live, self._exit_reason()
                    ready, sent_at = False, time.monotonic()
            elif time.monotonic() - sent_at > STALL_S_MAX:
                # FFmpeg's output has no I/O timeout PyAV can set; the parent enforces one.
                return self.live, f"the uplink made no progress for {STALL_S_MAX:g} s"
            line = self.lines.read_line(0.0 if ready else POLL_S)
            if line is None:
                return self.live, self._exit_reason()
            if line == "live":
                self.live = True
                report("live", None)
            elif line == "ready":
                ready = True
            elif line.startswith("error "):
                return self.live, line[len("error "):]
        return self.live, None

    def _send(self, body: bytes) -> bool:
        try:
            self.process.stdin.write(struct.pack(">I", len(body)) + body)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def _exit_reason(self) -> str:
        line = self.lines.read_line(STOP_GRACE_S)
        if line and line.startswith("error "):
            return line[len("error "):]
        return "the uplink worker exited"

    def close(self) -> None:
        try:
            self._send(b"")
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def _worker_env() -> dict[str, str]:
    """This environment, with the directory holding `mesh` first on the path (for the `-m`)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class _LineReader:
    """Lines from a pipe, read with a timeout; "" means no line yet, None means the pipe closed."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""
        self.closed = False

    def read_line(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            if self.closed:
                return None
            wait_s = max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], wait_s)[0]:
                return ""
            chunk = os.read(self.fd, _LINE_BYTES_MAX)
            self.closed = not chunk
            self.buffer += chunk
            if len(self.buffer) > _LINE_BYTES_MAX:
                self.buffer = b""  # a runaway line: not ours
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")


# --- the worker (child process) ----------------------------------------------------------------------


class _Uplink:
    """One FLV output fed TS segments, each shifted to start where the previous ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.output = None
        self.streams: dict[str, object] = {}  # "video"/"audio" -> output stream
        self.params: dict[str, tuple] = {}  # what the output was opened with, per kind
        self.cursor_s = 0.0  # output time where the next segment starts

    def send(self, data: bytes) -> None:
        import av

        with av.open(BytesIO(data), "r", format="mpegts") as segment:
            inputs = {s.type: s for s in segment.streams if s.type in ("video", "audio")}
            packets = [p for p in segment.demux(list(inputs.values())) if p.dts is not None]
            if self.output is None:
                self._open(inputs)
            elif {k: _params(s) for k, s in inputs.items()} != self.params:
                raise _UplinkError("the stream's format changed; reconnecting")
            self._write(packets, inputs)

    def _open(self, inputs) -> None:
        import av

        output = av.open(self.url, "w", format="flv")
        for kind, stream in inputs.items():
            self.streams[kind] = output.add_stream_from_template(stream)
        self.params = {k: _params(s) for k, s in inputs.items()}
        output.start_encoding()  # connects, publishes, writes the FLV header
        self.output = output
        _say("live")

    def _write(self, packets, inputs) -> None:
        if not packets:
            return
        base_s = min(float(p.dts * p.time_base) for p in packets)
        end_s = self.cursor_s
        kinds = {s.index: k for k, s in inputs.items()}
        for packet in packets:
            tb = packet.time_base
            shift = round((self.cursor_s - base_s) / tb)
            if packet.pts is None:
                packet.pts = packet.dts
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            end_s = max(end_s, float((packet.dts + (packet.duration or 0)) * tb))
            packet.stream = self.streams[kinds[packet.stream_index]]
            self.output.mux(packet)
        self.cursor_s = end_s

    def close(self) -> None:
        if self.output is not None:
            self.output.close()


class _UplinkError(Exception):
    """The worker's reason to stop; its text goes to the parent."""


def _params(stream) -> tuple:
    ctx = stream.codec_context
    if stream.type == "video":
        return (ctx.name, ctx.width, ctx.height)
    return (ctx.name, ctx.sample_rate, ctx.channels)


def _say(line: str) -> None:
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next body on stdin; None at end of stream."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    if size == 0:
        return None
    if size > SEGMENT_BYTES_MAX:
        raise _UplinkError(f"segment of {size} bytes is over the limit")
    body = stream.read(size)
    return body if len(body) == size else None


def _worker_main() -> int:
    import av

    stdin = sys.stdin.buffer
    header = _read_frame(stdin)
    if header is None:
        return 0
    url = json.loads(header)["url"]
    uplink = _Uplink(url)
    try:
        while (data := _read_frame(stdin)) is not None:
            uplink.send(data)
            _say("ready")
    except _UplinkError as exc:
        _say(f"error {exc}")
        return 1
    except (av.FFmpegError, OSError) as exc:
        _say(f"error {redact_url(url)}: {_error_text(exc)}")
        return 1
    finally:
        try:
            uplink.close()
        except (av.FFmpegError, OSError):
            pass
    return 0


def _error_text(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0].lower()


if __name__ == "__main__":
    sys.exit(_worker_main())
