"""The local CDN routes of a running node: /c/CID and /release/current/PATH over real HTTP."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import pytest

from tests.agents import Node, free_port, stop_all, wait_until


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gw")
    org = Node(root / "org")
    org.cli("init", "gw-test")
    data = hashlib.shake_256(b"clip").digest(2_500_000)  # three chunks and a manifest
    (root / "site").mkdir()
    (root / "site" / "clip.mp4").write_bytes(data)
    (root / "site" / "index.html").write_bytes(b"<h1>hello</h1>")
    made = org.json("release", "create", "gw", str(root / "site"))
    org.cli("release", "publish", made["id"])
    cid = org.json("add", str(root / "site" / "clip.mp4"))[0]["cid"]
    port = free_port()
    org.start("--no-mdns", "--http", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(f"{base}/healthz")[0] == 200, 20, "http to come up")
    yield base, cid, data
    stop_all([org])


def test_whole_file_by_cid_with_immutable_caching(node) -> None:
    base, cid, data = node
    status, headers, body = _get(f"{base}/c/{cid}")
    assert status == 200 and body == data
    assert headers["etag"] == f'"{cid}"' and "immutable" in headers["cache-control"]
    assert headers["content-type"] == "video/mp4"


@pytest.mark.parametrize("header, start, end", [
    ("bytes=0-0", 0, 1),
    ("bytes=10-19", 10, 20),
    ("bytes=1048570-1048580", 1048570, 1048581),  # across a chunk boundary
    ("bytes=2499990-", 2499990, 2500000),
    ("bytes=-5", 2499995, 2500000),
    ("bytes=500000-9999999", 500000, 2500000),  # end past the file is clamped
])
def test_ranges(node, header: str, start: int, end: int) -> None:
    base, cid, data = node
    status, headers, body = _get(f"{base}/c/{cid}", {"Range": header})
    assert status == 206 and body == data[start:end]
    assert headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"


def test_unsatisfiable_range_head_and_conditional_get(node) -> None:
    base, cid, data = node
    assert _get(f"{base}/c/{cid}", {"Range": "bytes=2500000-"})[0] == 416
    status, headers, body = _get(f"{base}/c/{cid}", method="HEAD")
    assert status == 200 and headers["content-length"] == str(len(data)) and body == b""
    assert _get(f"{base}/c/{cid}", {"If-None-Match": f'"{cid}"'})[0] == 304


def test_unknown_and_malformed_cids(node) -> None:
    base, _, _ = node
    assert _get(f"{base}/c/bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")[0] == 404
    assert _get(f"{base}/c/not-a-cid")[0] == 400


def test_current_release_paths_and_status(node) -> None:
    base, _, data = node
    status, headers, body = _get(f"{base}/release/current/clip.mp4")
    assert status == 200 and body == data and headers["cache-control"] == "no-cache"
    assert _get(f"{base}/release/current/index.html")[2] == b"<h1>hello</h1>"
    assert _get(f"{base}/release/current/missing.html")[0] == 404
    assert _get(f"{base}/release/current/")[2] == b"<h1>hello</h1>", "a directory answers its index.html"
    status, _, body = _get(f"{base}/api/status")
    doc = json.loads(body)
    assert status == 200 and doc["release"]["complete"] is True
    assert "peers" not in doc and "members" not in doc and "node_id" not in doc  # crew-only
