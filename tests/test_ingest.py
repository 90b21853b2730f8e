"""Ingest: files a camera writes into a watched folder become assets once complete, exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mesh.drivers.filestore import FileStore
from mesh.drivers.home import Home
from mesh.drivers.settings import config_from_dict
from mesh.drivers.statefile import StateFile
from mesh.state.consent import new_subject_code
from mesh.state.document import actor_id
from tests.agents import Node, free_port, wait_until
from tests.conftest import assert_one_line_error, mesh_env, run_mesh

SETTLE_S = "0.6"  # short for tests; pieces below arrive faster than this


class Watcher:
    """A `mesh watch DIR --json` process; its JSON lines read by a thread."""

    def __init__(self, home: Path, folder: Path, *extra: str, settle_s: str = SETTLE_S) -> None:
        cmd = [sys.executable, "-m", "mesh", "--home", str(home), "watch", str(folder), "--json",
               "--settle-s", settle_s, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mesh_env())
        self.lines: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout_s: float = 20) -> dict:
        try:
            item = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no import within {timeout_s}s: {self.stop()}") from None
        self.seen.append(item)
        return item

    def drain(self) -> set[str]:
        """CIDs of every line printed (after the process ended)."""
        self.reader.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return {item["cid"] for item in self.seen}

    def stop(self, sig: int = signal.SIGINT) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(15)
        return self.proc.stderr.read().decode()


def _assets(home: Path) -> dict[str, object]:
    """Every asset record by CID, from the state file (`mesh ls` hides assets naming a subject)."""
    state = StateFile(Home.open(home).state_path).load(actor_id("test-reader", os.urandom(8)))
    return {record.cid: record for record in state.assets()}


def _once(home: Path, folder: Path, *extra: str) -> list[dict]:
    result = run_mesh("watch", folder, "--once", "--json", "--settle-s", SETTLE_S, *extra, home=home)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


def _cat(home: Path, cid: str) -> bytes:
    result = run_mesh("cat", cid, home=home)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_a_file_written_slowly_is_imported_once_complete_and_never_again(org_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "card" / "DCIM" / "100CANON"
    folder.mkdir(parents=True)
    watcher = Watcher(org_home, tmp_path / "card", "--tag", "Cam A", settle_s="1.0")  # gaps: 0.15 s
    try:
        time.sleep(0.5)  # the watcher is starting (its first scan may see a part of the file: fine)
        pieces = [os.urandom(64 * 1024) for _ in range(8)]
        with open(folder / "IMG_0001.JPG", "wb") as handle:
            for piece in pieces:
                handle.write(piece)
                handle.flush()
                time.sleep(0.15)
                assert _assets(org_home) == {}, "imported before the file was complete"
        whole = b"".join(pieces)
        item = watcher.next()
        assert item["path"] == str(folder / "IMG_0001.JPG") and item["size"] == len(whole)
        assert item["tags"] == ["cam-a"] and item["subject"] is None
        (record,) = _assets(org_home).values()
        assert record.cid == item["cid"] and record.size == len(whole) and record.tags == {"cam-a"}
        assert _cat(org_home, item["cid"]) == whole
        (folder / ".IMG_0002.JPG.part").write_bytes(b"half")  # temp names are never imported
        (folder / "IMG_0003.JPG.crdownload").write_bytes(b"half")
        os.utime(folder / "IMG_0001.JPG", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
        assert watcher.next()["cid"] == item["cid"]  # read again: the same asset
    finally:
        watcher.stop()
    assert watcher.proc.returncode == 0
    assert list(_assets(org_home)) == [item["cid"]] and _assets(org_home)[item["cid"]].added_at == record.added_at
    assert _once(org_home, tmp_path / "card") == []  # restarted: nothing new
    assert list(_assets(org_home)) == [item["cid"]]


def test_files_written_while_no_watcher_ran_are_imported_at_start(org_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    (folder / "day1").mkdir(parents=True)
    (folder / "day1" / "a.jpg").write_bytes(b"a" * 5000)
    (folder / "b.mov").write_bytes(b"not really a video")
    (folder / ".DS_Store").write_bytes(b"x")
    imported = _once(org_home, folder, "--retention", "7d")
    assert sorted(Path(item["path"]).name for item in imported) == ["a.jpg", "b.mov"]
    assert {record.retention_s for record in _assets(org_home).values()} == {7 * 86400.0}
    assert _once(org_home, folder) == []


def test_subject_pattern_gives_each_file_its_code(org_home: Path, tmp_path: Path) -> None:
    code = new_subject_code(random.Random(7))
    folder = tmp_path / "booth"
    folder.mkdir()
    (folder / f"portrait_{code.lower()}_01.jpg").write_bytes(b"p" * 3000)
    (folder / "crowd_ZZZZ-ZZZZ.jpg").write_bytes(b"q" * 3000)  # not a valid code: no subject
    (folder / "stage.jpg").write_bytes(b"r" * 3000)
    imported = {Path(item["path"]).name: item for item in
                _once(org_home, folder, "--subject-pattern", r"_(?P<subject>[0-9a-z]{4}-[0-9a-z]{4})")}
    assert imported[f"portrait_{code.lower()}_01.jpg"]["subject"] == code
    assert imported["crowd_ZZZZ-ZZZZ.jpg"]["subject"] is None and imported["stage.jpg"]["subject"] is None
    assets = _assets(org_home)
    assert assets[imported[f"portrait_{code.lower()}_01.jpg"]["cid"]].subjects == {code}
    assert assets[imported["stage.jpg"]["cid"]].subjects == frozenset()


def test_kill_9_mid_way_loses_nothing_and_duplicates_nothing(org_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ftp"
    folder.mkdir()
    contents = {f"clip-{index:03d}.bin": hashlib.shake_256(bytes([index])).digest(200_000) for index in range(24)}
    watcher = Watcher(org_home, folder)
    try:
        time.sleep(0.5)
        for name, data in contents.items():
            (folder / name).write_bytes(data)
            time.sleep(0.03)
        watcher.next()  # imports are under way
    finally:
        watcher.stop(signal.SIGKILL)
    printed = watcher.drain()  # each printed only after its ledger row was durable
    again = {item["cid"] for item in _once(org_home, folder)}
    assert not printed & again, "imported twice"
    assert set(_assets(org_home)) == _cids_of(tmp_path / "scratch", [folder / name for name in contents])
    assert _once(org_home, folder) == []
    assert run_mesh("verify", home=org_home).returncode == 0


def _cids_of(scratch: Path, paths: list[Path]) -> set[str]:
    """The CIDs these files have (computed by a scratch store, nothing recorded)."""
    store = FileStore(scratch)
    try:
        cids = {store.add_file(path, "scratch").cid for path in paths}
        store.discard()
        return cids
    finally:
        store.close()


def test_the_agent_ingests_its_configured_folders(org_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "stage-cam"
    config = tmp_path / "stage-box.toml"
    config.write_text(f'mdns = false\n\n[[ingest]]\npath = "{folder.name}"\ntags = ["Stage"]\nsettle_s = 0.5\n')
    node = Node(org_home, free_port()).start("--config", str(config))
    try:
        folder.mkdir()  # appears after the agent started (a card mounted)
        (folder / "DSC_0001.JPG").write_bytes(b"j" * 10_000)
        listed = wait_until(lambda: json.loads(run_mesh("ls", "--json", home=org_home).stdout), 20,
                            "the agent to import the file")
        assert [(item["name"], item["tags"]) for item in listed] == [("DSC_0001.JPG", ["stage"])]
    finally:
        node.stop()
    assert "ingest.imported" in node.log()


def test_watch_errors_are_one_line(org_home: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_mesh("watch", tmp_path / "camera", home=org_home),
                          f"{tmp_path / 'camera'}: no such directory")
    assert_one_line_error(run_mesh("watch", tmp_path, "--subject-pattern", "(", home=org_home),
                          "--subject-pattern is not a valid regular expression")
    assert_one_line_error(run_mesh("watch", org_home / "store", home=org_home), "inside the node's home")
    bad = tmp_path / "edge.toml"
    bad.write_text('[[ingest]]\npath = "cam"\nsubject_pattern = "(?P<subject>["\n')
    assert_one_line_error(run_mesh("up", "--config", bad, home=org_home),
                          "edge.toml: ingest[0].subject_pattern is not a valid regular expression")


@pytest.mark.parametrize(("table", "message"), [
    ({"path": "cam", "subject_pattern": "(("}, "ingest[0].subject_pattern is not a valid regular expression"),
    ({"path": "cam", "subject_pattern": "[0-9]+"}, "ingest[0].subject_pattern needs a group named subject"),
    ({"path": "cam", "colour": "red"}, "ingest[0].colour is not a known key"),
    ({"tags": ["a"]}, "ingest[0].path is missing"),
    ({"path": "cam", "retention": "soon"}, "ingest[0].retention must be a duration"),
    ({"path": "cam", "settle_s": -1}, "ingest[0].settle_s must be a positive number"),
    ({"path": "cam", "subject": "nope"}, "ingest[0].subject is not a subject code"),
    ({"path": "cam", "tags": ["no/slash"]}, "ingest[0].tags"),
    ({"path": "cam", "subject": "x", "subject_pattern": "(?P<subject>.)"},
     "ingest[0] takes subject or subject_pattern"),
])
def test_ingest_tables_are_checked_key_by_key(table: dict, message: str) -> None:
    from mesh.errors import UsageError

    with pytest.raises(UsageError) as caught:
        config_from_dict({"ingest": [table]}, Path("/etc/assetmesh/edge.toml"))
    text = str(caught.value)
    assert text.startswith("edge.toml: " + message) and "\n" not in text, text


def test_ingest_tables_parse(tmp_path: Path) -> None:
    code = new_subject_code(random.Random(1))
    config = config_from_dict({"ingest": [
        {"path": "cards/a", "tags": ["Stage Left"], "subject": code.lower(), "retention": "24h", "settle_s": 5},
        {"path": "/srv/ftp", "include": ["*.jpg"], "exclude": []},
    ]}, tmp_path / "box.toml")
    first, second = config.ingest
    assert first.path == tmp_path / "cards" / "a" and first.tags == ("stage-left",) and first.subject == code
    assert first.retention_s == 86400.0 and first.settle_s == 5.0 and "*.part" in first.exclude
    assert second.path == Path("/srv/ftp") and second.include == ("*.jpg",) and second.exclude == ()
    with pytest.raises(Exception, match=r"ingest\[1\].path overlaps ingest\[0\].path"):
        config_from_dict({"ingest": [{"path": "/srv"}, {"path": "/srv/ftp"}]}, tmp_path / "box.toml")


def test_the_shipped_stage_box_config_ingests_two_folders() -> None:
    from mesh.drivers.settings import load_config
    from tests.conftest import REPO

    ftp, card = load_config(REPO / "configs" / "stage-box.toml").ingest
    assert ftp.subject_pattern and "*.jpg" in ftp.include and ftp.retention_s == 30 * 86400.0
    assert card.tags == ("stage", "video") and card.settle_s == 2.0
    assert load_config(REPO / "configs" / "edge-node.toml").ingest == ()  # its example is commented out
