"""The secure channel over real loopback TCP, with real membership credentials."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import cbor2
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.drivers.channel import (
    LARGE_RECORD_HEAD_ROOM_BYTES,
    LARGE_RECORD_PLAINTEXT_BYTES_MAX,
    MESSAGE_3_BYTES_MAX,
    NOISE_AESGCM,
    NOISE_CHACHA,
    RECORD_PLAINTEXT_BYTES_MAX_ANY,
    HandshakeError,
    LocalIdentity,
    SecureChannelError,
    SecureStream,
    channel_psk,
    membership_authenticator,
    secure_accept,
    secure_accept_any,
    cpu_has_fast_aes,
    default_ciphers,
    secure_connect,
    serve_secure,
)
from mesh.errors import RemoteProtocolError
from mesh.ids import node_id_from_public_key
from mesh.state import membership
from mesh.state.membership import Role, public_key_bytes

HANDSHAKE_TIMEOUT_S = 0.5  # the listener's, short so the silent-client case is quick
TEST_TIMEOUT_S = 10


@dataclass
class Mesh:
    """A mesh made for one test: its authority, first organizer and revocation list."""

    authority: Ed25519PrivateKey  # the mesh authority key
    organizer: LocalIdentity  # the first organizer (runs the listener in most tests)
    revocations: membership.RevocationList  # consulted by `authenticate` at each handshake
    psk: bytes  # the mesh's channel key (from its random mesh key)
    members: list[LocalIdentity] = field(default_factory=list)  # everyone invited so far

    @property
    def authority_public_key(self) -> bytes:
        return public_key_bytes(self.authority)

    @property
    def authenticate(self) -> Callable[[bytes, bytes], membership.Member]:
        return membership_authenticator(self.authority_public_key, self.revocations)

    def invite(self, name: str, role: Role = Role.EDGE) -> LocalIdentity:
        """A new member admitted through a real invite token."""
        now = time.time()
        token = membership.create_invite(
            self.authority_public_key,
            self.organizer.node_key,
            self.organizer.chain,
            role,
            name,
            now + 3600,
            [("127.0.0.1", 1)],
            now,
        )
        key = Ed25519PrivateKey.generate()
        joined = membership.redeem_invite(token, key, name, now)
        identity = LocalIdentity(key, joined.chain, self.psk)
        self.members.append(identity)
        return identity

    def revoke(self, identity: LocalIdentity) -> None:
        now = time.time()
        blob = membership.create_revocation(
            self.authority_public_key, self.authority, None, node_id_of(identity), now, "lost"
        )
        self.revocations.add(blob, now)


def make_mesh(name: str = "organizer") -> Mesh:
    authority, key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    chain = membership.create_first_credential(authority, key, name, time.time())
    revocations = membership.RevocationList(public_key_bytes(authority))
    psk = channel_psk(public_key_bytes(authority), os.urandom(membership.MESH_KEY_BYTES))
    return Mesh(authority, LocalIdentity(key, chain, psk), revocations, psk)


def node_id_of(identity: LocalIdentity) -> str:
    return node_id_from_public_key(public_key_bytes(identity.node_key))


def run(afn: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with trio.fail_after(TEST_TIMEOUT_S):
            await afn()

    trio.run(bounded)


async def tcp_pair(
    server: LocalIdentity,
    client: LocalIdentity,
    mesh: Mesh,
    server_ciphers: tuple[bytes, ...] | None = None,
    client_ciphers: tuple[bytes, ...] | None = None,
    records: str = "large",
) -> tuple[SecureStream, SecureStream]:
    """(client side, server side) of one secure connection over real TCP. `records`: "large"
    (both ends of this version), "old-client" or "old-server" (one end older than large records),
    "roomless-client" or "roomless-server" (one end with large records but no head room)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[SecureStream] = []

    async def accept_one() -> None:
        transport = await listeners[0].accept()
        accepted.append(
            await secure_accept(transport, server, mesh.authenticate, ciphers=server_ciphers,
                                large_records=records != "old-server", head_room=records != "roomless-server")
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_one)
        transport = await trio.open_tcp_stream("127.0.0.1", port)
        client_side = await secure_connect(
            transport, client, mesh.authenticate, ciphers=client_ciphers,
            large_records=records != "old-client", head_room=records != "roomless-client",
        )
    await listeners[0].aclose()
    return client_side, accepted[0]


async def echo(stream: SecureStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def start_server(
    nursery: trio.Nursery,
    mesh: Mesh,
    handler: Callable[[SecureStream], Awaitable[None]] = echo,
    ciphers: tuple[bytes, ...] | None = None,
) -> int:
    """Run serve_secure for the mesh's organizer on a fresh loopback port; return the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    serve = partial(
        serve_secure,
        listeners,
        mesh.organizer,
        mesh.authenticate,
        handler,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        ciphers=ciphers,
    )
    await nursery.start(serve)
    return listeners[0].socket.getsockname()[1]


async def dial(port: int, identity: LocalIdentity, mesh: Mesh) -> SecureStream:
    transport = await trio.open_tcp_stream("127.0.0.1", port)
    return await secure_connect(transport, identity, mesh.authenticate, handshake_timeout_s=5)


async def receive_exactly(stream: trio.abc.Stream, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        data = await stream.receive_some()
        assert data, f"EOF after {len(got)} of {count} bytes"
        got += data
    return bytes(got)


async def assert_echo_works(port: int, identity: LocalIdentity, mesh: Mesh) -> None:
    stream = await dial(port, identity, mesh)
    await stream.send_all(b"ping")
    assert await receive_exactly(stream, 4) == b"ping"
    await stream.aclose()


async def wait_for_log(caplog: pytest.LogCaptureFixture, needle: str) -> str:
    """The first mesh.channel log line containing `needle` (the server logs after it closes)."""
    while True:
        for record in caplog.records:
            if record.name == "mesh.channel" and needle in record.getMessage():
                return record.getMessage()
        await trio.sleep(0.01)


# ---- members talk --------------------------------------------------------------------------------


RECORD_MODES = ["large", "old-client", "old-server", "roomless-client", "roomless-server"]


@pytest.mark.parametrize("records", RECORD_MODES)
def test_two_members_handshake_and_exchange_both_ways(records: str) -> None:
    mesh = make_mesh()
    edge = mesh.invite("door-box")
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several records, not a multiple of any size

    async def main() -> None:
        client, server = await tcp_pair(mesh.organizer, edge, mesh, records=records)
        assert client.large_records is server.large_records is (records in ("large", "roomless-client", "roomless-server"))
        assert client.head_room is server.head_room is (records == "large")
        room = LARGE_RECORD_HEAD_ROOM_BYTES if records == "large" else 0
        expected = {"large": LARGE_RECORD_PLAINTEXT_BYTES_MAX + room}.get(records, LARGE_RECORD_PLAINTEXT_BYTES_MAX)
        if records.startswith("old"):
            expected = 65535 - 16
        assert client.record_plaintext_bytes_max == server.record_plaintext_bytes_max == expected
        assert client.peer.node_id == node_id_of(mesh.organizer)
        assert client.peer.role is Role.ORGANIZER
        assert client.peer_public_key == public_key_bytes(mesh.organizer.node_key)
        assert server.peer.node_id == node_id_of(edge)
        assert (server.peer.role, server.peer.name) == (Role.EDGE, "door-box")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            assert await receive_exactly(server, len(payload)) == payload
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, payload[::-1])
            assert await receive_exactly(client, len(payload)) == payload[::-1]
        await client.aclose()
        assert await server.receive_some() == b""
        await server.aclose()

    run(main)


@pytest.mark.parametrize("records", ["large", "old-client"])
def test_small_reads_return_every_byte_in_order(records: str) -> None:
    mesh = make_mesh()
    edge = mesh.invite("edge")
    payload = os.urandom(200_000)

    async def main() -> None:
        client, server = await tcp_pair(mesh.organizer, edge, mesh, records=records)
        got = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            while len(got) < len(payload):
                got += await server.receive_some(7)
        assert got == payload
        await client.aclose()
        await server.aclose()

    run(main)


def test_records_that_arrived_together_come_back_in_one_read() -> None:
    """Each send is its own record; a reader that was busy gets every record that arrived
    meanwhile in one read (up to its max), in order, instead of one read per record."""
    mesh = make_mesh()
    edge = mesh.invite("edge")
    messages = [os.urandom(100 + index) for index in range(50)]
    client: SecureStream

    async def send() -> None:
        for message in messages:
            await client.send_all(message)
        await client.send_all(b"\x00" * 100_000)  # bulk after them: two records

    async def main() -> None:
        nonlocal client
        client, server = await tcp_pair(mesh.organizer, edge, mesh)
        expected = b"".join(messages) + b"\x00" * 100_000
        reads = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.2)  # all of it is in the server's socket now
            while sum(map(len, reads)) < len(expected):
                reads.append(await server.receive_some(64 * 1024))
        assert b"".join(reads) == expected
        assert all(len(read) <= 64 * 1024 for read in reads)
        assert reads[0] == b"".join(messages)  # 50 records, one read (the next record is too big)
        assert len(reads) <= 4
        await client.aclose()
        await server.aclose()

    run(main)


@pytest.mark.parametrize("records", ["large", "roomless-server"])
def test_a_piece_and_its_head_sent_in_one_write_arrive_in_one_read(records: str) -> None:
    """With head room (both ends of this version) a 1 MiB chunk piece behind its message head is
    one record: the receiver reads it whole, once. A peer without head room gets the same bytes
    as a full record and a short one."""
    mesh = make_mesh()
    edge = mesh.invite("edge")
    frame = os.urandom(60) + os.urandom(2**20)

    async def main() -> None:
        client, server = await tcp_pair(mesh.organizer, edge, mesh, records=records)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, frame)
            reads = [await server.receive_some(RECORD_PLAINTEXT_BYTES_MAX_ANY)]
            while sum(map(len, reads)) < len(frame):
                reads.append(await server.receive_some(RECORD_PLAINTEXT_BYTES_MAX_ANY))
        assert b"".join(reads) == frame
        assert len(reads) == (1 if records == "large" else 2)
        await client.aclose()
        await server.aclose()

    run(main)


def test_secure_stream_passes_trio_two_way_stream_checks() -> None:
    mesh = make_mesh()
    edge = mesh.invite("edge")

    async def main() -> None:
        await trio.testing.check_two_way_stream(partial(tcp_pair, mesh.organizer, edge, mesh), None)

    run(main)


def test_concurrent_sends_conflict() -> None:
    mesh = make_mesh()
    edge = mesh.invite("edge")

    async def main() -> None:
        client, server = await tcp_pair(mesh.organizer, edge, mesh)
        outcome: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, bytes(64 * 1024 * 1024))  # blocks: nobody reads
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.send_all(b"x")
            outcome.append("busy")
            nursery.cancel_scope.cancel()
        assert outcome == ["busy"]
        await client.aclose()
        await server.aclose()

    run(main)


# ---- cipher suite choice -------------------------------------------------------------------------

AES, CHACHA = NOISE_AESGCM, NOISE_CHACHA
CHOICES = [
    ((AES, CHACHA), (AES, CHACHA), AES),  # both have AES instructions
    ((CHACHA, AES), (AES, CHACHA), CHACHA),  # the initiator has none
    ((AES, CHACHA), (CHACHA, AES), CHACHA),  # the responder has none
    ((AES,), (CHACHA, AES), AES),  # the initiator insists
    ((CHACHA, AES), (AES,), AES),  # the responder insists
]


@pytest.mark.parametrize(("client_ciphers", "server_ciphers", "expected"), CHOICES)
def test_cipher_suite_choice(
    client_ciphers: tuple[bytes, ...], server_ciphers: tuple[bytes, ...], expected: bytes
) -> None:
    mesh = make_mesh()
    edge = mesh.invite("edge")

    async def main() -> None:
        client, server = await tcp_pair(
            mesh.organizer, edge, mesh, server_ciphers=server_ciphers, client_ciphers=client_ciphers
        )
        assert client.protocol_name == server.protocol_name == expected
        await client.send_all(b"over " + expected)
        assert await server.receive_some() == b"over " + expected
        await client.aclose()
        await server.aclose()

    run(main)


def test_no_common_cipher_suite_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mesh.channel")
    mesh = make_mesh()
    edge = mesh.invite("edge")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, mesh, ciphers=(AES,))
            transport = await trio.open_tcp_stream("127.0.0.1", port)
            with pytest.raises(HandshakeError, match="closed"):
                await secure_connect(transport, edge, mesh.authenticate, ciphers=(CHACHA,))
            assert "no cipher suite in common" in await wait_for_log(caplog, "peer.refused")
            nursery.cancel_scope.cancel()

    run(main)


def test_default_ciphers_follow_the_cpu() -> None:
    assert set(default_ciphers()) == {AES, CHACHA}
    assert default_ciphers()[0] == (AES if cpu_has_fast_aes() else CHACHA)


async def tampering_relay(
    upstream_port: int,
    direction: str,
    offset: int,
    mask: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A man in the middle: relays one connection, XOR-ing `mask` into byte `offset` of one way."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    downstream = await listeners[0].accept()
    upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)

    async def pump(source: trio.abc.Stream, sink: trio.abc.Stream, tamper: bool) -> None:
        seen = 0
        try:
            while data := await source.receive_some():
                if tamper and seen <= offset < seen + len(data):
                    data = bytearray(data)
                    data[offset - seen] ^= mask
                seen += len(data)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # the other way closed it first
            pass
        finally:
            await trio.aclose_forcefully(sink)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, downstream, upstream, direction == "to-server")
        nursery.start_soon(pump, upstream, downstream, direction == "to-client")


@pytest.mark.parametrize(
    ("direction", "offset", "mask"),
    [("to-server", 2, 0x80), ("to-server", 2, 0x02), ("to-client", 2, 0x01), ("to-server", 2, 0x40),
     ("to-client", 2, 0x40), ("to-server", 2, 0x20), ("to-client", 2, 0x80)],
    ids=["offer-drops-aes-preference", "offer-drops-aes", "choice-flipped", "offer-drops-large-records",
         "choice-drops-large-records", "offer-drops-head-room", "choice-drops-head-room"],
)
def test_cipher_negotiation_cannot_be_downgraded(
    direction: str, offset: int, mask: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Altering the offer or the choice changes one side's prologue: message 1 fails its tag at
    the listener, which closes; the client sees the refusal."""
    caplog.set_level(logging.INFO, logger="mesh.channel")
    mesh = make_mesh()
    edge = mesh.invite("edge")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, mesh, ciphers=(AES, CHACHA))
            relay_port = await nursery.start(tampering_relay, port, direction, offset, mask)
            transport = await trio.open_tcp_stream("127.0.0.1", relay_port)
            with pytest.raises(HandshakeError, match="closed"):
                await secure_connect(transport, edge, mesh.authenticate, ciphers=(AES, CHACHA))
            assert "message 1 fails" in await wait_for_log(caplog, "peer.refused")
            nursery.cancel_scope.cancel()

    run(main)
    assert not [r for r in caplog.records if "peer.accepted" in r.getMessage()]


# ---- refusals ------------------------------------------------------------------------------------


async def other_mesh_node(port: int, mesh: Mesh) -> None:
    stranger = make_mesh("stranger").organizer
    with pytest.raises(HandshakeError, match="closed"):
        await dial(port, stranger, mesh)  # it lacks our mesh key: refused at message 1


async def other_mesh_node_with_our_mesh_key(port: int, mesh: Mesh) -> None:
    stranger = make_mesh("stranger").organizer
    leaked = LocalIdentity(stranger.node_key, stranger.chain, mesh.psk)  # a leaked key is not membership
    with pytest.raises(HandshakeError, match="refused us"):
        await dial(port, leaked, mesh)  # it trusts our organizer; we must not trust it


async def expired_member(port: int, mesh: Mesh) -> None:
    key = Ed25519PrivateKey.generate()
    chain = membership.create_first_credential(
        mesh.authority, key, "stale", time.time() - 7200, valid_s=3600
    )
    with pytest.raises(HandshakeError, match="refused us"):
        await dial(port, LocalIdentity(key, chain, mesh.psk), mesh)


async def revoked_member(port: int, mesh: Mesh) -> None:
    edge = mesh.invite("stolen-box")
    mesh.revoke(edge)
    with pytest.raises(HandshakeError, match="refused us"):
        await dial(port, edge, mesh)


async def forged_credential(port: int, mesh: Mesh) -> None:
    """A credential naming our mesh, but signed by a key that is not the mesh authority."""
    key, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    genuine = membership.create_first_credential(mesh.authority, key, "forger", time.time())
    body_bytes = cbor2.loads(genuine)[0][0]
    forged = cbor2.dumps(
        [membership._sign(impostor, "credential", cbor2.loads(body_bytes))], canonical=True
    )
    with pytest.raises(HandshakeError, match="refused us"):
        await dial(port, LocalIdentity(key, forged, mesh.psk), mesh)


async def borrowed_credential(port: int, mesh: Mesh) -> None:
    """A member's real chain presented by a node that does not hold that member's key."""
    victim = mesh.invite("victim")
    with pytest.raises(HandshakeError, match="refused us"):
        await dial(port, LocalIdentity(Ed25519PrivateKey.generate(), victim.chain, mesh.psk), mesh)


async def wait_closed_by_peer(stream: trio.abc.Stream) -> None:
    """Read until the listener hangs up (EOF, or a reset if our bytes were left unread)."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def oversized_credential(port: int, mesh: Mesh) -> None:
    bloated = LocalIdentity(Ed25519PrivateKey.generate(), bytes(membership.CHAIN_BYTES_MAX * 2), mesh.psk)
    with pytest.raises(HandshakeError, match="refused us|connection lost"):  # reset: unread bytes
        await dial(port, bloated, mesh)


async def plain_tcp_garbage(port: int, mesh: Mesh) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: assetmesh\r\n\r\n")
    await wait_closed_by_peer(stream)


async def framed_garbage(port: int, mesh: Mesh) -> None:
    """A valid cipher offer, then a right-sized message 1 full of random bytes: the listener
    answers nothing but its cipher choice, then closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"\x00\x01\x03")
    assert await receive_exactly(stream, 3) in (b"\x00\x01\x00", b"\x00\x01\x01")  # choice
    await stream.send_all(b"\x00\x30" + os.urandom(48))
    assert await stream.receive_some() == b"", "no message 2 for a stranger"
    await stream.aclose()


async def silent_client(port: int, mesh: Mesh) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(HANDSHAKE_TIMEOUT_S * 6):
        assert await stream.receive_some() == b""
    await stream.aclose()


REFUSALS = [
    (other_mesh_node, "not this mesh"),
    (other_mesh_node_with_our_mesh_key, "credential refused: "),
    (expired_member, "credential refused: "),
    (revoked_member, "credential refused: "),
    (forged_credential, "credential refused: bad signature"),
    (borrowed_credential, "credential refused: credential belongs to another node"),
    (oversized_credential, f"bytes, expected 1..{MESSAGE_3_BYTES_MAX}"),
    (plain_tcp_garbage, "cipher offer has 18245 bytes, expected 1"),
    (framed_garbage, "not this mesh"),
    (silent_client, f"no handshake within {HANDSHAKE_TIMEOUT_S} s"),
]


@pytest.mark.parametrize(("attempt", "reason"), REFUSALS, ids=[f.__name__ for f, _ in REFUSALS])
def test_listener_refuses_logs_reason_and_keeps_serving(
    attempt: Callable[[int, Mesh], Awaitable[None]], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.channel")
    mesh = make_mesh()
    good = mesh.invite("good-edge")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, mesh)
            await attempt(port, mesh)
            line = await wait_for_log(caplog, "peer.refused")
            assert reason in line
            assert "addr=127.0.0.1:" in line
            await assert_echo_works(port, good, mesh)
            await wait_for_log(caplog, f"peer.accepted node={node_id_of(good)}")
            nursery.cancel_scope.cancel()

    run(main)
    refused = [r for r in caplog.records if "peer.refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]


def test_refusal_reasons_name_the_credential_problem(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mesh.channel")
    mesh = make_mesh()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, mesh)
            for attempt, words in [
                (other_mesh_node, "mesh"),
                (expired_member, "expired"),
                (revoked_member, "revoked"),
            ]:
                caplog.clear()
                await attempt(port, mesh)
                assert words in (await wait_for_log(caplog, "peer.refused")).lower()
            nursery.cancel_scope.cancel()

    run(main)


def test_client_refuses_listener_of_another_mesh() -> None:
    ours, theirs = make_mesh(), make_mesh("theirs")
    edge = ours.invite("edge")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, theirs)
            with pytest.raises(HandshakeError, match="closed") as info:
                await dial(port, edge, ours)  # our mesh key fails theirs at message 1
            assert isinstance(info.value, RemoteProtocolError)
            theirs.organizer = LocalIdentity(theirs.organizer.node_key, theirs.organizer.chain, ours.psk)
            port = await start_server(nursery, theirs)  # a listener that got hold of our mesh key
            with pytest.raises(HandshakeError, match="credential refused"):
                await dial(port, edge, ours)  # ... still proves no membership of ours
            nursery.cancel_scope.cancel()

    run(main)


def test_listener_keeps_serving_after_a_handler_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mesh.channel")
    mesh = make_mesh()
    edge = mesh.invite("edge")
    calls: list[str] = []

    async def flaky(stream: SecureStream) -> None:
        calls.append(stream.peer.node_id)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        await echo(stream)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, mesh, flaky)
            first = await dial(port, edge, mesh)
            assert await first.receive_some() == b""  # the failed session was closed
            assert "handler bug" in await wait_for_log(caplog, "peer.session_failed")
            await assert_echo_works(port, edge, mesh)
            nursery.cancel_scope.cancel()

    run(main)
    assert calls == [node_id_of(edge)] * 2


# ---- a peer that corrupts the record stream ------------------------------------------------------


BAD_RECORDS = [  # (length, body, reason)
    (32, bytes(32), "record failed authentication"),
    (5, b"abcde", "shorter than a tag"),
    (256, bytes(10), "closed in the middle of a record"),
    (200_000, bytes(10), "closed in the middle of a record"),  # large records: read straight into place
    (2**20 + LARGE_RECORD_HEAD_ROOM_BYTES + 17, bytes(10), "exceeds"),
]


BAD_RECORD_CASES = [  # Noise records' 2-byte length cannot announce the large ones
    pytest.param(records, *case, id=f"{records}-{name}")
    for records in ("large", "old-client")
    for case, name in zip(BAD_RECORDS, ["bad-tag", "short", "truncated", "truncated-large", "too-large"])
    if records == "large" or case[0] <= 65535
]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize(("records", "length", "body", "reason"), BAD_RECORD_CASES)
def test_bad_record_breaks_the_stream(records: str, length: int, body: bytes, reason: str, split: bool) -> None:
    raw = length.to_bytes(4 if records == "large" else 2, "big") + body
    mesh = make_mesh()
    edge = mesh.invite("edge")

    async def expect_broken(server: SecureStream) -> None:
        with pytest.raises(SecureChannelError, match=reason) as info:
            await server.receive_some()
        assert isinstance(info.value, trio.BrokenResourceError)
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()

    async def main() -> None:
        client, server = await tcp_pair(mesh.organizer, edge, mesh, records=records)
        await client.send_all(b"fine")
        assert await server.receive_some() == b"fine"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_broken, server)
            await trio.sleep(0.05)  # the server is waiting in receive_some
            pieces = [raw[:1], raw[1:3], raw[3:]] if split else [raw]
            for piece in pieces:  # bytes that did not come from the cipher
                await client.transport.send_all(piece)
                await trio.sleep(0.02 if split else 0)
            await client.transport.aclose()
        await server.aclose()

    run(main)


# ---- one listener, several meshes (a co-op hub) ----------------------------------------------------


def test_one_listener_selects_the_mesh_by_message_1_and_refuses_strangers() -> None:
    meshes = [make_mesh(f"creator-{i}") for i in range(3)]
    hub = [mesh.invite("hub", Role.HUB) for mesh in meshes]
    candidates = [(identity, mesh.authenticate) for identity, mesh in zip(hub, meshes)]
    stranger = make_mesh("stranger")

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        chosen: list[int] = []
        refused: list[str] = []

        async def accept(count: int) -> None:
            for _ in range(count):
                transport = await listeners[0].accept()
                try:
                    index, secure = await secure_accept_any(transport, candidates)
                except HandshakeError as exc:
                    refused.append(exc.reason)
                    continue
                chosen.append(index)
                await echo(secure)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept, 4)
            for index in (2, 0, 1):  # an edge of each mesh, in another order
                edge = meshes[index].invite(f"edge-{index}")
                secure = await secure_connect(await trio.open_tcp_stream("127.0.0.1", port), edge,
                                              meshes[index].authenticate)
                assert secure.peer.name == "hub"
                await secure.send_all(b"hello")
                assert await secure.receive_some(100) == b"hello"
                await secure.aclose()
            with pytest.raises(HandshakeError):
                await secure_connect(await trio.open_tcp_stream("127.0.0.1", port), stranger.organizer,
                                     stranger.authenticate)
        await listeners[0].aclose()
        assert chosen == [2, 0, 1]
        assert len(refused) == 1 and "not this mesh" in refused[0]

    run(main)
