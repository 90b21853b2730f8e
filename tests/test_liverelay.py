"""The relay to a remote RTMP endpoint, against a local RTMP sink on loopback that dies and returns."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mesh.drivers.liverelay import run_relay
from mesh.drivers.livesource import Segment, run_segmenter
from mesh.drivers.tcp import free_port
from mesh.testing.livestream import RtmpSink, push_test_stream


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[Segment]:
    clip = Path(tmp_path_factory.mktemp("relay")) / "clip.mp4"
    push_test_stream(str(clip), 6.0, realtime=False)
    out: list[Segment] = []
    run_segmenter(str(clip), out.append, threading.Event(), segment_s=2.0, paced=False)
    assert len(out) == 3
    return out


class Feed:
    """`segments(timeout_s)` for the relay: the clip's segments over and over, a few per second."""

    def __init__(self, segments: list[Segment], interval_s: float = 0.25) -> None:
        self.segments, self.interval_s, self.given = segments, interval_s, 0

    def __call__(self, timeout_s: float) -> Segment | None:
        time.sleep(min(timeout_s, self.interval_s))
        segment = self.segments[self.given % len(self.segments)]
        self.given += 1
        return segment


class States:
    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str | None]] = []

    def __call__(self, state: str, error: str | None) -> None:
        self.seen.append((time.monotonic(), state, error))

    def names(self) -> list[str]:
        return [state for _, state, _ in self.seen]

    def wait_for(self, state: str, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.names().count(state) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.names().count(state) >= count


def start_relay(url: str, feed, **options) -> tuple[threading.Thread, threading.Event, States]:
    stop, states = threading.Event(), States()
    thread = threading.Thread(target=run_relay, args=(url, feed, stop), kwargs={"on_state": states, **options})
    thread.start()
    return thread, stop, states


def stop_relay(thread: threading.Thread, stop: threading.Event) -> float:
    stopped = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    return time.monotonic() - stopped


def test_relay_reconnects_after_the_sink_restarts(segments: list[Segment]) -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/secret-key"
    sink = RtmpSink(url).start()
    thread, stop, states = start_relay(url, Feed(segments))
    try:
        assert states.wait_for("live", 1, 10), states.seen
        assert sink.wait_video_packets(200, 10)
        assert sink.codecs == ["h264", "aac"]
        times = list(sink.video_times_s)
        steps = [b - a for a, b in zip(times, times[1:])]
        assert all(0 < step < 0.1 for step in steps), "timestamps continue across segments"
        sink.close()  # the endpoint dies
        assert states.wait_for("retrying", 1, 10), states.seen
        time.sleep(2.5)  # a refused reconnect or two
        sink = RtmpSink(url).start()
        assert states.wait_for("live", 2, 15), states.seen
        assert sink.wait_video_packets(50, 10)
        assert sink.connections == 1
    finally:
        took_s = stop_relay(thread, stop)
        sink.close()
    assert took_s < 2.0
    names = states.names()
    assert names[:2] == ["connecting", "live"] and names[-1] == "stopped"
    first_retry = names.index("retrying")
    assert "live" in names[first_retry:]
    errors = [error for _, state, error in states.seen if state == "retrying"]
    assert all(error and "\n" not in error and "secret-key" not in error for error in errors), errors


def test_relay_backs_off_while_the_endpoint_is_down(segments: list[Segment]) -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/k"
    feed = Feed(segments)
    thread, stop, states = start_relay(url, feed, backoff_s_max=2.0)
    try:
        assert states.wait_for("retrying", 4, 20), states.seen
    finally:
        took_s = stop_relay(thread, stop)
    assert took_s < 2.0
    retries = [t for t, state, _ in states.seen if state == "retrying"]
    connects = [t for t, state, _ in states.seen if state == "connecting"]
    waits = [c - r for r, c in zip(retries, connects[1:])]
    assert waits[:3] == pytest.approx([1.0, 2.0, 2.0], abs=0.3), waits  # doubling, capped
    assert all("nothing is listening" in e or "refused" in e for _, s, e in states.seen if s == "retrying")
    assert "live" not in states.names()
