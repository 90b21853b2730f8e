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

from collections import deque

from mesh.errors import LocalProtocolError, RemoteProtocolError

FRAME_HEADER_BYTES = 4
FRAME_BYTES_MAX = 2 * 1024 * 1024
HEADER_LENGTH_MAX = 2**32 - 1
READ_BYTES_MAX = 64 * 1024
COALESCE_BYTES = 16 * 1024  # received pieces smaller than this are copied together


def encode_frame(body: bytes, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """One frame carrying `body`; LocalProtocolError if the body is empty or too big."""
    if not body:
        raise LocalProtocolError("refusing to send an empty frame")
    if len(body) > frame_bytes_max:
        raise LocalProtocolError(f"frame body of {len(body)} bytes exceeds {frame_bytes_max}")
    return len(body).to_bytes(FRAME_HEADER_BYTES, "big") + body


class FrameDecoder:
    """Splits a byte stream into frame bodies without doing any I/O.

    Received bytes are kept as the objects they arrived in, not copied into one buffer: a frame
    that lies within one of them is returned as a memoryview of it (a 1 MiB chunk piece that
    arrived in one read is never copied here); only a frame spread over several is joined."""

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
        # Received bytes in order: views of large received objects (the first may be partly
        # used), then small pieces copied together into `_small`, so a peer that sends a byte at
        # a time costs bytes, not an object per byte.
        self._parts: deque[memoryview] = deque()
        self._small = bytearray()
        self._size = 0  # bytes in _parts and _small
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero at EOF means a cut frame)."""
        return self._size

    @property
    def receive_bytes_max(self) -> int:
        """How many more bytes `receive_data` accepts right now."""
        return self._buffer_bytes_max - self._size

    def partial_body(self, bytes_max: int) -> bytes:
        """The first (at most `bytes_max`) bytes of the frame now arriving, once its header is
        in (b"" otherwise): lets a receiver see what a large frame carries before it is whole."""
        if self._size <= FRAME_HEADER_BYTES or self._error is not None:
            return b""
        return self._peek(FRAME_HEADER_BYTES + bytes_max)[FRAME_HEADER_BYTES:]

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; LocalProtocolError if the caller overfills the buffer.
        The decoder may keep a view of `data`: the caller must not change it afterwards."""
        if self._error is not None:
            return  # the session is over; nothing more will be parsed
        if len(data) > self.receive_bytes_max:
            raise LocalProtocolError(
                f"receive buffer full ({self._size} of {self._buffer_bytes_max} bytes):"
                " drain next_frame() or read at most receive_bytes_max bytes"
            )
        if len(data) < COALESCE_BYTES:
            self._small += data
        else:
            self._seal_small()
            self._parts.append(memoryview(data).cast("B"))
        self._size += len(data)

    def next_frame(self) -> bytes | memoryview | None:
        """The next complete frame body, or None until more data arrives. A body that arrived
        within one large received object is a read-only view of it, not a copy."""
        if self._error is not None:
            raise self._error
        try:
            return self._take_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            self._parts.clear()
            self._small = bytearray()
            self._size = 0
            raise

    def _seal_small(self) -> None:
        """Move the small pieces into `_parts` (a fresh `_small` starts; the old one is never
        resized again, so views of it stay valid)."""
        if self._small:
            self._parts.append(memoryview(self._small))
            self._small = bytearray()

    def _peek(self, count: int) -> bytes:
        """Up to `count` bytes from the front, copied (only ever a header's worth)."""
        out = bytearray()
        for part in self._parts:
            out += part[: count - len(out)]
            if len(out) >= count:
                return bytes(out)
        out += self._small[: count - len(out)]
        return bytes(out)

    def _take_frame(self) -> bytes | memoryview | None:
        if self._size < FRAME_HEADER_BYTES:
            return None
        length = int.from_bytes(self._peek(FRAME_HEADER_BYTES), "big")
        if length == 0:
            raise RemoteProtocolError("zero-length frame")
        if length > self._frame_bytes_max:
            raise RemoteProtocolError(
                f"frame header announces {length} bytes, limit is {self._frame_bytes_max}"
            )
        end = FRAME_HEADER_BYTES + length
        if self._size < end:
            return None
        self._size -= end
        parts = self._parts
        if not parts:  # small frames that arrived in small pieces
            body = bytes(self._small[FRAME_HEADER_BYTES:end])
            del self._small[:end]  # bytearray drops a prefix in O(1) amortised
            return body
        first = parts[0]
        if len(first) >= end:  # the usual case for a chunk: the frame lies within one received object
            if len(first) == end:
                parts.popleft()
            else:
                parts[0] = first[end:]
            return first[FRAME_HEADER_BYTES:end].toreadonly()
        if sum(len(part) for part in parts) < end:
            self._seal_small()
        self._take(FRAME_HEADER_BYTES)
        return b"".join(self._take(length))  # spread over several: joined (one copy)

    def _take(self, count: int) -> list[memoryview]:
        """Remove `count` bytes from the front of `_parts` (which holds them); their views."""
        parts, pieces = self._parts, []
        while count:
            part = parts[0]
            if len(part) <= count:
                pieces.append(parts.popleft())
                count -= len(part)
            else:
                pieces.append(part[:count])
                parts[0] = part[count:]
                count = 0
        return pieces
