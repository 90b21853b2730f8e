"""The agent's per-peer outbox: small messages overtake queued chunks, each kind keeps its order."""

from __future__ import annotations

import trio

from mesh.drivers.runtime import WRITE_GATHER_BYTES_MAX, _ChunkJob, _take_queued


def test_frames_queued_behind_chunks_go_first_in_one_write() -> None:
    send, receive = trio.open_memory_channel(100)
    send.send_nowait(_ChunkJob("chunk-a"))
    send.send_nowait(b"request-1")
    send.send_nowait(_ChunkJob("chunk-b"))
    send.send_nowait(b"busy-2")
    jobs: list[_ChunkJob] = []
    assert _take_queued(receive, jobs) == b"request-1busy-2"  # ahead of a MiB of chunk data each
    assert jobs == [_ChunkJob("chunk-a"), _ChunkJob("chunk-b")]  # chunks keep their order
    assert _take_queued(receive, jobs) == b""  # nothing left


def test_one_write_gathers_at_most_the_limit_and_the_rest_follows_in_order() -> None:
    send, receive = trio.open_memory_channel(1000)
    frames = [bytes([i % 256]) * 1000 for i in range(3 * WRITE_GATHER_BYTES_MAX // 1000)]
    for frame in frames:
        send.send_nowait(frame)
    send.close()
    writes = []
    while written := _take_queued(receive, []):
        writes.append(written)
    assert b"".join(writes) == b"".join(frames)
    assert len(writes) >= 3
    assert all(len(w) < WRITE_GATHER_BYTES_MAX + 1000 for w in writes)
