"""Serving an asset over HTTP counts a view per tag in the shared counters, and only full reads
count (not HEAD, not a 304, not a Range that starts past byte 0): a real `mesh up` process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents import Node, free_port, http_status, wait_until


@pytest.mark.slow  # starts an agent and waits for one view flush
def test_full_reads_count_one_view_per_tag_and_nothing_else_does(tmp_path: Path) -> None:
    node = Node(tmp_path / "org")
    node.cli("init", "popup-views", "--node-name", "org")
    (tmp_path / "poster.jpg").write_bytes(b"\xff\xd8" + bytes(range(256)) * 200)
    cid = node.json("add", str(tmp_path / "poster.jpg"), "--tag", "merch", "--tag", "stage-a")[0]["cid"]
    http = free_port()
    node.start("--no-mdns", "--http", f"127.0.0.1:{http}")
    try:
        url = f"http://127.0.0.1:{http}/c/{cid}"
        wait_until(lambda: http_status(f"http://127.0.0.1:{http}/healthz") == 200, 20, "http up")
        assert http_status(url) == 200
        assert http_status(url, headers={"Range": "bytes=0-99"}) == 206  # starts at 0: a view
        assert http_status(url, method="HEAD") == 200
        assert http_status(url, headers={"Range": "bytes=100-199"}) == 206
        assert http_status(url, headers={"If-None-Match": f'"{cid}"'}) == 304
        wait_until(lambda: node.json("stats")["tags"].get("merch") == 2, 20,
                   "two views of merch in the shared counters")
        views = node.json("stats")["tags"]
        assert views == {"merch": 2, "stage-a": 2}
    finally:
        node.stop()
