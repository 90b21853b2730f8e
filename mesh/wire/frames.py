"""Length-prefixed frames: a 4-byte big-endian unsigned body length, then the body.

Sans-IO in the h11 manner: feed whatever bytes arrived with `FrameDecoder.receive_data`, then call
`next_frame` until it returns None. Rules:

- a header is checked against `frame_bytes_max` as soon as its 4 bytes are buffered, before the
  body arrives and before anything is allocated for it;
- a zero-length frame is the peer's error (no message encodes to zero bytes);
- the decoder never holds more than `buffer_bytes_max` bytes; a driver that drains `next_frame`
  after every `receive_data` and reads at most `receive_bytes_max` bytes at a time never hits it;
- after the first `RemoteProtocolError` the decoder stays broken and raises it again.
"""

from __future__ import annotations

from mesh.errors import LocalProtocolError, RemoteProtocolError

FRAME_HEADER_BYTES = 4
FRAME_BYTES_MAX = 2 * 1024 * 1024
HEADER_LENGTH_MAX = 2**32 - 1
READ_BYTES_MAX = 64 * 1024


def encode_frame(body: bytes, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """One frame carrying `body`; LocalProtocolError if the body is empty or too big."""
    if not body:
        raise LocalProtocolError("refusing to send an empty frame")
    if len(body) > frame_bytes_max:
        raise LocalProtocolError(f"frame body of {len(body)} bytes exceeds {frame_bytes_max}")
    return len(body).to_bytes(FRAME_HEADER_BYTES, "big") + body


class FrameDecoder:
    """Splits a byte stream into frame bodies without doing any I/O."""

    def __init__(
        self, frame_bytes_max: int = FRAME_BYTES_MAX, buffer_bytes_max: int | None = None
    ) -> None:
        if not 1 <= frame_bytes_max <= HEADER_LENGTH_MAX:
            raise LocalProtocolError(f"frame_bytes_max must be in 1..{HEADER_LENGTH_MAX}")
        if buffer_bytes_max is None:
            buffer_bytes_max = FRAME_HEADER_BYTES + frame_bytes_max + READ_BYTES_MAX
        if buffer_bytes_max < FRAME_HEADER_BYTES + frame_bytes_max:
            raise LocalProtocolError("buffer_bytes_max cannot hold one frame of frame_bytes_max")
        self._frame_bytes_max = frame_bytes_max
        self._buffer_bytes_max = buffer_bytes_max
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero at EOF means a cut frame)."""
        return len(self._buffer)

    @property
    def receive_bytes_max(self) -> int:
        """How many more bytes `receive_data` accepts right now."""
        return self._buffer_bytes_max - len(self._buffer)

    def partial_body(self, bytes_max: int) -> bytes:
        """The first (at most `bytes_max`) bytes of the frame now arriving, once its header is
        in (b"" otherwise): lets a receiver see what a large frame carries before it is whole."""
        if len(self._buffer) <= FRAME_HEADER_BYTES or self._error is not None:
            return b""
        return bytes(self._buffer[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + bytes_max])

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; LocalProtocolError if the caller overfills the buffer."""
        if self._error is not None:
            return  # the session is over; nothing more will be parsed
        if len(data) > self.receive_bytes_max:
            raise LocalProtocolError(
                f"receive buffer full ({len(self._buffer)} of {self._buffer_bytes_max} bytes):"
                " drain next_frame() or read at most receive_bytes_max bytes"
            )
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None until more data arrives."""
        if self._error is not None:
            raise self._error
        try:
            return self._take_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            raise

    def _take_frame(self) -> bytes | None:
        if len(self._buffer) < FRAME_HEADER_BYTES:
            return None
        length = int.from_bytes(self._buffer[:FRAME_HEADER_BYTES], "big")
        if length == 0:
            raise RemoteProtocolError("zero-length frame")
        if length > self._frame_bytes_max:
            raise RemoteProtocolError(
                f"frame header announces {length} bytes, limit is {self._frame_bytes_max}"
            )
        end = FRAME_HEADER_BYTES + length
        if len(self._buffer) < end:
            return None
        body = bytes(memoryview(self._buffer)[FRAME_HEADER_BYTES:end])  # one copy, not two
        del self._buffer[:end]  # bytearray drops a prefix in O(1) amortised
        return body
