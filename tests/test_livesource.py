"""Live ingest with real PyAV: a synthetic camera pushes RTMP to the segmenter on loopback.

The camera runs in a child process (a real camera is another device; see `spawn_test_stream`).
Every listener binds 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
from io import BytesIO
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.drivers.livesource import LiveSourceError, Segment, h264_encoder, probe_source, run_segmenter
from mesh.drivers.tcp import free_port
from mesh.errors import MeshError
from mesh.testing.livestream import (
    clock_bits,
    clock_from_bits,
    push_test_stream,
    read_clock,
    spawn_test_stream,
)

SEGMENT_S = 2.0
KEYFRAME_S = 1.0  # the test camera's keyframe interval
FPS = 25


class Collector:
    """Segments as they arrive, with the wall time of arrival."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.arrived_s: list[float] = []

    def __call__(self, segment: Segment) -> None:
        self.segments.append(segment)
        self.arrived_s.append(time.time())


def segmenter_thread(source: str, stop: threading.Event, **options) -> tuple[threading.Thread, Collector, list]:
    collector, errors = Collector(), []

    def run() -> None:
        try:
            run_segmenter(source, collector, stop, segment_s=SEGMENT_S, **options)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, collector, errors


def push_over_rtmp(seconds: float, **options) -> tuple[list[Segment], list[float]]:
    """Push the test stream to a listening segmenter; the segments and their arrival times."""
    url = f"rtmp://127.0.0.1:{free_port()}/live/test-key"
    stop = threading.Event()
    thread, collector, errors = segmenter_thread(url, stop)
    camera = spawn_test_stream(url, seconds, fps=FPS, keyframe_interval_s=KEYFRAME_S, **options)
    try:
        assert camera.wait(seconds + 20) == 0, camera.stderr.read().decode(errors="replace")[-2000:]
        time.sleep(0.5)  # the last segment goes out when the publisher's hang-up is read
    finally:
        camera.kill()
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert not errors, errors
    return collector.segments, collector.arrived_s


def describe(segment: Segment) -> dict:
    """What a player sees when it opens the segment alone."""
    with av.open(BytesIO(segment.data), "r", format="mpegts") as container:
        codecs = {s.type: s.codec_context.name for s in container.streams}
        first_packet = next(p for p in container.demux(video=0) if p.dts is not None)
    with av.open(BytesIO(segment.data), "r", format="mpegts") as container:
        first_frame = next(container.decode(video=0))
        frames = 1 + sum(1 for _ in container.decode(video=0))
    return {
        "codecs": codecs,
        "first_packet_keyframe": first_packet.is_keyframe,
        "first_frame_keyframe": first_frame.key_frame,
        "first_frame_s": first_frame.time,
        "frames": frames,
    }


def ts_pids(data: bytes) -> list[int]:
    assert all(data[i] == 0x47 for i in range(0, len(data), 188)), "TS sync bytes"
    return [((data[i + 1] & 0x1F) << 8) | data[i + 2] for i in range(0, len(data), 188)]


def assert_playable(segments: list[Segment]) -> None:
    for segment in segments:
        assert len(segment.data) % 188 == 0
        assert set(ts_pids(segment.data)[:3]) == {0x0000, 0x0011, 0x1000}, "PAT, SDT and PMT come first"
        info = describe(segment)
        assert info["codecs"] == {"video": "h264", "audio": "aac"}
        assert info["first_packet_keyframe"] and info["first_frame_keyframe"]
        assert info["first_frame_s"] == pytest.approx(segment.pts_s, abs=0.002)


def assert_cut_on_time(segments: list[Segment]) -> None:
    assert [s.seq for s in segments] == list(range(len(segments)))
    for segment in segments[:-1]:
        assert SEGMENT_S - 0.01 <= segment.duration_s < SEGMENT_S + KEYFRAME_S
    for before, after in zip(segments, segments[1:]):
        assert after.pts_s == pytest.approx(before.pts_s + before.duration_s, abs=0.002)


# --- the clock code ---------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**42 - 1))
def test_clock_code_round_trips(ms: int) -> None:
    assert clock_from_bits(clock_bits(ms)) == ms


@given(st.integers(min_value=0, max_value=2**42 - 1), st.integers(min_value=0, max_value=47))
def test_clock_code_catches_any_one_bit_flip(ms: int, bit: int) -> None:
    bits = clock_bits(ms)
    bits[bit] ^= 1
    assert clock_from_bits(bits) is None


def test_read_clock_on_a_segment_without_a_clock_is_none() -> None:
    assert read_clock(b"not a transport stream") is None


# --- RTMP push, remuxed -------------------------------------------------------------------------------


def test_rtmp_push_becomes_playable_segments_without_reencoding() -> None:
    started = time.monotonic()
    segments, arrived_s = push_over_rtmp(9.0)
    assert len(segments) >= 3
    assert_playable(segments)
    assert_cut_on_time(segments)
    assert not any(s.discontinuity for s in segments)
    # Copied, not re-encoded: the camera's own x264 settings (ABR 600 kbit/s) are still in the
    # stream, and the bitrate is the camera's.
    assert b"rc=abr" in segments[0].data and b"bitrate=600" in segments[0].data
    for segment in segments[:-1]:
        kbit_s = len(segment.data) * 8 / segment.duration_s / 1000
        # Camera: ABR 600 + 96 kbit/s, which x264 undershoots on this easy picture (~430 in all).
        assert 0.5 * 696 < kbit_s < 1.5 * 696, kbit_s
    clocks = [read_clock(s.data) for s in segments]
    assert all(c is not None for c in clocks)
    assert clocks == sorted(clocks)
    for clock, segment in zip(clocks[1:], segments[1:]):
        assert clock - clocks[0] == pytest.approx(segment.pts_s - segments[0].pts_s, abs=0.1)
    latencies = [arrived - clock for arrived, clock in zip(arrived_s, clocks)]
    for latency, segment in zip(latencies[:-1], segments[:-1]):
        # A segment leaves when the keyframe after it arrives: its duration, plus transport.
        assert segment.duration_s - 0.1 < latency < segment.duration_s + 1.5, latencies
    assert time.monotonic() - started < 30


def send_junk_connection(url: str) -> None:
    port = int(url.split(":")[2].split("/")[0])
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                time.sleep(0.2)
            return
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_new_publisher_continues_the_stream_after_a_discontinuity() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/test-key"
    stop = threading.Event()
    thread, collector, errors = segmenter_thread(url, stop)
    try:
        send_junk_connection(url)  # a stray client does not end the stream
        for _ in range(2):
            camera = spawn_test_stream(url, 4.5, fps=FPS, keyframe_interval_s=KEYFRAME_S)
            assert camera.wait(30) == 0
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(5)
    assert not errors, errors
    segments = collector.segments
    flagged = [s for s in segments if s.discontinuity]
    assert len(flagged) == 1
    second = segments.index(flagged[0])
    assert 2 <= second < len(segments) - 1
    assert flagged[0].pts_s > segments[second - 1].pts_s + segments[second - 1].duration_s
    assert_playable(segments)


# --- transcoding --------------------------------------------------------------------------------------


def test_h264_encoder_is_available() -> None:
    assert h264_encoder() == "libx264"


def test_mpeg4_file_is_transcoded_to_h264_at_native_speed(tmp_path: Path) -> None:
    clip = tmp_path / "camera.mkv"
    push_test_stream(str(clip), 5.0, codec="mpeg4", audio_codec="mp3", realtime=False, keyframe_interval_s=3.0)
    collector = Collector()
    started = time.monotonic()
    run_segmenter(str(clip), collector, threading.Event(), segment_s=SEGMENT_S)
    elapsed_s = time.monotonic() - started
    segments = collector.segments
    assert 4.5 < elapsed_s < 8, "a file plays at its own speed, like a camera"
    assert len(segments) == 3
    assert_playable(segments)
    # Our encoder cuts exactly on segment_s, whatever the source's keyframe interval (3 s here).
    assert [s.duration_s for s in segments[:-1]] == [2.0, 2.0]
    assert b"rc=crf" in segments[0].data  # our x264 settings: re-encoded
    clocks = [read_clock(s.data) for s in segments]
    assert clocks[1] - clocks[0] == pytest.approx(2.0, abs=0.05)


def test_flv1_over_rtmp_is_transcoded_to_h264() -> None:
    segments, _ = push_over_rtmp(5.0, codec="flv1", audio_codec="mp3")
    assert len(segments) >= 2
    assert_playable(segments)
    assert_cut_on_time(segments)
    assert read_clock(segments[0].data) is not None


def test_a_file_can_be_cut_as_fast_as_possible(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    push_test_stream(str(clip), 6.0, realtime=False)
    collector = Collector()
    started = time.monotonic()
    run_segmenter(str(clip), collector, threading.Event(), segment_s=SEGMENT_S, paced=False)
    assert time.monotonic() - started < 3
    assert [s.duration_s for s in collector.segments] == [2.0, 2.0, 2.0]


# --- stopping and bad input ---------------------------------------------------------------------------


def test_stop_returns_promptly_while_nobody_pushes() -> None:
    stop = threading.Event()
    thread, collector, errors = segmenter_thread(f"rtmp://127.0.0.1:{free_port()}/live/k", stop)
    time.sleep(1.5)
    assert thread.is_alive(), errors
    stopped = time.monotonic()
    stop.set()
    thread.join(5)
    assert time.monotonic() - stopped < 2.0
    assert not errors and not collector.segments


def test_stop_returns_promptly_while_a_camera_pushes() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/k"
    stop = threading.Event()
    thread, collector, errors = segmenter_thread(url, stop)
    camera = spawn_test_stream(url, 20.0)
    try:
        deadline = time.monotonic() + 15
        while not collector.segments and time.monotonic() < deadline:
            time.sleep(0.1)
        assert collector.segments, errors
        stopped = time.monotonic()
        stop.set()
        thread.join(5)
        assert time.monotonic() - stopped < 2.0
    finally:
        camera.kill()
        camera.wait()
    assert not errors


def run_expecting_error(source: str, **options) -> str:
    with pytest.raises(LiveSourceError) as caught:
        run_segmenter(source, lambda segment: None, threading.Event(), timeout_s=3, **options)
    message = str(caught.value)
    assert isinstance(caught.value, MeshError)
    assert "\n" not in message and "secret-key" not in message
    return message


def test_bad_sources_give_one_clear_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00junk" * 1000)
    assert run_expecting_error(str(junk)) == f"cannot open {junk}: not a video this FFmpeg can read"
    assert run_expecting_error(str(tmp_path / "nope.mp4")) == f"cannot open {tmp_path / 'nope.mp4'}: no such file"
    port = free_port()
    assert (
        run_expecting_error(f"rtmp://127.0.0.1:{port}/live/secret-key", listen=False)
        == f"rtmp://127.0.0.1:{port}/live: nothing is listening"
    )
    assert "SRT is not supported" in run_expecting_error("srt://127.0.0.1:9000")


def test_audio_only_source_says_there_is_no_video(tmp_path: Path) -> None:
    tone = tmp_path / "tone.m4a"
    with av.open(str(tone), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        from mesh.testing.livestream import tone_frame

        for i in range(50):
            out.mux(stream.encode(tone_frame(i * 1024)))
        out.mux(stream.encode(None))
    assert run_expecting_error(str(tone)) == "the camera sent no video"


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = run_expecting_error(f"rtmp://127.0.0.1:{port}/live/secret-key")
    assert message == f"cannot listen on 127.0.0.1:{port}: the port is in use"


@pytest.mark.skipif(Path("/dev/video9").exists(), reason="this machine has a /dev/video9")
def test_missing_devices_are_named() -> None:
    assert run_expecting_error("/dev/video9") == "cannot open /dev/video9: no such device"
    assert run_expecting_error("/dev/video9", input_format="v4l2") == "cannot open /dev/video9: no such device"


def test_missing_audio_device_is_named(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    push_test_stream(str(clip), 1.0, realtime=False)
    assert run_expecting_error(str(clip), audio="hw:99") == "cannot open audio hw:99: no such device, or it is busy"


# --- probing ------------------------------------------------------------------------------------------


def test_probe_source_describes_a_file(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    push_test_stream(str(clip), 1.0, realtime=False, size=(320, 240))
    assert probe_source(str(clip)) == {
        "ok": True,
        "detail": "H.264 video copied, AAC audio copied",
        "video": "h264 320x240 25fps",
        "audio": "aac 48000Hz",
    }


def test_probe_source_never_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"\x47" * 10)
    for source in (str(junk), "/dev/video9", "srt://127.0.0.1:1/x", f"rtmp://127.0.0.1:{free_port()}/live/k"):
        result = probe_source(source, timeout_s=1.0)
        assert result["ok"] is False and result["detail"] and "\n" not in result["detail"]
        assert result["video"] is None


def test_probe_source_waits_for_a_camera_on_a_listening_url() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/k"
    camera = spawn_test_stream(url, 6.0, codec="flv1", audio_codec="mp3")
    try:
        result = probe_source(url, timeout_s=8.0)
    finally:
        camera.kill()
        camera.wait()
    assert result["ok"], result
    assert result["video"].startswith("flv1 320x240") and result["audio"] == "mp3 48000Hz"
    assert result["detail"] == "flv1 video encoded to H.264 (libx264), mp3 audio encoded to AAC"


@pytest.mark.parametrize(("name", "codec", "audio_codec"), [("copy.mp4", "h264", "aac"), ("encode.mkv", "mpeg4", "mp3")])
def test_segments_play_back_to_back_as_an_hls_playlist(tmp_path: Path, name: str, codec: str, audio_codec: str) -> None:
    clip = tmp_path / name
    push_test_stream(str(clip), 6.0, realtime=False, codec=codec, audio_codec=audio_codec)
    collector = Collector()
    run_segmenter(str(clip), collector, threading.Event(), segment_s=SEGMENT_S, paced=False)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:3", "#EXT-X-MEDIA-SEQUENCE:0"]
    for segment in collector.segments:
        (tmp_path / f"{segment.seq}.ts").write_bytes(segment.data)
        lines += [f"#EXTINF:{segment.duration_s:.3f},", f"{segment.seq}.ts"]
    (tmp_path / "live.m3u8").write_text("\n".join(lines + ["#EXT-X-ENDLIST", ""]))
    times: dict[str, list[float]] = {"video": [], "audio": []}
    with av.open(str(tmp_path / "live.m3u8"), options={"allowed_extensions": "ALL"}) as playlist:
        for frame in playlist.decode(video=0, audio=0):
            times[frame.__class__.__name__.removesuffix("Frame").lower()].append(frame.time)
    video, audio = times["video"], times["audio"]
    assert len(video) == 6 * FPS
    steps = [b - a for a, b in zip(video, video[1:])]
    assert all(step == pytest.approx(1 / FPS, abs=0.002) for step in steps), "no gap or overlap at the cuts"
    assert audio[0] == pytest.approx(video[0], abs=0.05) and audio[-1] == pytest.approx(video[-1], abs=0.1)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtmp://0.0.0.0:1935/live/k", "listen"),
        ("rtmp://127.0.0.1:1935/live/k", "listen"),
        ("rtmp://[::]:1935/live/k", "listen"),
        ("rtmp://192.0.2.7:1935/live/k", "pull"),  # TEST-NET-1: never an address of this machine
        ("rtmp://a.example/live/k", "pull"),  # a name is a server: no DNS lookup to decide
        ("rtmps://a.example/live/k", "pull"),
    ],
)
def test_listen_or_pull_is_decided_from_the_host(url: str, kind: str) -> None:
    from mesh.drivers.livesource import _classify

    assert _classify(url, None, None).kind == kind


def test_messages_never_show_the_stream_key() -> None:
    from mesh.drivers.livesource import redact_url

    assert redact_url("rtmps://user:pw@a.example:443/live/SECRET?x=1") == "rtmps://a.example:443/live"
    assert redact_url("rtmp://127.0.0.1:1935/live") == "rtmp://127.0.0.1:1935/live"
