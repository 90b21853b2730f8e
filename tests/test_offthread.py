"""Work moved off the trio thread reads consistent copies and keeps the state log's order."""

from __future__ import annotations

from pathlib import Path

from mesh.drivers.purge import keep_set
from mesh.drivers.statefile import StateFile
from mesh.state.document import MeshState
from mesh.state.records import AssetRecord


def _record(index: int) -> AssetRecord:
    from mesh.content.cid import cid_for_raw

    return AssetRecord(cid=str(cid_for_raw(f"asset {index}".encode())), name=f"a{index}.jpg", size=10 + index,
                       media_type="image/jpeg", added_at=1.75e9, added_by="n", tags=frozenset({"music"}))


def test_a_fork_keeps_what_the_state_kept_when_it_was_taken() -> None:
    state = MeshState(b"\x01" * 16)
    for index in range(20):
        state.put_asset(_record(index))
    copy = state.fork()
    before = keep_set(state, None, None, 0.0).roots
    state.put_asset(_record(99))  # the live state moves on; the copy does not
    assert keep_set(copy, None, None, 0.0).roots == before
    assert _record(99).cid in keep_set(state, None, None, 0.0).roots


def test_fetch_then_apply_reads_what_another_process_appended(tmp_path: Path) -> None:
    writer, reader_file = StateFile(tmp_path), StateFile(tmp_path)
    with writer.transaction(b"\x02" * 16) as state:
        state.put_asset(_record(1))
    reader = reader_file.load(b"\x03" * 16)
    with writer.transaction(b"\x02" * 16) as state:
        state.put_asset(_record(2))
    assert reader_file.maybe_new(reader)
    found = reader_file.fetch_new(reader)  # the agent runs this on a worker thread
    assert reader.asset(_record(2).cid) is None  # nothing applied yet
    assert reader_file.apply_new(reader, found) and reader.asset(_record(2).cid) is not None
    assert not reader_file.maybe_new(reader)
    writer.compact()  # a new generation: the whole file comes back and merges
    assert reader_file.maybe_new(reader)
    assert not reader_file.apply_new(reader, reader_file.fetch_new(reader))


def test_a_state_pass_answers_for_one_set_of_heads_while_the_core_keeps_writing() -> None:
    """The consent pass, the catalog and the purge read the live document from a worker thread
    while the trio thread goes on writing: each answer is what a full read at one of the heads the
    document passed through answers (never a mix), and a pass that keeps being overtaken still
    finishes, over a fork."""
    import threading

    import trio

    from mesh.drivers import passes

    state = MeshState(b"\x01" * 16)
    for index in range(300):
        state.put_asset(_record(index))
    state.assets()  # the core's index exists, as in a running agent
    truth: dict[tuple[bytes, ...], list[str]] = {}
    seen: list[tuple[list[str], int]] = []
    calls = {"n": 0}

    def slow_read(reader: MeshState, pause_s: float) -> list[str]:
        calls["n"] += 1
        cids = []
        for record in reader.assets():  # the owner's read at the reader's heads ...
            cids.append(record.cid)
        threading.Event().wait(pause_s)  # ... and reads of the live document while it moves
        return [cid for cid in cids if reader.asset(cid) is not None]

    async def main() -> None:
        async def writer() -> None:
            for index in range(300, 340):
                state.remove_asset(_record(index - 300).cid)
                state.put_asset(_record(index))
                truth[tuple(state.heads())] = [r.cid for r in state.assets()]
                await trio.sleep(0.002)

        truth[tuple(state.heads())] = [r.cid for r in state.assets()]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for pause_s in (0.0, 0.001, 0.05):
                found = await passes.state_pass(state, slow_read, pause_s)
                seen.append((found, calls["n"]))

    trio.run(main)
    answers = [sorted(cids) for cids in truth.values()]
    for found, _ in seen:
        assert sorted(found) in answers  # one version's answer, not a mix of two
    assert calls["n"] > len(seen)  # the writer overtook some passes: they ran again
