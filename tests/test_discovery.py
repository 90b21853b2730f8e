"""mDNS discovery (`mesh.drivers.discovery`) and the namespace lab (`mesh.testing.netns`).

Everything that sends mDNS runs in a network namespace the test makes itself: one `unshare -n`
namespace with only `lo`, or `Lab` hosts on a private bridge. Each child script first checks that it
is not in the test runner's namespace and refuses to run otherwise. Without root these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from zeroconf import ServiceInfo

from mesh.drivers.discovery import (
    SERVICE_TYPE,
    Discovered,
    instance_name,
    mesh_hash,
    parse_announcement,
    run_discovery,
)
from mesh.errors import UsageError
from mesh.ids import mesh_id_from_authority_key, node_id_from_public_key
from mesh.testing import netns

REPO = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 40

needs_netns = pytest.mark.netns


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def private_netns() -> None:
    reason = netns.netns_available()
    if reason is not None:
        pytest.skip(f"no private network namespace: {reason}")


@pytest.fixture
def lab_ok() -> None:
    reason = netns.lab_available()
    if reason is not None:
        pytest.skip(f"no namespace lab: {reason}")


def _node_id() -> str:
    return node_id_from_public_key(os.urandom(32))


def _mesh_id() -> str:
    return mesh_id_from_authority_key(os.urandom(32))


# --- sans-network checks ---------------------------------------------------------------------


def test_mesh_hash_is_short_hex_and_hides_the_mesh_id() -> None:
    mesh_a, mesh_b = _mesh_id(), _mesh_id()
    tag = mesh_hash(mesh_a)
    assert len(tag) == 16 and all(ch in "0123456789abcdef" for ch in tag)
    assert tag == mesh_hash(mesh_a) != mesh_hash(mesh_b)
    assert tag not in mesh_a and mesh_a not in tag
    assert mesh_hash("") == "ab09f84b6f078220"  # known answer: pins the domain separator


def _info(name: str, properties: dict, addresses: list[str] | None = None) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        name,
        port=4000,
        properties=properties,
        server="peer.local.",
        parsed_addresses=["10.99.0.7"] if addresses is None else addresses,
    )


def test_parse_announcement_accepts_a_well_formed_service() -> None:
    node, tag = _node_id(), mesh_hash(_mesh_id())
    name = instance_name(node)
    peer = parse_announcement(name, _info(name, {"v": "1", "node": node, "mh": tag}))
    assert peer == Discovered(node, tag, ("10.99.0.7",), 4000, 1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"node": "not-a-node-id"}, "bad node id"),
        ({"node": None}, "bad node id"),
        ({"mh": "XYZ"}, "bad mesh hash"),
        ({"mh": "0123456789ABCDEF"}, "bad mesh hash"),
        ({"v": "one"}, "bad protocol version"),
        ({"v": "99999999"}, "bad protocol version"),
        ({"other_name": True}, "instance name does not match node id"),
        ({"addresses": []}, "no address"),
    ],
)
def test_parse_announcement_rejects_bad_services(change: dict, reason: str) -> None:
    node = _node_id()
    properties = {"v": "1", "node": node, "mh": mesh_hash(_mesh_id())}
    properties.update({k: v for k, v in change.items() if k in properties})
    name = instance_name(_node_id() if change.get("other_name") else node)
    info = _info(name, properties, addresses=change.get("addresses"))
    assert parse_announcement(name, info) == reason


def test_bad_interface_address_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("would open mDNS sockets in the runner's namespace")

    monkeypatch.setattr("mesh.drivers.discovery.Zeroconf", tripwire)

    async def main() -> None:
        send, _ = trio.open_memory_channel[Discovered](1)
        await run_discovery(
            node_id=_node_id(), mesh_id=_mesh_id(), port=4000, interfaces=["eth0"], found=send
        )

    with pytest.raises(UsageError, match="eth0"):
        trio.run(main)  # refused before any socket is opened


# --- three agents in one private `lo` namespace ----------------------------------------------

THREE_NODES_SCRIPT = r"""
import json, os, socket, sys
from functools import partial
from mesh.testing.netns import netns_inode, only_loopback_here
if not (only_loopback_here() and netns_inode() != int(sys.argv[1])):
    sys.exit("refusing to send mDNS outside a private namespace")

import trio
from zeroconf import Zeroconf
from mesh.drivers.discovery import SERVICE_TYPE, instance_name, run_discovery
from mesh.ids import mesh_id_from_authority_key, node_id_from_public_key

def new_id():
    return node_id_from_public_key(os.urandom(32))

def lookup(name, timeout_ms):
    # An independent zeroconf, empty cache: only a live responder can answer.
    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        info = zc.get_service_info(SERVICE_TYPE, name, timeout=timeout_ms)
        if info is None:
            return None
        return {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    finally:
        zc.close()

def sniffer():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", 5353))
    group = socket.inet_aton("224.0.0.251") + socket.inet_aton("127.0.0.1")
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
    return trio.socket.from_stdlib_socket(s)

async def wait_until(predicate, timeout_s):
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)

async def main():
    a1, a2, b1 = new_id(), new_id(), new_id()
    mesh_a = mesh_id_from_authority_key(os.urandom(32))
    mesh_b = mesh_id_from_authority_key(os.urandom(32))
    # a2 uses the product default (all interfaces); here that is lo alone.
    plan = {
        a1: (mesh_a, 40001, ["127.0.0.1"]),
        a2: (mesh_a, 40002, None),
        b1: (mesh_b, 40003, ["127.0.0.1"]),
    }
    found = {node: [] for node in plan}
    lost = {node: [] for node in plan}
    scopes = {node: trio.CancelScope() for node in plan}
    packets = []
    out = {"a1": a1, "a2": a2, "b1": b1, "mesh_a": mesh_a, "mesh_b": mesh_b}

    async def collect(receive, into):
        async for item in receive:
            into.append(item)

    async def node(node_id, started):
        mesh_id, port, interfaces = plan[node_id]
        found_send, found_receive = trio.open_memory_channel(8)
        lost_send, lost_receive = trio.open_memory_channel(8)
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, found_receive, found[node_id])
            inner.start_soon(collect, lost_receive, lost[node_id])
            discovery = partial(run_discovery, node_id=node_id, mesh_id=mesh_id, port=port,
                                interfaces=interfaces, found=found_send, lost=lost_send)
            with scopes[node_id]:
                await inner.start(discovery)
                started.set()
                await trio.sleep_forever()
            inner.cancel_scope.cancel()  # run_discovery unregisters on its way out

    async def sniff(sock):
        while True:
            data, _ = await sock.recvfrom(9000)
            packets.append(data)

    def saw(watcher, target):
        return any(peer.node_id == target for peer in found[watcher])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sniff, sniffer())
        started = {n: trio.Event() for n in plan}
        for node_id in plan:
            nursery.start_soon(node, node_id, started[node_id])
        for event in started.values():
            await event.wait()
        await wait_until(lambda: saw(a1, a2) and saw(a2, a1), 10)
        await trio.sleep(1.0)  # room for a wrong report (b1 to a node of mesh A) to show up
        out["lookup_a1"] = await trio.to_thread.run_sync(lookup, instance_name(a1), 3000)
        out["lookup_b1"] = await trio.to_thread.run_sync(lookup, instance_name(b1), 3000)
        scopes[a2].cancel()
        await wait_until(lambda: a2 in lost[a1], 5)
        gone = await trio.to_thread.run_sync(lookup, instance_name(a2), 1500)
        out["lookup_a2_after_cancel"] = gone
        nursery.cancel_scope.cancel()

    out["found"] = {n: [[p.node_id, p.mesh_hash, list(p.addresses), p.port, p.protocol_version]
                        for p in peers] for n, peers in found.items()}
    out["lost"] = lost
    out["packets"] = [p.hex() for p in packets]
    print(json.dumps(out))

trio.run(main)
"""


@needs_netns
def test_three_agents_in_a_private_namespace(private_netns: None) -> None:
    argv = netns.private_lo_python_cmd(THREE_NODES_SCRIPT, str(netns.netns_inode()))
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=_child_env(), cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    a1, a2, b1 = out["a1"], out["a2"], out["b1"]
    tag_a, tag_b = mesh_hash(out["mesh_a"]), mesh_hash(out["mesh_b"])

    # Each mesh-A node found the other A node, with the right port and address, and nothing else.
    assert out["found"][a1] == [[a2, tag_a, ["127.0.0.1"], 40002, 1]], result.stderr
    assert out["found"][a2] == [[a1, tag_a, ["127.0.0.1"], 40001, 1]], result.stderr
    assert out["found"][b1] == [], "a node of mesh B was told about mesh A"

    # The TXT record carries exactly v, node and the mesh hash.
    assert out["lookup_a1"] == {"v": "1", "node": a1, "mh": tag_a}
    assert out["lookup_b1"] == {"v": "1", "node": b1, "mh": tag_b}

    # No packet on the air ever carried a mesh id (we did see our own traffic).
    packets = [bytes.fromhex(p) for p in out["packets"]]
    assert any(b"_assetmesh" in p for p in packets)
    for mesh_id in (out["mesh_a"], out["mesh_b"]):
        assert not any(mesh_id.encode() in p for p in packets)

    # Cancelling a2 unregistered it: a1's browser saw it leave, and nobody answers for it.
    assert out["lost"][a1] == [a2]
    assert out["lookup_a2_after_cancel"] is None


# --- the namespace lab -----------------------------------------------------------------------

ECHO_SERVER = r"""
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(10)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(10)
while data := conn.recv(65536):
    conn.sendall(data)
"""

ECHO_CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    conn.sendall(b"hello across the bridge")
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while data := conn.recv(65536):
        reply += data
print(reply.decode())
"""

SINK_SERVER = r"""
import socket, sys, time
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(10)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(10)
total, first = 0, None
while data := conn.recv(65536):
    first = first or time.monotonic()
    total += len(data)
print(total, time.monotonic() - first)
"""

BULK_CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    conn.sendall(bytes(int(sys.argv[3])))
"""


def _start_server(lab: netns.Lab, host: str, script: str, port: int) -> subprocess.Popen:
    server = lab.run(
        host,
        [sys.executable, "-c", script, lab.address(host), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready", server.stderr and server.stderr.read()
    return server


@needs_netns
def test_lab_hosts_reach_each_other_over_tcp(lab_ok: None) -> None:
    with netns.Lab(["alpha", "beta"]) as lab:
        assert lab.address("alpha") != lab.address("beta")
        links = lab.call("beta", ["ip", "-o", "link"])
        assert "eth0" in links.stdout and "lo" in links.stdout
        server = _start_server(lab, "alpha", ECHO_SERVER, 7000)
        client = lab.call("beta", [sys.executable, "-c", ECHO_CLIENT, lab.address("alpha"), "7000"])
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "hello across the bridge"
        assert server.wait(timeout=10) == 0
        # The lab's subnet exists only inside the lab: the runner's namespace has no such route.
        assert lab.address("alpha") not in subprocess.run(
            ["ip", "-4", "addr"], capture_output=True, text=True
        ).stdout


@needs_netns
def test_lab_egress_cap_limits_throughput(lab_ok: None) -> None:
    rate_bytes_per_s = 2_000_000
    payload_bytes = 3_000_000
    with netns.Lab(["seed", "peer"], egress_bytes_per_s={"seed": rate_bytes_per_s}) as lab:
        sink = _start_server(lab, "peer", SINK_SERVER, 7001)
        argv = [sys.executable, "-c", BULK_CLIENT, lab.address("peer"), "7001", str(payload_bytes)]
        sender = lab.call("seed", argv)
        assert sender.returncode == 0, sender.stderr
        out, err = sink.communicate(timeout=15)
        total, elapsed_s = out.split()
        assert int(total) == payload_bytes, err
        # Ideal: 1.5 s; the token bucket's burst and startup shave a little off.
        assert float(elapsed_s) > 0.8 * payload_bytes / rate_bytes_per_s


@needs_netns
def test_lab_leaves_no_namespace_behind(lab_ok: None) -> None:
    with netns.Lab(["one", "two"]) as lab:
        made = lab.namespace_names
        assert set(made) <= set(netns.namespaces())
        lab.run("one", ["sleep", "60"])  # a straggler that close() must stop
    assert not set(made) & set(netns.namespaces())

    with pytest.raises(RuntimeError), netns.Lab(["three"]) as lab:
        made = lab.namespace_names
        raise RuntimeError("test body failed")
    assert not set(made) & set(netns.namespaces())

    before = set(netns.namespaces())
    with pytest.raises(ValueError):
        netns.Lab(["same", "same"])  # fails half-built
    assert set(netns.namespaces()) == before


DISCOVERY_HOST_SCRIPT = r"""
import json, sys
from mesh.testing.netns import netns_inode
if netns_inode() == int(sys.argv[1]):
    sys.exit("refusing to send mDNS outside a private namespace")

import trio
from mesh.drivers.discovery import run_discovery

async def main(node_id, mesh_id, port):
    found_send, found_receive = trio.open_memory_channel(8)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_discovery(
            node_id=node_id, mesh_id=mesh_id, port=port, interfaces=None,
            found=found_send, task_status=task_status))
        print(json.dumps({"started": True}), flush=True)
        async def report():
            async for peer in found_receive:
                print(json.dumps([peer.node_id, list(peer.addresses), peer.port]), flush=True)
        nursery.start_soon(report)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # until stdin closes
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""


@needs_netns
def test_discovery_across_the_lab_bridge(lab_ok: None) -> None:
    mesh_a, mesh_b = _mesh_id(), _mesh_id()
    plan = {
        "org": (_node_id(), mesh_a),
        "edge": (_node_id(), mesh_a),
        "other": (_node_id(), mesh_b),
    }
    inode = str(netns.netns_inode())
    with netns.Lab(list(plan)) as lab:
        agents = {
            host: lab.run(
                host,
                [sys.executable, "-c", DISCOVERY_HOST_SCRIPT, inode, node_id, mesh_id, "4100"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=_child_env(), cwd=REPO,
            )  # fmt: skip
            for host, (node_id, mesh_id) in plan.items()
        }
        heard = {}
        for host in ("org", "edge"):
            stdout = agents[host].stdout
            assert stdout is not None
            assert json.loads(stdout.readline()) == {"started": True}
            heard[host] = json.loads(stdout.readline() or "null")
        time.sleep(1.0)  # room for a wrong report (mesh B) to show up
        outputs = {}
        for host, agent in agents.items():
            out, err = agent.communicate(input="", timeout=15)
            assert agent.returncode == 0, err
            outputs[host] = [json.loads(line) for line in out.splitlines()]

    # The default (all interfaces) announces eth0's lab address, and each A host hears the other.
    assert heard["org"] == [plan["edge"][0], [lab.address("edge")], 4100]
    assert heard["edge"] == [plan["org"][0], [lab.address("org")], 4100]
    assert outputs["org"] == [] and outputs["edge"] == []  # nothing more, in particular not "other"
    assert outputs["other"] == [{"started": True}]
