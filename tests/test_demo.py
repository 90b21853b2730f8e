"""`mesh demo`: starts three nodes on loopback, serves each node's pages, stops cleanly on a signal."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import mesh_env

READY_S = 90  # set-up, three agents, the edges fetching the release (2 cores, shared)
STOP_S = 25  # the demo stops its agents (SIGTERM each, 15 s grace at most) and exits


def _read_until_ready(proc: subprocess.Popen, timeout_s: float) -> list[str]:
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"demo exited early ({proc.returncode}): {proc.stderr.read().decode()}")
        if not selector.select(timeout=0.5):
            continue
        data = os.read(proc.stdout.fileno(), 65536)
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
        if any(line.startswith("demo ready") for line in lines):
            return lines
    raise AssertionError(f"demo not ready after {timeout_s}s: {lines}")


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.parametrize("sig, keep_dir", [
    (signal.SIGINT, False),
    pytest.param(signal.SIGTERM, True, marks=pytest.mark.slow),
])
def test_demo_serves_every_node_then_stops_cleanly(tmp_path: Path, sig: int, keep_dir: bool) -> None:
    argv = [sys.executable, "-m", "mesh", "demo"] + (["--dir", str(tmp_path / "demo")] if keep_dir else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mesh_env(),
                            start_new_session=True)
    agent_pids: list[int] = []
    try:
        lines = _read_until_ready(proc, READY_S)
        urls = [m.group(1) for line in lines if (m := re.match(r"\s+\S+\s+(http://127\.0\.0\.1:\d+/)", line))]
        assert len(urls) == 3, lines
        for url in urls:
            status, page = _get(url + "release/current/index.html")
            assert status == 200 and b"AssetMesh demo" in page
            status, image = _get(url + "release/current/poster-main-stage.png")
            assert status == 200 and image.startswith(b"\x89PNG")
            status, body = _get(url + "api/status")
            doc = json.loads(body)
            assert doc["release"]["complete"] is True
            agent_pids.append(doc["pid"])
        assert len(set(agent_pids)) == 3
        os.kill(proc.pid, sig)  # like Ctrl-C at a terminal (the agents run in their own sessions)
        _, err = proc.communicate(timeout=STOP_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pid in agent_pids:
                os.killpg(pid, signal.SIGKILL)
    text = err.decode()
    assert proc.returncode == 0, text
    assert "demo: stopped" in text and "Traceback" not in text
    for pid in agent_pids:  # every agent process is gone (reaped by the demo)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    home_line = re.search(r"homes and logs in (\S+)", text)
    assert home_line is not None
    assert Path(home_line.group(1)).exists() == keep_dir  # a temporary directory is removed
