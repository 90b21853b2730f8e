"""The importer behind `mesh add` and ingest: files, thumbnails and preview clips, one state transaction."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import av
import pytest
from PIL import Image

from mesh.drivers.filestore import FileStore
from mesh.drivers.home import Home
from mesh.drivers.importer import import_files, record_imports, store_files
from mesh.drivers.statefile import StateFile
from mesh.errors import StoreError
from mesh.state.document import actor_id
from tests.conftest import run_mesh
from tests.test_previews import assert_clip, assert_poster, synth_video


def _records(home: Path) -> dict:
    """Asset records by name, read from the home's state file (`mesh ls --json` omits the preview)."""
    state = StateFile(Home.open(home).state_path).load(actor_id("test-reader", os.urandom(8)))
    return {record.name: record for record in state.assets()}


def _cat(home: Path, cid: str) -> bytes:
    result = run_mesh("cat", cid, home=home)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    synth_video(root / "stage.mp4", seconds=2, audio=True)
    Image.new("RGB", (1200, 800), (10, 120, 200)).save(root / "photo.jpg")
    (root / "notes.txt").write_text("set list\n")
    (root / "broken.mp4").write_bytes(b"\0\0\0\x18ftypisom" + b"\x11" * 5000)
    return root


def test_mesh_add_of_a_video_records_a_poster_and_a_preview_clip(org_home: Path, media: Path) -> None:
    result = run_mesh("add", media, "--tag", "Stage", "--json", home=org_home)
    assert result.returncode == 0, result.stderr.decode()
    listed = json.loads(result.stdout)
    assert {Path(item["path"]).name for item in listed} == {"stage.mp4", "photo.jpg", "notes.txt", "broken.mp4"}
    assert all(item["tags"] == ["stage"] for item in listed)
    records = _records(org_home)
    video = records["stage.mp4"]
    assert video.thumbnail and video.preview
    assert_poster(_cat(org_home, video.thumbnail), 640 / 360)
    clip = _cat(org_home, video.preview)
    assert_clip(clip, audio=True)
    with av.open(io.BytesIO(clip)) as container:
        assert container.streams.video[0].codec_context.height == 360
    photo = records["photo.jpg"]
    assert photo.preview is None and Image.open(io.BytesIO(_cat(org_home, photo.thumbnail))).size == (320, 213)
    for name in ("notes.txt", "broken.mp4"):
        assert records[name].thumbnail is None and records[name].preview is None
    ls = {item["name"]: item for item in json.loads(run_mesh("ls", "--json", home=org_home).stdout)}
    assert ls["stage.mp4"]["thumbnail"] == video.thumbnail


def test_a_new_add_keeps_what_it_does_not_give(tmp_path: Path, media: Path) -> None:
    store, statefile = FileStore(tmp_path / "store"), StateFile(tmp_path / "state")
    actor = actor_id("node-a", os.urandom(8))
    first = import_files(store, statefile, actor, "node-a", [media / "stage.mp4"], ["a"], retention_s=3600.0, now=100.0)
    again = store_files(store, "node-a", [media / "stage.mp4"], ["b"], now=200.0)
    again = [replace(item, record=replace(item.record, thumbnail=None, preview=None))
             for item in again]  # as if this add could not make previews
    assert again[0].cid == first[0].cid and again[0].new_bytes == 0
    (kept,) = record_imports(statefile, actor, again, keep_added_at=True)
    assert kept.retention_s == 3600.0 and kept.added_at == 100.0
    assert kept.thumbnail == first[0].record.thumbnail and kept.preview == first[0].record.preview
    state = statefile.load(actor)
    assert state.asset(first[0].cid).tags == frozenset({"a", "b"})
    (later,) = record_imports(statefile, actor, again)  # `mesh add`: the time of this add
    assert later.added_at == 200.0
    store.close()


def test_a_failed_file_keeps_nothing_of_its_batch(tmp_path: Path, media: Path) -> None:
    store, statefile = FileStore(tmp_path / "store"), StateFile(tmp_path / "state")
    actor = actor_id("node-a", os.urandom(8))
    with pytest.raises(StoreError):
        import_files(store, statefile, actor, "node-a", [media / "photo.jpg", tmp_path / "vanished.jpg"])
    assert statefile.load(actor).assets() == []
    store.close()
