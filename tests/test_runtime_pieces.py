"""The agent's serve buffer: a chunk read with room for each piece's ChunkData head, sent as whole
frames (one secure-channel record each between nodes of this version)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.drivers.channel import RECORD_PLAINTEXT_BYTES_MAX_ANY
from mesh.drivers.runtime import _PieceBuffer
from mesh.wire import messages as m

PIECE = m.CHUNK_PIECE_BYTES_MAX
CID = bytes.fromhex("01551e20") + bytes(range(32))  # a raw BLAKE3 CID's bytes


def _serve(pieces: _PieceBuffer, data: bytes) -> list[memoryview]:
    """Lay out, fill as the store would, and return the frames `messages` yields (copied)."""
    views = pieces.lay_out(len(data))
    done = 0
    for view in views:
        view[:] = data[done:done + len(view)]
        done += len(view)
    assert done == len(data)
    return [bytes(frame) for _, _, frame in pieces.messages(CID)]


def _decoded(frames: list[bytes]) -> list[m.ChunkData]:
    decoder = m.MessageDecoder()
    out = []
    for frame in frames:
        decoder.receive_data(frame)
        while (message := decoder.next_message()) is not None:
            out.append(message)
    assert decoder.buffered_bytes == 0
    return out


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(0, 300), st.integers(PIECE - 3, PIECE + 3),
                                st.integers(0, 3 * PIECE + 7)), min_size=1, max_size=4))
def test_frames_are_the_chunk_data_messages_of_the_chunk(sizes: list[int]) -> None:
    """Whatever sizes one connection serves in turn (its one-piece buffer is reused), each frame
    equals `encode(ChunkData(...))` of its piece and fits one record with head room."""
    pieces = _PieceBuffer()
    for size in sizes:
        data = os.urandom(size)
        frames = _serve(pieces, data)
        assert len(frames) == max(1, -(-size // PIECE))
        assert all(len(frame) <= RECORD_PLAINTEXT_BYTES_MAX_ANY for frame in frames)
        expected = [m.encode(m.ChunkData(CID, offset, size, data[offset:offset + PIECE]))
                    for offset in range(0, max(size, 1), PIECE)]
        assert frames == expected
        assert b"".join(bytes(message.data) for message in _decoded(frames)) == data
