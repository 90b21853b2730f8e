"""The live path with real processes on loopback: a test camera (PyAV: moving pattern, burnt-in
clock, tone) pushes RTMP to a stage box; two edges serve a playlist whose segments are
byte-identical to the stage's; an edge killed mid-stream rejoins at the live edge; a phone
browser plays the edge's page; stopping the stream leaves its recording as an asset."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.agents import Node, free_port, wait_until

av = pytest.importorskip("av")

from mesh.testing.livestream import read_clock, spawn_test_stream  # noqa: E402

SEGMENT_S = 1.0
STREAM_S = 40


def get(port: int, path: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def playlist(port: int, name: str = "main-stage") -> list[int]:
    status, body = get(port, f"/live/{name}.m3u8")
    if status != 200:
        return []
    return [int(n) for n in re.findall(rf"^/live/{name}/(\d+)\.ts$", body.decode(), re.M)]


@pytest.fixture
def stage_and_edges(tmp_path: Path):
    org = Node(tmp_path / "org")
    org.cli("init", "live-popup", "--node-name", "org")
    nodes = {"org": org}
    for name in ("stage", "edge1", "edge2"):
        node = Node(tmp_path / name)
        node.cli("join", org.cli("invite", "--role", "edge", "--name", name).stdout.decode().strip())
        nodes[name] = node
    ports = {name: free_port() for name in nodes}
    org.start("--no-mdns", "--http", f"127.0.0.1:{ports['org']}")
    for name in ("stage", "edge1", "edge2"):
        nodes[name].start("--no-mdns", "--peer", org.address, "--http", f"127.0.0.1:{ports[name]}")
    try:
        yield nodes, ports
    finally:
        for node in nodes.values():
            node.stop()


def test_a_camera_reaches_two_edges_byte_identical_and_a_killed_edge_rejoins_live(stage_and_edges) -> None:
    nodes, ports = stage_and_edges
    stage, edge1, edge2 = nodes["stage"], nodes["edge1"], nodes["edge2"]
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/stage"
    started = json.loads(stage.cli("live", "start", "main-stage", "--listen", rtmp, "--tag", "stage",
                                   "--segment-s", str(SEGMENT_S), "--json").stdout)
    assert started["agent_running"]
    camera = spawn_test_stream(rtmp, STREAM_S, keyframe_interval_s=SEGMENT_S)
    try:
        for edge in ("edge1", "edge2"):
            wait_until(lambda: len(playlist(ports[edge])) >= 3, 40, f"{edge} to serve 3 live segments")
        numbers = playlist(ports["edge1"])
        for number in numbers[-3:]:
            bodies = [get(ports[name], f"/live/main-stage/{number}.ts") for name in ("stage", "edge1", "edge2")]
            assert all(status == 200 for status, _ in bodies), [status for status, _ in bodies]
            assert len({hashlib.sha256(body).hexdigest() for _, body in bodies}) == 1, number
        # glass to edge: the newest segment the edge serves was filmed moments ago
        newest = playlist(ports["edge1"])[-1]
        status, body = get(ports["edge1"], f"/live/main-stage/{newest}.ts")
        captured = read_clock(body)
        assert captured is not None and time.time() - captured <= 3 * SEGMENT_S + 1 + SEGMENT_S, time.time() - captured

        rows = json.loads(edge1.cli("live", "ls", "--json").stdout)
        assert [(r["name"], r["state"], r["node"]) for r in rows] == [("main-stage", "live", stage.node_id)]

        edge2.stop(signal.SIGKILL)
        time.sleep(4 * SEGMENT_S)
        edge2.start("--no-mdns", "--peer", nodes["org"].address, "--http", f"127.0.0.1:{ports['edge2']}")

        def back_at_the_edge() -> bool:
            mine, theirs = playlist(ports["edge2"]), playlist(ports["stage"])
            return bool(mine) and bool(theirs) and theirs[-1] - mine[-1] <= 1

        wait_until(back_at_the_edge, 30, "the restarted edge at the live edge")
    finally:
        camera.kill()
        camera.wait()
    stopped = json.loads(stage.cli("live", "stop", "main-stage", "--json").stdout)
    assert stopped["state"] == "stopped" and stopped["recording"], stopped
    recordings = [a for a in stage.json("ls") if a["cid"] == stopped["recording"]]
    assert recordings and "stage" in recordings[0]["tags"]
    wait_until(lambda: any(r["state"] == "ended" for r in json.loads(edge1.cli("live", "ls", "--json").stdout)),
               20, "the edge to hear the stream ended")


def test_live_cli_refuses_bad_requests_in_one_line(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "live-cli", "--node-name", "org")
    for args, expected in [
        (("live", "start", "bad name!", "--listen", "rtmp://127.0.0.1:1/x"), b"not a stream name"),
        (("live", "start", "s"), b"give one of --listen"),
        (("live", "start", "s", "--input", "x.ts", "--segment-s", "30"), b"--segment-s"),
        (("live", "stop", "nothing"), b"no stream 'nothing' runs here"),
        (("live", "relay", "s", "http://x"), b"must be rtmp:// or rtmps://"),
        (("live", "ls"), b"no agent is running"),
    ]:
        result = org.cli(*args, check=False)
        assert result.returncode != 0 and expected in result.stderr, (args, result.stderr)
        assert b"Traceback" not in result.stderr


def test_a_phone_browser_plays_the_edge_page_and_is_told_when_a_stream_is_not_live(stage_and_edges) -> None:
    import shutil

    playwright = pytest.importorskip("playwright.sync_api")
    from tests.test_web_browser import CHROMIUM, CHROMIUM_ARGS

    if not shutil.which(CHROMIUM):
        pytest.skip(f"needs {CHROMIUM}")
    nodes, ports = stage_and_edges
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/stage"
    nodes["stage"].cli("live", "start", "main-stage", "--listen", rtmp, "--segment-s", str(SEGMENT_S))
    camera = spawn_test_stream(rtmp, STREAM_S, keyframe_interval_s=SEGMENT_S)
    try:
        wait_until(lambda: len(playlist(ports["edge1"])) >= 3, 40, "edge1 to serve 3 live segments")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"])
            try:
                page = browser.new_page(viewport={"width": 390, "height": 844})
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{ports['edge1']}/live/main-stage")
                playing = "() => document.getElementById('player').currentTime"
                wait_until(lambda: page.evaluate(playing) > 2, 40, "the video to play 2 s")
                first = page.evaluate(playing)
                page.wait_for_timeout(2000)
                assert page.evaluate(playing) > first + 1
                assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
                other = browser.new_page(viewport={"width": 390, "height": 844})
                other.goto(f"http://127.0.0.1:{ports['edge1']}/live/no-such-stream")
                said = "() => document.getElementById('live-state').textContent"
                wait_until(lambda: "not live" in other.evaluate(said), 15, "the page to say the stream is not live")
            finally:
                browser.close()
    finally:
        camera.kill()
        camera.wait()


def test_an_edge_relays_the_stream_and_reconnects_when_the_endpoint_restarts(stage_and_edges) -> None:
    from mesh.testing.livestream import RtmpSink

    nodes, ports = stage_and_edges
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/stage"
    nodes["stage"].cli("live", "start", "main-stage", "--listen", rtmp, "--segment-s", str(SEGMENT_S))
    camera = spawn_test_stream(rtmp, STREAM_S, keyframe_interval_s=SEGMENT_S)
    uplink = f"rtmp://127.0.0.1:{free_port()}/live/out"
    sink = RtmpSink(uplink).start()
    try:
        wait_until(lambda: len(playlist(ports["edge1"])) >= 2, 40, "edge1 to serve live segments")
        nodes["edge1"].cli("live", "relay", "main-stage", uplink)
        assert sink.wait_video_packets(25, 30), "the relay sent no video"
        assert "h264" in sink.codecs
        sink.close()  # the endpoint goes away ...
        time.sleep(2)
        sink = RtmpSink(uplink).start()  # ... and comes back
        assert sink.wait_video_packets(25, 40), "the relay did not reconnect"
        status_file = nodes["edge1"].home / "live" / "main-stage.relay.status.json"
        wait_until(lambda: json.loads(status_file.read_text())["state"] == "live", 20, "the relay to report live")
        assert json.loads(status_file.read_text())["url"] == uplink
        nodes["edge1"].cli("live", "relay", "main-stage", "--off")
    finally:
        sink.close()
        camera.kill()
        camera.wait()
