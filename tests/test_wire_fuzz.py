"""Fuzz the wire decoder: random and mutated frames may only ever raise RemoteProtocolError.

Deterministic: case `i` draws from `random.Random(case_seed(SEED, i))`, so a failure names the seed
and the case, and `run_case(seed, i)` replays it. Set MESH_WIRE_FUZZ_SEED to explore other seeds.
"""

from __future__ import annotations

import datetime
import functools
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable

import cbor2
import pytest

from mesh.errors import RemoteProtocolError
from mesh.ids import b32encode
from mesh.wire import (
    FRAME_BYTES_MAX,
    MESSAGE_TYPES,
    Message,
    MessageDecoder,
    decode_message,
    encode_message,
)
from mesh.wire.messages import (
    Base32Id,
    Bytes,
    Int,
    Nested,
    Nullable,
    Spec,
    Text,
    TupleOf,
    record_fields,
    type_code_of,
)

SEED = int(os.environ.get("MESH_WIRE_FUZZ_SEED", "31337"))
CASES = 100_000  # about 20 s on a quiet CI core, hence @slow
QUICK_CASES = 3_000
POOL_SIZE = 3000
TIME_S_MAX = 100  # CI budget is two minutes; fail loudly well before a runner kills us
INTERESTING_BYTES = [0x00, 0x01, 0x17, 0x18, 0x1B, 0x1C, 0x1F, 0x40, 0x5F, 0x60, 0x7F, 0x80,
                     0x81, 0x9B, 0x9F, 0xA1, 0xBF, 0xC0, 0xC1, 0xC2, 0xD8, 0xF4, 0xF5, 0xF6,
                     0xF7, 0xF9, 0xFA, 0xFB, 0xFF]


def case_seed(seed: int, case: int) -> int:
    return seed * 1_000_003 + case


# --- valid messages from the schema -----------------------------------------------------------


def random_value(spec: Spec, rng: random.Random) -> object:
    """A random value satisfying `spec`, biased towards its edges."""
    if isinstance(spec, Int):
        return rng.choice([spec.min, spec.max, spec.min + 1, rng.randint(spec.min, spec.max)])
    if isinstance(spec, Text):
        alphabet = spec.alphabet or "aZ 09-é€😀"
        size = random_size(spec.bytes_min, spec.bytes_max // 4, rng)
        return "".join(rng.choices(alphabet, k=size))
    if isinstance(spec, Base32Id):
        return b32encode(rng.randbytes(spec.raw_bytes))
    if isinstance(spec, Bytes):
        return rng.randbytes(random_size(spec.bytes_min, spec.bytes_max, rng))
    if isinstance(spec, Nullable):
        return None if rng.random() < 0.3 else random_value(spec.inner, rng)
    if isinstance(spec, TupleOf):
        count = random_size(0, spec.items_max, rng, small=4)
        return tuple(random_value(spec.item, rng) for _ in range(count))
    if isinstance(spec, Nested):
        return random_record(spec.cls, rng)
    raise TypeError(f"no generator for {spec!r}: add one to tests/test_wire_fuzz.py")


def random_size(low: int, high: int, rng: random.Random, small: int = 40) -> int:
    """Mostly small sizes (fuzzing is about structure), sometimes the very edge."""
    if rng.random() < 0.03:
        return high if high <= 4096 else low
    return rng.randint(low, max(low, min(high, small)))


def random_record(cls: type, rng: random.Random) -> object:
    return cls(**{name: random_value(spec, rng) for name, spec in record_fields(cls)})


def random_message(rng: random.Random) -> Message:
    cls = rng.choice(list(MESSAGE_TYPES.values()))
    return random_record(cls, rng)  # type: ignore[return-value]


def valid_body(rng: random.Random) -> bytes:
    return encode_message(random_message(rng))


@functools.cache
def valid_pool(seed: int) -> tuple[bytes, ...]:
    """Valid bodies for the mutators to start from (built once per seed: generating is slow)."""
    rng = random.Random(seed)
    return tuple(valid_body(rng) for _ in range(POOL_SIZE))


def pooled_body(rng: random.Random) -> bytes:
    return rng.choice(valid_pool(SEED))


# --- bodies that are wrong in every way we can think of --------------------------------------


def mutate(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        rng.choice(MUTATIONS)(data, rng)
    return bytes(data)


def flip_bits(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def overwrite_byte(data: bytearray, rng: random.Random) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES + [rng.randrange(256)])


def truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randint(0, len(data)) :]


def insert_bytes(data: bytearray, rng: random.Random) -> None:
    at = rng.randint(0, len(data))
    data[at:at] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 9)))


def delete_range(data: bytearray, rng: random.Random) -> None:
    at = rng.randint(0, len(data))
    del data[at : at + rng.randint(1, 8)]


def duplicate_range(data: bytearray, rng: random.Random) -> None:
    at = rng.randint(0, len(data))
    data[at:at] = data[at : at + rng.randint(1, 16)]


def splice(data: bytearray, rng: random.Random) -> None:
    other = pooled_body(rng)
    at = rng.randint(0, len(data))
    data[at:] = other[rng.randint(0, len(other)) :]


def retype(data: bytearray, rng: random.Random) -> None:
    """Keep the fields, swap the type code: the schema must catch the mismatch."""
    if len(data) > 1 and data[1] < 24:
        data[1] = rng.randrange(24)


MUTATIONS: list[Callable[[bytearray, random.Random], None]] = [
    flip_bits, overwrite_byte, truncate, insert_bytes,
    delete_range, duplicate_range, splice, retype,
]


def random_cbor_value(rng: random.Random, depth: int = 0) -> object:
    """Any CBOR cbor2 can write: tags, maps, floats, big numbers, dates, undefined, nesting."""
    kind = rng.randrange(14 if depth < 4 else 8)
    leaves: list[Callable[[], object]] = [
        lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.randint(-30, 300),
        lambda: rng.randbytes(rng.randint(0, 20)),
        lambda: "".join(rng.choice("ab\x00é😀\u202e") for _ in range(rng.randint(0, 20))),
        lambda: rng.choice([True, False, None, cbor2.undefined, float("nan"), -0.0, 1e300]),
        lambda: rng.random(),
        lambda: datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
        lambda: cbor2.CBORSimpleValue(rng.choice([0, 19, 32, 255])),
    ]
    if kind < len(leaves):
        return leaves[kind]()
    if kind < 11:
        return [random_cbor_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind < 13:
        keys = [rng.randint(0, 9) for _ in range(rng.randint(0, 3))]
        return {key: random_cbor_value(rng, depth + 1) for key in keys}
    return cbor2.CBORTag(rng.choice([0, 1, 2, 24, 28, 29, 37, 258, 55799, 2**40]),
                         random_cbor_value(rng, depth + 1))


def random_cbor_body(rng: random.Random) -> bytes:
    """Random CBOR, often shaped like a message so it reaches the field checks."""
    value = random_cbor_value(rng)
    if rng.random() < 0.6:
        code = rng.choice(list(MESSAGE_TYPES))
        arity = len(record_fields(MESSAGE_TYPES[code])) + rng.choice([0, 0, 0, -1, 1])
        value = [code, *(random_cbor_value(rng, 1) for _ in range(max(arity, 0)))]
    return cbor2.dumps(value, canonical=rng.random() < 0.5)


def random_bytes_body(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, 64))


def deep_body(rng: random.Random) -> bytes:
    opener = rng.choice([b"\x81", b"\x9f", b"\xa1\x00", b"\xc1", b"\x82\x00"])
    return opener * rng.randint(1, 5000) + b"\x00"


FAMILIES: dict[str, Callable[[random.Random], bytes]] = {
    "valid": valid_body,
    "mutated": lambda rng: mutate(pooled_body(rng), rng),
    "random_cbor": random_cbor_body,
    "mutated_cbor": lambda rng: mutate(random_cbor_body(rng), rng),
    "random_bytes": random_bytes_body,
    "deep": deep_body,
}
WEIGHTS = [10, 45, 20, 10, 10, 5]


# --- frames and feeding -------------------------------------------------------------------------


def frame_header(body: bytes, rng: random.Random) -> bytes:
    """Mostly the true length; sometimes a corrupted one."""
    if rng.random() < 0.85:
        length = len(body)
    else:
        length = rng.choice([0, 1, len(body) - 1, len(body) + 1, FRAME_BYTES_MAX,
                             FRAME_BYTES_MAX + 1, 2**32 - 1, rng.getrandbits(32)])
    return max(length, 0).to_bytes(4, "big")


def feed(stream: bytes, rng: random.Random) -> tuple[list[Message], str | None]:
    """Feed `stream` in random pieces; the messages decoded and the error reason, if any."""
    decoder, messages, pos = MessageDecoder(), [], 0
    while pos < len(stream):
        step = rng.choice([1, 3, 7, 64, len(stream)])
        decoder.receive_data(stream[pos : pos + step])
        pos += step
        try:
            while (msg := decoder.next_message()) is not None:
                messages.append(msg)
        except RemoteProtocolError as exc:
            return messages, str(exc)
    return messages, None


def run_case(seed: int, case: int) -> tuple[str, str | None]:
    """One fuzz case: its family and why its first body was refused (None: it decoded)."""
    rng = random.Random(case_seed(seed, case))
    family = rng.choices(list(FAMILIES), WEIGHTS)[0]
    bodies = [FAMILIES[family](rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    reason = check_body(bodies[0])
    stream = b"".join(frame_header(body, rng) + body for body in bodies)
    for msg in feed(stream, rng)[0]:
        assert decode_message(encode_message(msg)) == msg
    return family, reason


def check_body(body: bytes) -> str | None:
    """Decode one body directly: an accepted body must be the canonical encoding of its message."""
    try:
        msg = decode_message(body)
    except RemoteProtocolError as exc:
        assert str(exc), "an error without a reason"
        return re.sub(r"\d+", "#", str(exc))
    assert encode_message(msg) == body, "accepted a non-canonical encoding"
    return None


def fuzz(seed: int, cases: int) -> tuple[Counter[tuple[str, bool]], set[str]]:
    """Run `cases` cases; outcome counts per (family, accepted) and the distinct refusal reasons."""
    outcomes: Counter[tuple[str, bool]] = Counter()
    reasons: set[str] = set()
    for case in range(cases):
        try:
            family, reason = run_case(seed, case)
        except Exception as exc:
            raise AssertionError(
                f"wire fuzz failed: seed={seed} case={case}: {type(exc).__name__}: {exc}\n"
                f"replay: MESH_WIRE_FUZZ_SEED={seed}, run_case({seed}, {case})"
            ) from exc
        outcomes[family, reason is None] += 1
        reasons.add(reason or "")
    return outcomes, reasons


def test_decoder_survives_a_quick_fuzz() -> None:
    outcomes, _ = fuzz(SEED, QUICK_CASES)
    assert outcomes["valid", False] == 0


@pytest.mark.slow
def test_decoder_survives_random_and_mutated_frames() -> None:
    started = time.monotonic()
    outcomes, reasons = fuzz(SEED, CASES)
    elapsed_s = time.monotonic() - started
    print(f"wire fuzz seed={SEED} cases={CASES} in {elapsed_s:.1f}s: {dict(outcomes)}")
    assert elapsed_s < TIME_S_MAX, f"fuzzing took {elapsed_s:.0f}s (seed={SEED})"
    assert_the_fuzzer_reached_deep(outcomes, reasons)


def assert_the_fuzzer_reached_deep(outcomes: Counter, reasons: set[str]) -> None:
    """Guard against a fuzzer that only ever trips the first check."""
    assert outcomes["valid", False] == 0
    assert outcomes["mutated", True] > 100 and outcomes["mutated", False] > 10_000
    assert outcomes["random_cbor", False] > 1_000
    field_reasons = {r for r in reasons if re.match(r"\w+\.\w+", r)}
    assert len(field_reasons) >= 15, sorted(field_reasons)
    assert len(reasons) >= 40, sorted(reasons)


def test_every_message_type_is_generated() -> None:
    rng = random.Random(SEED)
    seen = {type(random_message(rng)) for _ in range(50 * len(MESSAGE_TYPES))}
    assert seen == set(MESSAGE_TYPES.values())
    assert all(type_code_of(cls) in MESSAGE_TYPES for cls in seen)
