"""The wire codec: frames and messages round-trip, and every kind of bad input is the peer's error.

Hypothesis strategies are derived from the schema registry, so a message added later is covered
by the round-trip tests without touching this file.
"""

from __future__ import annotations

import dataclasses
import datetime
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.ids import b32encode, mesh_id_from_authority_key, node_id_from_public_key
from mesh.wire import (
    FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Close,
    FrameDecoder,
    Hello,
    Message,
    MessageDecoder,
    PeerAddress,
    PeerAddresses,
    Ping,
    Pong,
    Revocations,
    StateSync,
    decode_message,
    encode,
    encode_frame,
    encode_message,
)
from mesh.wire.frames import READ_BYTES_MAX
from mesh.wire.messages import (
    CHUNK_BYTES_MAX,
    CHUNK_PIECE_BYTES_MAX,
    CID_BYTES_MAX,
    CID_BYTES_MIN,
    chunk_data_head,
    CBOR_DEPTH_MAX,
    CBOR_ITEMS_MAX,
    Base32Id,
    ChunkData,
    ChunkRequest,
    Bytes,
    Int,
    Nested,
    Nullable,
    Spec,
    Text,
    TupleOf,
    arriving_chunk,
    message,
    record_fields,
    type_code_of,
    wire,
)

UTC = datetime.timezone.utc
NODE_A = node_id_from_public_key(bytes(range(32)))
NODE_B = node_id_from_public_key(bytes(range(100, 132)))
MESH = mesh_id_from_authority_key(bytes(32))

# --- strategies derived from the schema -------------------------------------------------------

SIZE_CAP = 40  # hypothesis values stay small; the limits themselves are tested with maximal values


def strategy_for(spec: Spec) -> st.SearchStrategy:
    """Values that satisfy `spec`; an unknown spec kind fails loudly so it gets a strategy."""
    if isinstance(spec, Int):
        return st.integers(spec.min, spec.max)
    if isinstance(spec, Text):
        return text_strategy(spec)
    if isinstance(spec, Base32Id):
        return st.binary(min_size=spec.raw_bytes, max_size=spec.raw_bytes).map(b32encode)
    if isinstance(spec, Bytes):
        return st.binary(min_size=spec.bytes_min, max_size=min(spec.bytes_max, SIZE_CAP))
    if isinstance(spec, Nullable):
        return st.none() | strategy_for(spec.inner)
    if isinstance(spec, TupleOf):
        return st.lists(strategy_for(spec.item), max_size=min(spec.items_max, 5)).map(tuple)
    if isinstance(spec, Nested):
        return record_strategy(spec.cls)
    raise TypeError(f"no strategy for {spec!r}: add one to tests/test_wire.py")


def text_strategy(spec: Text) -> st.SearchStrategy:
    if spec.alphabet is not None:  # our alphabets are ASCII: one byte per character
        size_max = min(spec.bytes_max, SIZE_CAP)
        return st.text(spec.alphabet, min_size=spec.bytes_min, max_size=size_max)
    printable = st.characters(codec="utf-8").filter(str.isprintable)
    return st.text(printable, min_size=spec.bytes_min, max_size=min(spec.bytes_max // 4, SIZE_CAP))


def record_strategy(cls: type) -> st.SearchStrategy:
    return st.builds(cls, **{name: strategy_for(spec) for name, spec in record_fields(cls)})


def maximal_value(spec: Spec) -> object:
    """The largest value `spec` admits: every string full, every tuple at items_max."""
    if isinstance(spec, Int):
        return spec.max
    if isinstance(spec, Text):
        char = spec.alphabet[0] if spec.alphabet else "é"  # two UTF-8 bytes when unrestricted
        return char * (spec.bytes_max // len(char.encode()))
    if isinstance(spec, Base32Id):
        return b32encode(b"\xff" * spec.raw_bytes)
    if isinstance(spec, Bytes):
        return b"\xff" * spec.bytes_max
    if isinstance(spec, Nullable):
        return maximal_value(spec.inner)
    if isinstance(spec, TupleOf):
        return (maximal_value(spec.item),) * spec.items_max
    if isinstance(spec, Nested):
        return maximal_record(spec.cls)
    raise TypeError(f"no maximal value for {spec!r}: add one to tests/test_wire.py")


def maximal_record(cls: type) -> object:
    return cls(**{name: maximal_value(spec) for name, spec in record_fields(cls)})


def schema_depth(spec: Spec) -> int:
    """Array nesting a field can reach (scalars: 0)."""
    if isinstance(spec, Nullable):
        return schema_depth(spec.inner)
    if isinstance(spec, TupleOf):
        return 1 + schema_depth(spec.item)
    if isinstance(spec, Nested):
        return 1 + max(schema_depth(s) for _, s in record_fields(spec.cls))
    return 0


def schema_items(spec: Spec) -> int:
    """CBOR items a field can take at most."""
    if isinstance(spec, Nullable):
        return schema_items(spec.inner)
    if isinstance(spec, TupleOf):
        return 1 + spec.items_max * schema_items(spec.item)
    if isinstance(spec, Nested):
        return 1 + sum(schema_items(s) for _, s in record_fields(spec.cls))
    return 1


REGISTERED = sorted(MESSAGE_TYPES.items())


def test_registry_holds_every_message_of_this_issue() -> None:
    assert REGISTERED, "no messages registered"
    expected = {Hello, Ping, Pong, Close, Revocations, PeerAddresses, StateSync}
    assert expected <= set(MESSAGE_TYPES.values())
    assert all(issubclass(cls, Message) for cls in MESSAGE_TYPES.values())
    assert all(type_code_of(cls) == code for code, cls in REGISTERED)


@pytest.mark.parametrize("cls", [cls for _, cls in REGISTERED], ids=lambda cls: cls.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_message_round_trips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(record_strategy(cls))
    body = encode_message(msg)
    assert decode_message(body) == msg
    assert encode_message(decode_message(body)) == body  # canonical: one encoding per message
    decoder = MessageDecoder()
    decoder.receive_data(encode(msg))
    assert decoder.next_message() == msg
    assert decoder.next_message() is None


@pytest.mark.parametrize("cls", [cls for _, cls in REGISTERED], ids=lambda cls: cls.__name__)
def test_maximal_messages_pass_the_cbor_limits(cls: type) -> None:
    fields = record_fields(cls)
    assert 1 + max(schema_depth(s) for _, s in fields) <= CBOR_DEPTH_MAX
    assert 2 + sum(schema_items(s) for _, s in fields) <= CBOR_ITEMS_MAX
    msg = maximal_record(cls)
    assert decode_message(encode_message(msg)) == msg


def test_a_maximal_message_that_outgrows_a_frame_is_refused_locally() -> None:
    # 1024 revocations of 4 KiB each are schema-valid but do not fit one frame: senders split them.
    msg = maximal_record(Revocations)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode(msg)


def test_hello_example_is_compact() -> None:
    hello = Hello(PROTOCOL_VERSION, NODE_A, MESH, ("peerx",), 7400)
    body = encode_message(hello)
    assert len(body) < 100
    assert body[:2] == bytes([0x86, type_code_of(Hello)])


# --- frames -----------------------------------------------------------------------------------

STREAM_MESSAGES = [
    Hello(PROTOCOL_VERSION, NODE_A, MESH, ("peerx", "state/1"), None),
    Ping(0),
    Pong(2**64 - 1),
    PeerAddresses((PeerAddress(NODE_B, "192.168.1.20", 7400), PeerAddress(NODE_A, "::1", 1))),
    StateSync(b"\x42" * 300),
    Close("bye"),
]
STREAM = b"".join(encode(m) for m in STREAM_MESSAGES)


def drain(decoder: MessageDecoder) -> list[Message]:
    out = []
    while (msg := decoder.next_message()) is not None:
        out.append(msg)
    return out


def test_stream_split_at_every_byte_boundary_decodes_the_same() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = MessageDecoder()
        decoder.receive_data(STREAM[:cut])
        got = drain(decoder)
        decoder.receive_data(STREAM[cut:])
        assert got + drain(decoder) == STREAM_MESSAGES, cut
        assert decoder.buffered_bytes == 0


def test_stream_fed_one_byte_at_a_time() -> None:
    decoder, got = MessageDecoder(), []
    for i in range(len(STREAM)):
        decoder.receive_data(STREAM[i : i + 1])
        got += drain(decoder)
    assert got == STREAM_MESSAGES


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_stream_split_anywhere_many_times(cuts: list[int]) -> None:
    decoder, got, start = MessageDecoder(), [], 0
    for cut in [*sorted(cuts), len(STREAM)]:
        decoder.receive_data(STREAM[start:cut])
        got += drain(decoder)
        start = cut
    assert got == STREAM_MESSAGES


@given(body=st.binary(min_size=1, max_size=300))
def test_frame_round_trip(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(body) + encode_frame(body))
    assert decoder.next_frame() == body
    assert decoder.next_frame() == body
    assert decoder.next_frame() is None


def test_frame_layout_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_oversize_header_is_rejected_before_the_body_arrives() -> None:
    decoder = FrameDecoder(frame_bytes_max=100)
    decoder.receive_data((101).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="101 bytes, limit is 100"):
        decoder.next_frame()


@pytest.mark.parametrize("length", [FRAME_BYTES_MAX + 1, 2**32 - 1])
def test_default_limit_rejects_a_huge_header_alone(length: int) -> None:
    decoder = MessageDecoder()
    decoder.receive_data(length.to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="limit"):
        decoder.next_message()


def test_a_header_at_the_limit_waits_for_its_body() -> None:
    decoder = FrameDecoder(frame_bytes_max=100)
    decoder.receive_data((100).to_bytes(4, "big") + b"x" * 99)
    assert decoder.next_frame() is None
    decoder.receive_data(b"y")
    assert decoder.next_frame() == b"x" * 99 + b"y"


def test_zero_length_frame_is_the_peers_error() -> None:
    decoder = MessageDecoder()
    decoder.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError, match="zero-length frame"):
        decoder.next_message()


def test_a_broken_decoder_stays_broken() -> None:
    decoder = MessageDecoder()
    decoder.receive_data(encode(Ping(1)) + b"\x00\x00\x00\x00" + encode(Ping(2)))
    assert decoder.next_message() == Ping(1)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="zero-length"):
            decoder.next_message()
    decoder.receive_data(encode(Ping(3)))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


def test_a_bad_message_breaks_the_message_decoder() -> None:
    decoder = MessageDecoder()
    decoder.receive_data(encode_frame(cbor2.dumps([99])) + encode(Ping(1)))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="unknown message type 99"):
            decoder.next_message()


def test_buffered_bytes_are_bounded() -> None:
    decoder = FrameDecoder(frame_bytes_max=100, buffer_bytes_max=110)
    assert decoder.receive_bytes_max == 110
    decoder.receive_data(b"\x00\x00\x00\x64" + b"z" * 50)
    assert decoder.receive_bytes_max == 56
    with pytest.raises(LocalProtocolError, match="receive buffer full"):
        decoder.receive_data(b"z" * 57)
    assert decoder.buffered_bytes == 54  # the refused data was not kept


def test_a_drained_default_decoder_always_takes_a_full_read() -> None:
    decoder = FrameDecoder()
    almost = FRAME_BYTES_MAX.to_bytes(4, "big") + bytes(FRAME_BYTES_MAX - 1)
    decoder.receive_data(almost)
    assert decoder.next_frame() is None
    assert decoder.receive_bytes_max >= READ_BYTES_MAX


def test_frame_decoder_limits_must_be_consistent() -> None:
    with pytest.raises(LocalProtocolError):
        FrameDecoder(frame_bytes_max=100, buffer_bytes_max=103)
    with pytest.raises(LocalProtocolError):
        FrameDecoder(frame_bytes_max=2**32)


def test_encode_frame_refuses_oversize_and_empty_bodies() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode_frame(b"x" * 11, frame_bytes_max=10)
    with pytest.raises(LocalProtocolError, match="empty"):
        encode_frame(b"")
    assert len(encode_frame(b"x" * 10, frame_bytes_max=10)) == 10 + FRAME_HEADER_BYTES


# --- malformed messages -----------------------------------------------------------------------


def hello_fields(**changes: object) -> list:
    fields = {"version": 1, "node": NODE_A, "mesh": MESH, "features": [], "port": 7400}
    fields.update(changes)
    return [type_code_of(Hello), *fields.values()]


def cbor(value: object) -> bytes:
    return cbor2.dumps(value, canonical=True)


PING = type_code_of(Ping)
CLOSE = type_code_of(Close)
NON_CANONICAL_NODE = NODE_A[:-1] + ("b" if NODE_A[-1] == "a" else "r")

MALFORMED = {
    "unknown type": (cbor([200, 1]), "unknown message type 200"),
    "negative type": (cbor([-1]), "unknown message type -1"),
    "type not int": (cbor(["ping", 1]), "type code must be an integer"),
    "not an array": (cbor(7), "non-empty CBOR array"),
    "empty array": (cbor([]), "non-empty CBOR array"),
    "too few fields": (cbor([PING]), "Ping: expected 1 fields, got 0"),
    "too many fields": (cbor([PING, 1, 2]), "Ping: expected 1 fields, got 2"),
    "text for int": (cbor([PING, "1"]), "Ping.nonce: expected an integer, got text"),
    "bool for int": (cbor([PING, True]), "Ping.nonce: expected an integer, got a boolean"),
    "null for int": (cbor([PING, None]), "Ping.nonce: expected an integer, got null"),
    "negative nonce": (cbor([PING, -1]), "Ping.nonce: -1 is outside"),
    "bignum nonce": (cbor([PING, 2**64]), "tags are not allowed"),
    "bytes for text": (cbor([CLOSE, b"bye"]), "Close.reason: expected text, got bytes"),
    "reason too long": (cbor([CLOSE, "x" * 1025]), "Close.reason: text longer than 1024"),
    "reason too long in bytes": (cbor([CLOSE, "é" * 513]), "Close.reason: text of 1026 bytes"),
    "unprintable reason": (cbor([CLOSE, "bye\x1b[2J"]), "unprintable"),
    "invalid utf-8": (bytes([0x82, CLOSE, 0x62, 0xC3, 0x28]), "undecodable CBOR"),
    "short node id": (cbor(hello_fields(node=NODE_A[:-1])), "Hello.node_id: not a node id"),
    "upper-case node id": (cbor(hello_fields(node=NODE_A.upper())), "Hello.node_id: not a node"),
    "non-base32 node id": (cbor(hello_fields(node="1" * 52)), "Hello.node_id: not a node id"),
    "non-canonical node id": (cbor(hello_fields(node=NON_CANONICAL_NODE)), "non-zero trailing"),
    "mesh id as node id": (cbor(hello_fields(mesh=NODE_A)), "Hello.mesh_id: not a mesh id"),
    "feature not text": (cbor(hello_fields(features=[1])), "Hello.features[0]: expected text"),
    "features not array": (cbor(hello_fields(features="x")), "Hello.features: expected an array"),
    "bad feature chars": (cbor(hello_fields(features=["A B"])), "characters not allowed"),
    "empty feature": (cbor(hello_fields(features=[""])), "allowed 1..64"),
    "too many features": (cbor(hello_fields(features=["f"] * 33)), "33 items, at most 32"),
    "port zero": (cbor(hello_fields(port=0)), "Hello.listen_port: 0 is outside 1..65535"),
    "port too big": (cbor(hello_fields(port=65536)), "Hello.listen_port: 65536 is outside"),
    "empty revocation": (cbor([5, [b""]]), "Revocations.records[0]: 0 bytes"),
    "revocation too big": (cbor([5, [b"x" * 10241]]), "Revocations.records[0]: 10241 bytes"),
    "peer not an array": (cbor([6, [NODE_A]]), "PeerAddresses.peers[0]: expected an array"),
    "peer wrong arity": (cbor([6, [[NODE_A, "h"]]]), "peers[0]: expected 3 fields, got 2"),
    "peer bad host": (cbor([6, [[NODE_A, "a b", 1]]]), "PeerAddresses.peers[0].host"),
    "state sync too big": (cbor([7, b"x" * (2**20 + 1)]), "StateSync.message: 1048577 bytes"),
    "trailing garbage": (encode_message(Ping(1)) + b"\x00", "1 trailing bytes"),
    "truncated": (encode_message(Close("bye"))[:-1], "past the end"),
    "truncated head": (bytes([0x82, PING, 0x1B, 0, 0]), "middle of a CBOR item head"),
    "missing item": (bytes([0x82, PING]), "middle of a CBOR item"),
    "empty body": (b"", "empty message"),
    "datetime tag": (cbor([PING, datetime.datetime(2020, 1, 1, tzinfo=UTC)]), "tags are not"),
    "tag on message": (cbor(cbor2.CBORTag(55799, [PING, 1])), "tags are not allowed"),
    "map": (cbor({"t": PING, "nonce": 1}), "maps are not used"),
    "float": (cbor([PING, 1.0]), "simple values"),
    "nan": (cbor([PING, math.nan]), "simple values"),
    "undefined": (cbor([PING, cbor2.undefined]), "simple values"),
    "indefinite array": (bytes([0x9F, PING, 0x01, 0xFF]), "indefinite-length"),
    "indefinite text": (bytes([0x82, CLOSE, 0x7F, 0x61, 0x61, 0xFF]), "indefinite-length"),
    "reserved info": (bytes([0x82, PING, 0x1C]), "reserved"),
    "non-canonical int": (bytes([0x82, PING, 0x18, 0x05]), "shortest form"),
    "non-canonical length": (bytes([0x98, 0x02, PING, 0x01]), "shortest form"),
    "huge array count": (bytes([0x9B]) + b"\xff" * 8, f"more than {CBOR_ITEMS_MAX} CBOR items"),
    "deep nesting": (b"\x81" * (2 * 1024 * 1024) + b"\x00", f"deeper than {CBOR_DEPTH_MAX}"),
    "wide array": (cbor([5, [b"x"] * (CBOR_ITEMS_MAX + 1)]), "CBOR items"),
}


@pytest.mark.parametrize("body, reason", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_is_a_remote_protocol_error_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(body)
    assert reason in str(info.value)


def test_malformed_body_in_a_frame_is_a_remote_protocol_error() -> None:
    decoder = MessageDecoder()
    decoder.receive_data(encode_frame(cbor(hello_fields(node="nope"))))
    with pytest.raises(RemoteProtocolError, match="Hello.node_id: not a node id"):
        decoder.next_message()


@given(body=st.binary(max_size=200))
def test_random_bodies_raise_only_remote_protocol_error(body: bytes) -> None:
    try:
        msg = decode_message(body)
    except RemoteProtocolError as exc:
        assert str(exc)
    else:
        assert encode_message(msg) == body


# --- encoding our own mistakes ------------------------------------------------------------------

BAD_OUTGOING = {
    "negative nonce": Ping(-1),
    "bool nonce": Ping(True),
    "bad node id": Hello(1, "node", MESH, (), None),
    "list for tuple": Hello(1, NODE_A, MESH, ["x"], None),  # type: ignore[arg-type]
    "port zero": Hello(1, NODE_A, MESH, (), 0),
    "wrong nested type": PeerAddresses(((NODE_A, "h", 1),)),  # type: ignore[arg-type]
    "bytearray": StateSync(bytearray(b"x")),  # type: ignore[arg-type]
    "lone surrogate": Close("\ud800"),
}


@pytest.mark.parametrize("msg", BAD_OUTGOING.values(), ids=BAD_OUTGOING.keys())
def test_encoding_a_schema_violation_is_a_local_protocol_error(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(msg)


def test_encoding_an_unregistered_object_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="not a registered message"):
        encode_message(PeerAddress(NODE_A, "h", 1))  # type: ignore[arg-type]


# --- the registry guards itself ----------------------------------------------------------------


def test_a_taken_type_code_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="taken"):

        @message(type_code=type_code_of(Ping))
        @dataclasses.dataclass(frozen=True)
        class Twin(Message):
            nonce: int = wire(Int(0, 1))  # never registered


def test_a_field_without_a_schema_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="needs a wire"):

        @message(type_code=250)
        @dataclasses.dataclass(frozen=True)
        class Sloppy(Message):
            nonce: int  # no schema


def test_a_mutable_dataclass_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="frozen"):

        @message(type_code=251)
        @dataclasses.dataclass
        class Mutable(Message):
            nonce: int = wire(Int(0, 1))  # never registered

    assert 250 not in MESSAGE_TYPES and 251 not in MESSAGE_TYPES


# ---- a chunk seen arriving before its frame is whole -----------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    cid=st.binary(min_size=36, max_size=64),
    total=st.integers(1, 300_000),
    data=st.data(),
)
def test_the_chunk_of_a_frame_still_arriving_is_known_once_its_cid_is_in(
    cid: bytes, total: int, data: st.DataObject
) -> None:
    frame = encode(ChunkData(cid, 0, total, b"\x07" * total))
    cid_end = frame.index(cid) + len(cid)  # header, array head, type code, CID head, CID
    cut = data.draw(st.integers(0, len(frame) - 1))
    decoder = MessageDecoder()
    decoder.receive_data(frame[:cut])
    assert arriving_chunk(decoder) == (cid if cut >= cid_end else None)
    decoder.receive_data(frame[cut:])
    assert decoder.next_message() == ChunkData(cid, 0, total, b"\x07" * total)
    assert arriving_chunk(decoder) is None  # nothing is arriving once the frame is whole and taken


def test_only_chunk_data_counts_as_a_chunk_arriving() -> None:
    cid = bytes(range(40))
    decoder = MessageDecoder()
    decoder.receive_data(encode(ChunkRequest(cid)) + encode(ChunkData(cid, 0, 10, b"x" * 10))[:30])
    assert decoder.next_message() == ChunkRequest(cid)
    assert arriving_chunk(decoder) is None  # the CID of the arriving ChunkData is not all in yet
    junk = MessageDecoder()
    junk.receive_data(b"\x00\x00\x01\x00" + b"\xff" * 60)  # a frame whose body is not a message
    assert arriving_chunk(junk) is None


# ---- the chunk fast paths: a head sent before the piece, pieces decoded without a copy ---------------


@settings(max_examples=200, deadline=None)
@given(
    cid=st.binary(min_size=CID_BYTES_MIN, max_size=CID_BYTES_MAX),
    offset=st.integers(0, CHUNK_BYTES_MAX),
    total=st.integers(0, CHUNK_BYTES_MAX),
    size=st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, CHUNK_PIECE_BYTES_MAX]),
    cuts=st.lists(st.integers(1, CHUNK_PIECE_BYTES_MAX + 200), max_size=6),
)
def test_chunk_data_head_then_piece_is_the_encoded_message(
    cid: bytes, offset: int, total: int, size: int, cuts: list[int]
) -> None:
    """A server that sends `chunk_data_head` and then the piece from its read buffer puts the
    same bytes on the wire as `encode(ChunkData(...))`, and the receiver decodes it however the
    bytes were split into reads (the piece as a view when it arrived in one read)."""
    piece = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire_bytes = chunk_data_head(cid, offset, total, size) + piece
    assert wire_bytes == encode(ChunkData(cid, offset, total, piece))
    decoder = MessageDecoder()
    bounds = [0, *sorted({cut for cut in cuts if cut < len(wire_bytes)}), len(wire_bytes)]
    received = []
    for start, end in zip(bounds, bounds[1:]):
        decoder.receive_data(wire_bytes[start:end])
        while (msg := decoder.next_message()) is not None:
            received.append(msg)
    assert len(received) == 1 and decoder.buffered_bytes == 0
    got = received[0]
    assert (got.cid, got.offset, got.total, bytes(got.data)) == (cid, offset, total, piece)
    assert encode(got) == wire_bytes  # a received piece can be sent on as it is


def test_a_chunk_piece_that_arrived_in_one_read_is_not_copied() -> None:
    piece = bytes(1000) * 100
    frame = encode(ChunkData(bytes([1, 0x55, 0x1E, 32]) + bytes(32), 0, len(piece), piece))
    decoder = MessageDecoder()
    decoder.receive_data(frame)
    msg = decoder.next_message()
    assert isinstance(msg.data, memoryview) and msg.data.readonly and msg.data == piece
    assert msg.data.obj is frame  # a view of the very bytes that arrived


@pytest.mark.parametrize("bad", [
    bytes([0x85, 13, 0x58, 2, 1, 2, 0, 0, 0x59]),  # ends inside a byte-string head
    bytes([0x85, 13, 0x41, 1, 0, 0, 0x40, 0]),  # trailing byte
    bytes([0x85, 13, 0x41, 1, 0x18, 5, 0, 0x40]),  # offset not in shortest form
    bytes([0x85, 13, 0x41, 1, 0x60, 0, 0x40]),  # offset is text
])
def test_malformed_chunk_data_is_refused(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(bad)


def test_many_one_byte_reads_do_not_cost_an_object_each() -> None:
    """A peer that sends a frame a byte at a time costs its bytes, not a Python object per byte."""
    frame = encode(ChunkData(bytes([1, 0x55, 0x1E, 32]) + bytes(32), 0, 5000, bytes(5000)))
    decoder = MessageDecoder()
    for index in range(len(frame) - 1):
        decoder.receive_data(frame[index:index + 1])
        assert decoder.next_message() is None
    assert len(decoder._frames._parts) <= 1
    decoder.receive_data(frame[-1:])
    assert bytes(decoder.next_message().data) == bytes(5000)
