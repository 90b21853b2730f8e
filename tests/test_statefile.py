"""StateFile: durability across processes, kill -9, torn logs and compaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mesh.drivers.statefile import LOG_HEADER_BYTES, StateFile
from mesh.state.document import MeshState, actor_id
from mesh.state.records import AssetRecord

REPO = Path(__file__).resolve().parents[1]


def actor(name: str) -> bytes:
    return actor_id(name, os.urandom(8))


def record(cid: str, tags=()) -> AssetRecord:
    return AssetRecord(
        cid=cid, name="a.jpg", size=1, media_type="image/jpeg", added_at=1.0, added_by="n",
        tags=frozenset(tags),
    )


def cids(state: MeshState) -> set[str]:
    return {r.cid for r in state.assets()}


def add(statefile: StateFile, cid: str, tags=()) -> None:
    with statefile.transaction(actor("cli")) as state:
        state.put_asset(record(cid, tags))


def test_round_trip(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    assert sf.load(actor("a")).assets() == []
    add(sf, "bafk1", {"stage"})
    add(sf, "bafk2")
    with sf.transaction(actor("cli")) as state:
        state.tag_asset("bafk1", add={"vip"})
        state.put_member("node-b", b"chain", "edge", "B", 2.0)
    loaded = StateFile(tmp_path).load(actor("b"))
    assert cids(loaded) == {"bafk1", "bafk2"}
    assert loaded.asset("bafk1").tags == {"stage", "vip"}
    assert loaded.members()[0].chain == b"chain"


def test_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    add(sf, "bafk1")
    size = sf.log_path.stat().st_size
    try:
        with sf.transaction(actor("cli")) as state:
            state.put_asset(record("bafk2"))
            raise RuntimeError("user aborted")
    except RuntimeError:
        pass
    assert sf.log_path.stat().st_size == size
    assert cids(sf.load(actor("x"))) == {"bafk1"}


def test_agent_reads_new_records_and_persists_its_own(tmp_path: Path) -> None:
    agent_file, cli_file = StateFile(tmp_path), StateFile(tmp_path)
    agent = agent_file.load(actor("agent"))
    assert agent_file.read_new(agent) is False
    add(cli_file, "bafk1")
    assert agent_file.read_new(agent) is True
    assert cids(agent) == {"bafk1"}
    assert agent_file.read_new(agent) is False
    agent.put_asset(record("bafk2"))  # e.g. arrived by sync
    add(cli_file, "bafk3")
    assert agent_file.persist(agent) is True  # read bafk3, wrote bafk2
    assert cids(agent) == {"bafk1", "bafk2", "bafk3"}
    size = agent_file.log_path.stat().st_size
    assert agent_file.persist(agent) is False
    assert agent_file.log_path.stat().st_size == size  # nothing new: nothing written
    assert cids(StateFile(tmp_path).load(actor("x"))) == {"bafk1", "bafk2", "bafk3"}


def test_readers_follow_a_compaction_by_another_process(tmp_path: Path) -> None:
    agent_file, cli_file = StateFile(tmp_path), StateFile(tmp_path)
    agent = agent_file.load(actor("agent"))
    add(cli_file, "bafk1")
    agent.put_asset(record("bafk-unsaved"))
    cli_file.compact()
    add(cli_file, "bafk2")
    assert agent_file.read_new(agent) is True
    assert cids(agent) == {"bafk1", "bafk2", "bafk-unsaved"}
    agent_file.persist(agent)
    assert cids(StateFile(tmp_path).load(actor("x"))) == {"bafk1", "bafk2", "bafk-unsaved"}


def test_compaction_preserves_everything_and_shrinks_the_log(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    for i in range(40):
        add(sf, f"bafk{i:02d}", {"stage"})
    before = StateFile(tmp_path).load(actor("x"))
    log_before = sf.log_path.stat().st_size
    sf.compact()
    assert sf.log_path.stat().st_size == LOG_HEADER_BYTES < log_before
    after = StateFile(tmp_path).load(actor("y"))
    assert after.heads() == before.heads()
    assert after.assets() == before.assets()
    add(sf, "bafk-after")
    assert len(StateFile(tmp_path).load(actor("z")).assets()) == 41


def test_log_size_triggers_compaction(tmp_path: Path) -> None:
    sf = StateFile(tmp_path, log_bytes_max=2000)
    for i in range(60):
        add(sf, f"bafk{i:02d}")
    assert sf.log_path.stat().st_size <= 2000 + 1000
    assert sf.snapshot_path.exists()
    assert len(StateFile(tmp_path).load(actor("x")).assets()) == 60


def test_torn_and_corrupt_tails_are_ignored_then_cut_off(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    add(sf, "bafk1")
    add(sf, "bafk2")
    intact = sf.log_path.stat().st_size
    add(sf, "bafk3")
    with open(sf.log_path, "r+b") as handle:  # a torn write: the last record lost its end
        handle.truncate(sf.log_path.stat().st_size - 5)
    assert cids(StateFile(tmp_path).load(actor("x"))) == {"bafk1", "bafk2"}
    add(sf, "bafk4")
    assert cids(StateFile(tmp_path).load(actor("x"))) == {"bafk1", "bafk2", "bafk4"}

    with open(sf.log_path, "ab") as handle:  # garbage after the last record
        handle.write(b"\x00\x00\x10\x00" + os.urandom(40))
    with open(sf.log_path, "r+b") as handle:  # and a flipped byte in bafk4's record
        handle.seek(intact + 30)
        byte = handle.read(1)
        handle.seek(intact + 30)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert cids(StateFile(tmp_path).load(actor("x"))) == {"bafk1", "bafk2"}
    add(sf, "bafk5")
    assert sf.log_path.stat().st_size < intact + 2000
    assert cids(StateFile(tmp_path).load(actor("x"))) == {"bafk1", "bafk2", "bafk5"}


CHILD = textwrap.dedent(
    """
    import os, sys
    from mesh.drivers.statefile import StateFile
    from mesh.state.document import actor_id
    from mesh.state.records import AssetRecord
    directory, prefix, count, log_max = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sf = StateFile(directory, log_bytes_max=log_max)
    for i in range(count):
        cid = f"{prefix}-{i}"
        with sf.transaction(actor_id(prefix, os.urandom(8))) as state:
            state.put_asset(AssetRecord(cid=cid, name="f", size=i, media_type="x/y",
                                        added_at=1.0, added_by=prefix, tags=frozenset({"t"})))
        print(cid, flush=True)
    """
)


def spawn(directory: Path, prefix: str, count: int, log_max: int = 4 << 20) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), prefix, str(count), str(log_max)],
        stdout=subprocess.PIPE, text=True, env=env,
    )


def test_two_processes_appending_concurrently_lose_nothing(tmp_path: Path) -> None:
    children = [spawn(tmp_path, name, 60, log_max=6000) for name in ("alpha", "beta")]
    outputs = [child.communicate(timeout=60)[0].split() for child in children]
    assert all(child.returncode == 0 for child in children)
    expected = {cid for output in outputs for cid in output}
    assert len(expected) == 120
    assert cids(StateFile(tmp_path).load(actor("x"))) == expected


def test_every_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    acked: set[str] = set()
    for round_ in range(4):
        child = spawn(tmp_path, f"r{round_}", 100_000, log_max=3000)
        deadline = time.monotonic() + 0.4 + 0.2 * round_
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked.add(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        present = cids(StateFile(tmp_path).load(actor("x")))
        assert acked <= present, sorted(acked - present)[:5]
    assert len(acked) > 20
