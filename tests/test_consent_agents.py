"""Real processes: a consent revocation made at the door empties the camera node's store."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.agents import make_mesh, stop_all, wait_until

CONVERGE_S = 20


def test_revocation_on_another_node_purges_the_media_where_it_is_stored(tmp_path: Path) -> None:
    cam, (door,) = make_mesh(tmp_path, 1)
    cam.cli("policy", "set", "photo", "--default", "grant", "--describe", "Photos of you may be shown")
    code = cam.cli("consent", "new-code").stdout.decode().strip()
    shot, other = tmp_path / "shot-0412.jpg", tmp_path / "poster.jpg"
    shot.write_bytes(hashlib.shake_256(b"shot").digest(600_000))
    other.write_bytes(hashlib.shake_256(b"poster").digest(300_000))
    shot_cid = cam.json("add", str(shot), "--subject", code, "--tag", "stage-a")[0]["cid"]
    other_cid = cam.json("add", str(other), "--tag", "stage-a")[0]["cid"]
    config = tmp_path / "cam.toml"
    config.write_text("gc_interval_s = 0.5\nmdns = false\n")
    try:
        cam.start("--config", str(config))
        door.start("--no-mdns", "--peer", cam.address)
        wait_until(lambda: door.tags_of(shot_cid) == {"stage-a"}, CONVERGE_S, "the door to see the shot")
        assert cam.cli("cat", shot_cid).stdout == shot.read_bytes()

        door.cli("consent", "revoke", code, "photo")
        wait_until(lambda: cam.cli("cat", shot_cid, check=False).returncode != 0, CONVERGE_S,
                   "the camera node to purge the shot")
        assert cam.tags_of(shot_cid) is None and door.tags_of(shot_cid) is None  # hidden everywhere
        assert cam.cli("cat", other_cid).stdout == other.read_bytes()  # the rest is untouched
        assert "store.purged" in cam.log()
    finally:
        stop_all([cam, door])
