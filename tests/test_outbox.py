"""Store-and-forward outbox: retried with backoff against a local server that fails then succeeds,
visible in `mesh status`, and nothing lost across kill -9."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mesh.drivers.outbox import Outbox, deliver_one, outbox_path
from tests.agents import Node, wait_until


class Uplink:
    """A webhook on 127.0.0.1 that answers `fail_status` to the first `failures` POSTs, then 204."""

    def __init__(self, failures: int, fail_status: int = 503) -> None:
        self.failures = failures
        self.fail_status = fail_status
        self.received: list[dict] = []  # bodies accepted
        self.attempts: list[float] = []  # monotonic time of every POST
        uplink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                uplink.attempts.append(time.monotonic())
                if uplink.failures > 0:
                    uplink.failures -= 1
                    self.send_response(uplink.fail_status)
                else:
                    assert self.headers["Idempotency-Key"] == body["key"]
                    uplink.received.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def keys(self) -> set[str]:
        return {body["key"] for body in self.received}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def uplink():
    servers: list[Uplink] = []

    def make(failures: int, fail_status: int = 503) -> Uplink:
        servers.append(Uplink(failures, fail_status))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _drain(outbox: Outbox, url: str, until_s: float) -> None:
    deadline = time.monotonic() + until_s
    while outbox.stats(time.time())["pending"] and time.monotonic() < deadline:
        if deliver_one(outbox, url, "node-a", time.time(), 0.1, 0.4) is None:
            time.sleep(0.02)


def test_retries_with_exponential_backoff_then_delivers_in_order(tmp_path: Path, uplink) -> None:
    server = uplink(failures=4)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    keys = [outbox.put("event", {"event": "release.complete", "n": n}, time.time()) for n in range(3)]
    assert deliver_one(outbox, server.url, "node-a", time.time(), 0.1, 0.4) is False
    stats = outbox.stats(time.time())
    assert stats["pending"] == 3 and stats["last_error"] == "HTTP 503" and stats["oldest_s"] is not None
    _drain(outbox, server.url, 10)
    assert outbox.stats(time.time()) == {"pending": 0, "oldest_s": None, "last_error": None}
    assert [body["key"] for body in server.received] == keys  # oldest first, each once
    assert [body["body"]["n"] for body in server.received] == [0, 1, 2]
    gaps = [b - a for a, b in zip(server.attempts, server.attempts[1:5])]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.38  # 0.1, 0.2, 0.4 (the cap)
    assert gaps[3] < 0.8  # capped, not 0.8
    outbox.close()


def test_unreachable_service_and_bounded_queue(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", items_max=5)
    for n in range(8):
        outbox.put("event", {"n": n}, time.time())
    assert outbox.stats(time.time())["pending"] == 5  # the oldest three were dropped
    dead = "http://127.0.0.1:9/hook"  # discard port: nothing listens
    assert deliver_one(outbox, dead, "node-a", time.time(), 60, 60) is False
    assert "unreachable" in outbox.stats(time.time())["last_error"]
    assert deliver_one(outbox, dead, "node-a", time.time(), 60, 60) is None  # strict order: the head waits
    assert outbox.next_at() > time.time() + 50
    outbox.close()


def test_an_item_the_service_refuses_is_dropped_after_a_few_tries(tmp_path: Path, uplink) -> None:
    server = uplink(failures=5, fail_status=400)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.put("event", {"n": "poison"}, time.time())
    good = outbox.put("event", {"n": "fine"}, time.time())
    _drain(outbox, server.url, 10)
    assert [body["key"] for body in server.received] == [good]
    outbox.close()


def _agent_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(f"""
mdns = false
[health]
interval_s = 0.5
disk_free_min = "1MiB"
[outbox]
url = "{url}"
backoff_s_min = 0.2
backoff_s_max = 1
""")
    return path


def test_agent_queues_survive_kill_9_and_deliver_after_restart(tmp_path: Path, uplink) -> None:
    down = uplink(failures=10**9)  # the WAN is down
    node = Node(tmp_path / "hub")
    node.cli("init", "popup-test")
    try:
        node.start("--config", str(_agent_config(tmp_path, down.url)))
        status = wait_until(lambda: (node.json("status").get("outbox") or {}).get("last_error"), 20, "a failed delivery")
        assert "HTTP 503" in status
        outbox = node.json("status")["outbox"]
        assert outbox["pending"] >= 1
        node.stop(signal.SIGKILL)
        stored = Outbox(outbox_path(node.home))
        queued = set(stored.keys())
        stored.close()
        assert queued and not down.received
        assert node.json("status")["outbox"]["pending"] == len(queued)  # readable with the agent down
        up = uplink(failures=1)  # back, after one more failure
        node.start("--config", str(_agent_config(tmp_path, up.url)))
        wait_until(lambda: queued <= up.keys(), 20, "the queued items to reach the uplink")
        kinds = {body["kind"] for body in up.received}
        assert "health" in kinds
        assert all(body["node_id"] == node.node_id for body in up.received)
        wait_until(lambda: node.json("status")["outbox"]["pending"] == 0, 20, "the outbox to empty")
    finally:
        node.stop()
