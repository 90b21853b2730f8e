"""Real processes: captured media flows to the edges by tag, is fetched on demand where it is not
pinned, and media waiting for its subject's consent stays on its capturer, off the wire."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.agents import Node, free_port, http_status, make_mesh, stop_all, wait_until

FLOW_S = 30  # generous for a loaded 2-core machine; a LAN moves these in well under a second


def photo(path: Path, seed: str, size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A real JPEG (so it gets a thumbnail), with noise so it does not compress to nothing."""
    from PIL import Image

    noise = hashlib.shake_256(seed.encode()).digest(size[0] * size[1] * 3 // 16)
    image = Image.frombytes("RGB", (size[0] // 4, size[1] // 4), noise).resize(size)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    path.write_bytes(out.getvalue())
    return out.getvalue()


def get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"GET {url}: {exc.code} {exc.read()[:300]!r}") from None


def record(node: Node, name: str) -> dict | None:
    return next((r for r in node.json("ls") if r["name"] == name), None)


def start_all(org: Node, stage: Node, edges: list[Node], stage_args: tuple[str, ...] = ()) -> dict[Node, int]:
    http = {node: free_port() for node in (org, stage, *edges)}
    org.start("--no-mdns", "--http", f"127.0.0.1:{http[org]}")
    stage.start("--no-mdns", "--peer", org.address, "--http", f"127.0.0.1:{http[stage]}", *stage_args)
    for edge in edges:
        edge.start("--no-mdns", "--peer", org.address, "--peer", stage.address, "--http", f"127.0.0.1:{http[edge]}")
    return http


def test_a_watched_folder_reaches_two_edges_and_unpinned_media_streams_on_demand(tmp_path: Path) -> None:
    org, (stage, edge1, edge2) = make_mesh(tmp_path, 3)
    org.cli("tags", "set", "music", "merch", "stage", "--describe", "stage=Live from the main stage")
    drop = tmp_path / "camera"
    drop.mkdir()
    config = tmp_path / "stage.toml"
    config.write_text(f'mdns = false\n[[ingest]]\npath = "{drop}"\ntags = ["stage"]\nsettle_s = 0.5\n')
    crowd = photo(tmp_path / "crowd-0001.jpg", "crowd", (2400, 1600))
    crowd_cid = stage.json("add", str(tmp_path / "crowd-0001.jpg"), "--tag", "crowd")[0]["cid"]
    http = {}
    try:
        http = start_all(org, stage, [edge1, edge2], ("--config", str(config)))
        shot = photo(drop / "shot-0412.jpg", "shot")
        found = wait_until(lambda: record(edge2, "shot-0412.jpg"), FLOW_S, "the shot in the edges' catalogue")
        for edge in (edge1, edge2):
            base = f"http://127.0.0.1:{http[edge]}"
            wait_until(lambda: edge.json("status")["media"]["held"] >= 3, FLOW_S, f"{edge.home.name} to hold the media")
            assert get(f"{base}/c/{found['cid']}") == shot
            thumb = get(f"{base}/c/{found['thumbnail']}")
            assert thumb.startswith(b"\xff\xd8") and len(thumb) < len(shot)
            assert found["thumbnail"] in get(f"{base}/").decode(), "the main page shows the thumbnail"
        # Unpinned ("crowd" is not canonical): edges hold its thumbnail, not the original...
        assert edge1.cli("cat", crowd_cid, check=False).returncode != 0
        # ...until a browser asks: it streams from the peers that hold it, verified.
        assert get(f"http://127.0.0.1:{http[edge1]}/c/{crowd_cid}") == crowd
        assert edge1.cli("cat", crowd_cid).stdout == crowd, "kept here afterwards (evicted when space runs short)"
        status = edge1.json("status")["media"]
        assert status["wanted"] == status["held"] and status["budget"] > 0
        unknown = "bafkr4ieukjgkcvgh6pp2bb7ni3yejoji44cq5luh3yvfdfzyyqocxzbkke"
        assert http_status(f"http://127.0.0.1:{http[edge1]}/c/{unknown}") == 404
    finally:
        stop_all([org, stage, edge1, edge2])


def test_media_pending_consent_never_leaves_its_capturer_and_survives_until_granted(tmp_path: Path) -> None:
    org, (stage, edge1) = make_mesh(tmp_path, 2)
    org.cli("tags", "set", "music", "merch", "stage")
    code = org.cli("consent", "new-code").stdout.decode().split()[0]
    shot = photo(tmp_path / "shot-0001.jpg", "pending")
    cid = stage.json("add", str(tmp_path / "shot-0001.jpg"), "--tag", "stage", "--subject", code)[0]["cid"]
    config = tmp_path / "fast-gc.toml"
    config.write_text("mdns = false\ngc_interval_s = 0.5\n")
    http = {}
    try:
        http = start_all(org, stage, [edge1], ("--config", str(config)))
        wait_until(lambda: edge1.json("status")["state"]["heads"] == stage.json("status")["state"]["heads"],
                   FLOW_S, "the edge to catch up with the stage's state")
        time.sleep(3)  # several purge passes on the stage; the edge had every chance to ask
        assert stage.cli("cat", cid).stdout == shot, "held on its capturer, not destroyed"
        for node in (edge1, org):
            assert node.cli("cat", cid, check=False).returncode != 0, f"{node.home.name} must not hold it"
            assert http_status(f"http://127.0.0.1:{http[node]}/c/{cid}") in (404, 410)
        assert http_status(f"http://127.0.0.1:{http[stage]}/c/{cid}") == 410, "not served even where it is held"
        sent = sum(p.get("bytes_out", 0) for p in stage.json("status")["peers"])
        assert sent < len(shot), "its bytes never crossed the wire"

        edge1.cli("consent", "grant", code, "photo")
        wait_until(lambda: edge1.cli("cat", cid, check=False).stdout == shot, FLOW_S, "granted: on the edge")
        assert get(f"http://127.0.0.1:{http[edge1]}/c/{cid}") == shot
    finally:
        stop_all([org, stage, edge1])
