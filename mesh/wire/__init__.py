"""The wire layer: message dataclasses and their framed canonical-CBOR codec (pure, no I/O)."""

from mesh.wire.frames import FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FrameDecoder, encode_frame
from mesh.wire.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Close,
    Hello,
    Message,
    MessageDecoder,
    PeerAddress,
    PeerAddresses,
    Ping,
    Pong,
    Revocations,
    StateSync,
    StateSyncPart,
    decode_message,
    encode,
    encode_message,
)

__all__ = [
    "FRAME_BYTES_MAX",
    "FRAME_HEADER_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Close",
    "FrameDecoder",
    "Hello",
    "Message",
    "MessageDecoder",
    "PeerAddress",
    "PeerAddresses",
    "Ping",
    "Pong",
    "Revocations",
    "StateSync",
    "StateSyncPart",
    "decode_message",
    "encode",
    "encode_frame",
    "encode_message",
]
