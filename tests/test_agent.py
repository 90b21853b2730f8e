"""Real `mesh up` processes: discovery, sessions, state sync, revocation, crashes, hostile peers."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import trio

from mesh.drivers.channel import HandshakeError, LocalIdentity, channel_psk, membership_authenticator, secure_connect
from mesh.drivers.home import Home
from mesh.testing.netns import netns_available
from tests.agents import Node, agents_in_namespace, free_port, make_mesh, stop_all, wait_until

CONVERGE_S = 20


def _add_tagged(node: Node, tmp_path: Path, name: str, *tags: str) -> str:
    path = tmp_path / name
    path.write_bytes(name.encode() * 10)
    args = [a for tag in tags for a in ("--tag", tag)]
    return node.json("add", str(path), *args)[0]["cid"]


def _same_heads(nodes: list[Node]) -> bool:
    heads = {tuple(node.json("status")["state"]["heads"]) for node in nodes}
    return len(heads) == 1


def test_static_peers_converge_and_tag_changes_reach_everyone(tmp_path: Path) -> None:
    org, edges = make_mesh(tmp_path, 3)
    nodes = [org, *edges]
    try:
        org.start("--no-mdns")
        for edge in edges:
            edge.start("--no-mdns", "--peer", org.address)
        others = {n.node_id for n in nodes}
        for node in nodes:  # peer exchange turns a star into a full mesh
            wait_until(lambda n=node: n.peers() == others - {n.node_id}, CONVERGE_S, f"{node.home.name} full mesh")
        cid = _add_tagged(org, tmp_path, "poster.png", "merch")
        for edge in edges:
            wait_until(lambda e=edge: e.tags_of(cid) == {"merch"}, CONVERGE_S, "asset to reach edges")
        edges[1].cli("tag", cid, "--add", "stage-a")
        for node in nodes:
            wait_until(lambda n=node: n.tags_of(cid) == {"merch", "stage-a"}, CONVERGE_S, "tag change everywhere")
        wait_until(lambda: _same_heads(nodes), CONVERGE_S, "identical heads")
        # peer exchange makes nodes dial each other at once: that race is settled quietly (debug)
        for node in nodes:
            noisy = [line for line in node.log().splitlines() if " INFO " in line
                     and ("peer.refused" in line or "duplicate session" in line)]
            assert noisy == [], noisy
    finally:
        stop_all(nodes)


def test_revoked_node_is_cut_off_everywhere(tmp_path: Path) -> None:
    org, edges = make_mesh(tmp_path, 2)
    nodes = [org, *edges]
    try:
        org.start("--no-mdns")
        for edge in edges:
            edge.start("--no-mdns", "--peer", org.address)
        victim = edges[1].node_id
        wait_until(lambda: victim in edges[0].peers(), CONVERGE_S, "edges to meet")
        org.cli("revoke", victim)
        for node in (org, edges[0]):
            wait_until(lambda n=node: victim not in n.peers(), 10, "revoked node dropped")
        time.sleep(3)  # it keeps redialing; nobody lets it back in
        assert victim not in org.peers() and victim not in edges[0].peers()
        assert edges[1].peers() == set()
        assert "node revoked" in org.log()
    finally:
        stop_all(nodes)


def test_sigkill_mid_sync_then_restart_loses_nothing(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    files = tmp_path / "batch"
    files.mkdir()
    cids = set()
    for batch in range(8):
        for index in range(40):
            (files / f"f{batch}-{index}.txt").write_bytes(f"asset {batch} {index}".encode())
        cids |= {r["cid"] for r in org.json("add", str(files), "--tag", f"batch-{batch}")}
    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address)
        time.sleep(0.3)
        edge.stop(signal.SIGKILL)
        edge.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: {r["cid"] for r in edge.json("ls")} == cids, CONVERGE_S, "edge to have every asset")
        wait_until(lambda: _same_heads([org, edge]), CONVERGE_S, "identical heads")
    finally:
        stop_all([org, edge])


def test_reused_invite_token_is_refused(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "popup-test")
    token = org.cli("invite", "--role", "edge").stdout.decode().strip()
    first, second = Node(tmp_path / "first"), Node(tmp_path / "second")
    first.cli("join", token, "--name", "first")
    second.cli("join", token, "--name", "second")
    try:
        org.start("--no-mdns")
        first.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: first.node_id in org.peers(), CONVERGE_S, "first user of the token admitted")
        second.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: "invite already used" in org.log(), CONVERGE_S, "second use refused")
        assert second.node_id not in org.peers()
        # the refused box's operator is told why, in status and in its health checks
        wait_until(lambda: second.json("status").get("refused_by"), CONVERGE_S, "the refusal in status")
        refusal = second.json("status")["refused_by"][0]
        assert refusal["addr"] == org.address and "invite already used" in refusal["reason"]
        assert f"refused by {org.address}: " in second.cli("status").stdout.decode()
    finally:
        stop_all([org, first, second])


async def _hostile_session(home: Path, address: tuple[str, int], payload: bytes) -> bytes:
    """Handshake as a real member, then send `payload`; return what the agent answers."""
    opened = Home.open(home)
    info = opened.info
    local = LocalIdentity(opened.node_key(), info.chain, channel_psk(info.authority_public_key, info.mesh_key))
    stream = await trio.open_tcp_stream(*address)
    secure = await secure_connect(stream, local, membership_authenticator(opened.info.authority_public_key))
    await secure.send_all(payload)
    received = b""
    with trio.move_on_after(10):
        while chunk := await secure.receive_some(65536):
            received += chunk
    await secure.aclose()
    return received


async def _stranger_bytes(port: int, local: LocalIdentity | None, authority: bytes = b"") -> bytes:
    """Connect to an agent as a stranger: a real handshake attempt with `local` (checking the
    listener against `authority`), or with None a valid offer then a random message 1; every
    byte the agent sends until it closes."""
    from mesh.drivers.channel import NOISE_CHACHA

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    recorder = _Recorder(stream)
    with trio.move_on_after(10):
        if local is None:
            await stream.send_all(b"\x00\x01\x61")  # offer: ChaCha only, no AES preference, large records, head room
            await recorder.receive_some(3)
            await stream.send_all(b"\x00\x30" + os.urandom(48))
        else:
            try:
                await secure_connect(recorder, local, membership_authenticator(authority), ciphers=(NOISE_CHACHA,))
            except HandshakeError:  # refused, as it must be
                pass
        while await recorder.receive_some(65536):
            pass
    await stream.aclose()
    return bytes(recorder.received)


class _Recorder(trio.abc.Stream):
    """A stream that keeps a copy of every byte it receives."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner, self.received = inner, bytearray()

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # reset, or closed after a refusal
            data = b""
        self.received += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def _identity(home: Path) -> tuple[LocalIdentity, bytes]:
    """A home's node as a channel identity, and its mesh's authority key."""
    opened = Home.open(home)
    info = opened.info
    psk = channel_psk(info.authority_public_key, info.mesh_key)
    return LocalIdentity(opened.node_key(), info.chain, psk), info.authority_public_key


def test_strangers_learn_nothing_about_the_mesh_from_its_listeners(tmp_path: Path) -> None:
    """A random client, another mesh's node and a box holding no mesh key get the same three
    bytes (the cipher choice) from two different meshes' agents, then the connection closes;
    only a holder of the mesh key gets a message 2, and a member's chain only after that."""
    a, _ = make_mesh(tmp_path / "a", 0)
    b = Node(tmp_path / "b" / "org")
    b.cli("init", "secret-gala", "--node-name", "vip-lounge-box")
    other = Node(tmp_path / "stranger")
    other.cli("init", "another-event", "--node-name", "stranger-box")
    stranger, theirs = _identity(other.home)
    nobody = LocalIdentity(stranger.node_key, stranger.chain, random.randbytes(32))
    try:
        a.start("--no-mdns")
        b.start("--no-mdns")
        attempts = (("random", None), ("other mesh", stranger), ("no key", nobody))
        seen = {(node.home.parent.name, kind): trio.run(_stranger_bytes, node.port, local, theirs)
                for node in (a, b) for kind, local in attempts}
        assert set(seen.values()) == {b"\x00\x01\xc0"}, seen  # length 1, choice ChaCha + large records + head room, nothing more
        for node in (a, b):
            wait_until(lambda n=node: n.log().count("not this mesh") >= 3, 10, "the refusals to be logged")
            assert node.proc.poll() is None
        member, authority = _identity(b.home)
        holder = LocalIdentity(stranger.node_key, stranger.chain, member.psk)  # got hold of B's mesh key
        leaked = trio.run(_stranger_bytes, b.port, holder, authority)
        assert len(leaked) > 3, "a holder of the mesh key gets message 2 (then its credential is refused)"
        wait_until(lambda: "credential refused" in b.log(), 10, "the refusal to be logged")
    finally:
        stop_all([a, b])


@pytest.mark.parametrize("payload, reason", [
    ((100 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100, "protocol error"),  # oversized frame
    (b"\x00\x00\x00\x05garbage-not-cbor", "protocol error"),  # malformed frame
])
def test_member_sending_bad_frames_is_dropped_and_others_still_served(
    tmp_path: Path, payload: bytes, reason: str
) -> None:
    org, (hostile, good) = make_mesh(tmp_path, 2)
    try:
        org.start("--no-mdns")
        good.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: good.node_id in org.peers(), CONVERGE_S, "good edge connected")
        answer = trio.run(_hostile_session, hostile.home, ("127.0.0.1", org.port), payload)
        assert b"protocol error" in answer  # the Close frame names the reason, then the stream ends
        wait_until(lambda: reason in org.log(), 10, "the reason to be logged")
        cid = _add_tagged(org, tmp_path, "after.txt", "still-serving")
        wait_until(lambda: good.tags_of(cid) == {"still-serving"}, CONVERGE_S, "good edge still synced")
        assert org.proc.poll() is None
    finally:
        stop_all([org, hostile, good])


def test_mdns_alone_finds_peers_inside_a_private_namespace(tmp_path: Path) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    ports = [free_port() for _ in range(4)]
    org, edges = make_mesh(tmp_path, 3, ports)
    nodes = [org, *edges]
    with agents_in_namespace([(node, ()) for node in nodes]):
        ids = {n.node_id for n in nodes}
        for node in nodes:
            wait_until(lambda n=node: n.peers() == ids - {n.node_id}, 40, f"{node.home.name} to find all by mDNS")
        cid = _add_tagged(edges[2], tmp_path, "clip.mp4", "stage-b")
        for node in nodes:
            wait_until(lambda n=node: n.tags_of(cid) == {"stage-b"}, CONVERGE_S, "tag via mDNS-found sessions")
