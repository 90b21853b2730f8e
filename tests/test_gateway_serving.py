"""How the local CDN sends bytes, over real HTTP against a running `mesh up`: a chunk damaged on
disk is never served (the response fails or ends short), ranges across chunk boundaries, HEAD,
the middlewares' headers and counts on the fast path, and the serving buffers coming back after
browsers go away mid-download; plus the buffer pool's own rules."""

from __future__ import annotations

import hashlib
import http.client
import os
import sqlite3
import time

import pytest
import trio

from mesh.errors import MeshError
from mesh.gateway.app import BufferPool
from tests.agents import HttpClient as Client
from tests.agents import Node, free_port, stop_all, wait_until

CLIP_BYTES = 2_500_000  # three chunks (1 MiB, 1 MiB, the rest)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gwserve")
    org = Node(root / "org")
    org.cli("init", "gw-serve")
    files = {}
    for name in ("clip.mp4", "broken-first.mp4", "broken-middle.mp4"):
        data = hashlib.shake_256(name.encode()).digest(CLIP_BYTES)
        (root / name).write_bytes(data)
        files[name] = (org.json("add", str(root / name))[0]["cid"], data)
    (root / "empty.txt").write_bytes(b"")
    files["empty.txt"] = (org.json("add", str(root / "empty.txt"))[0]["cid"], b"")
    port = free_port()
    org.start("--no-mdns", "--http", f"127.0.0.1:{port}")
    client = Client(port)
    wait_until(lambda: client.get("/healthz")[0] == 200, 20, "http to come up")
    yield {"org": org, "port": port, "client": client, "files": files}
    stop_all([org])


def _chunks(org: Node, cid: str) -> list[str]:
    with sqlite3.connect(org.home / "store" / "index.sqlite") as db:
        rows = db.execute("SELECT chunk FROM object_chunks WHERE object = ? ORDER BY seq", (cid,)).fetchall()
    return [chunk for (chunk,) in rows]


def _damage(org: Node, chunk: str) -> None:
    """Flip one byte of a chunk's file in place (same size: only its checksum can tell)."""
    path = org.home / "store" / "chunks" / chunk[-2:] / chunk
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _get_raw(port: int, path: str, **headers) -> tuple[int, dict, bytes, bool]:
    """(status, headers, the bytes that came, whether the body was complete)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    response = conn.getresponse()
    try:
        body, complete = response.read(), True
    except http.client.IncompleteRead as short:
        body, complete = short.partial, False
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body, complete


def test_a_damaged_middle_chunk_ends_the_response_short(node) -> None:
    cid, data = node["files"]["broken-middle.mp4"]
    assert node["client"].get(f"/c/{cid}")[2] == data  # served whole while intact (and cached)
    _damage(node["org"], _chunks(node["org"], cid)[1])
    status, headers, body, complete = _get_raw(node["port"], f"/c/{cid}")
    assert status == 200 and headers["content-length"] == str(CLIP_BYTES)
    assert not complete and len(body) < CLIP_BYTES
    assert body == data[:len(body)]  # what came is the good prefix, never the damaged bytes
    assert len(body) <= 1024 * 1024  # nothing of the damaged chunk or after it


def test_a_damaged_first_chunk_answers_500_and_no_bytes(node) -> None:
    cid, _ = node["files"]["broken-first.mp4"]
    _damage(node["org"], _chunks(node["org"], cid)[0])
    status, headers, body, _ = _get_raw(node["port"], f"/c/{cid}")
    assert status == 500 and b"integrity" in body
    assert headers["cache-control"] == "no-store" and "content-security-policy" in headers
    # A range starting in the intact second chunk is still served, exactly.
    status, _, body, complete = _get_raw(node["port"], f"/c/{cid}", range="bytes=1048576-1048675")
    assert status == 206 and complete and len(body) == 100


@pytest.mark.parametrize("first, last", [
    (1048570, 1048585),  # across the first chunk boundary
    (1000, 2400000),  # all three chunks, partly
    (2097152, 2097152),  # the first byte of the last chunk
])
def test_ranges_across_chunk_boundaries(node, first: int, last: int) -> None:
    cid, data = node["files"]["clip.mp4"]
    status, headers, body, complete = _get_raw(node["port"], f"/c/{cid}", range=f"bytes={first}-{last}")
    assert status == 206 and complete and body == data[first:last + 1]
    assert headers["content-range"] == f"bytes {first}-{last}/{CLIP_BYTES}"


def test_head_and_fast_path_headers(node) -> None:
    cid, data = node["files"]["clip.mp4"]
    status, headers, body = node["client"].request("HEAD", f"/c/{cid}")
    assert status == 200 and body == b"" and headers["content-length"] == str(CLIP_BYTES)
    status, headers, body = node["client"].get(f"/c/{cid}")
    assert status == 200 and body == data
    assert headers["etag"] == f'"{cid}"' and headers["accept-ranges"] == "bytes"
    assert "immutable" in headers["cache-control"] and headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert node["client"].get(f"/c/{cid}", if_none_match=f'"{cid}"')[0] == 304


def test_an_empty_file(node) -> None:
    cid, _ = node["files"]["empty.txt"]
    status, headers, body, complete = _get_raw(node["port"], f"/c/{cid}")
    assert status == 200 and complete and body == b"" and headers["content-length"] == "0"
    assert headers["content-type"] == "text/plain; charset=utf-8"


def test_fast_path_requests_are_counted_and_foreign_hosts_refused(node) -> None:
    cid, _ = node["files"]["clip.mp4"]

    def counted(method: str, status: str) -> float:
        text = node["client"].get("/metrics")[2].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("mesh_http_requests_total{") and 'route="c"' in line
                   and f'status="{status}"' in line and f'method="{method}"' in line)

    time.sleep(0.3)  # earlier tests' responses are counted as they finish
    before = counted("HEAD", "200"), counted("GET", "206")
    for _ in range(3):
        assert node["client"].request("HEAD", f"/c/{cid}")[0] == 200
        assert node["client"].get(f"/c/{cid}", range="bytes=0-9")[0] == 206
    wait_until(lambda: (counted("HEAD", "200"), counted("GET", "206")) == (before[0] + 3, before[1] + 3), 5,
               "the requests to be counted")
    status, _, body = node["client"].get(f"/c/{cid}", host="attacker.example")
    assert status == 421 and b"does not answer" in body


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_buffers_and_files_come_back_after_browsers_leave_mid_download(node) -> None:
    cid, data = node["files"]["clip.mp4"]
    pid = node["org"].proc.pid
    assert node["client"].get(f"/c/{cid}")[2] == data
    files_before = _open_files(pid)
    for _ in range(48):  # more than the pool's buffers, were any kept by an abandoned response
        conn = http.client.HTTPConnection("127.0.0.1", node["port"], timeout=15)
        conn.request("GET", f"/c/{cid}")
        assert conn.getresponse().read(100_000) == data[:100_000]
        conn.close()
    began = time.monotonic()
    status, _, body = node["client"].get(f"/c/{cid}")
    assert status == 200 and body == data and time.monotonic() - began < 5
    # ... and the chunk files large pieces are sent from (os.sendfile) are closed, not leaked
    wait_until(lambda: _open_files(pid) <= files_before + 2, 5, "the abandoned responses' files to close")


# ---- the buffer pool ----------------------------------------------------------------------------


def test_pool_waits_for_room_and_refuses_what_never_fits() -> None:
    async def main() -> None:
        pool = BufferPool(4 * 1024, 1024)
        held = await pool.take(3 * 1024)
        assert len(held) == 3 and all(len(buffer) == 1024 for buffer in held)
        got = []

        async def second() -> None:
            got.append(await pool.take(2 * 1024))  # waits: only one buffer is free

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.sleep(0.05)
            assert got == []
            pool.give_back(held)
        assert len(got[0]) == 2
        with pytest.raises(MeshError):
            await pool.take(5 * 1024)
        assert len(await pool.take(0)) == 1  # an empty chunk still takes one buffer

    trio.run(main)
