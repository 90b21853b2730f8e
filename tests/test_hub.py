"""Co-op hubs: one hub home, one process and one port for several creators' meshes.

Real processes on loopback: two organizers (meshes A and B), one hub that is a member of both, an
edge of each that reaches its mesh only through the hub. Isolation is asserted on bytes: what each
HTTP host answers, what each mesh's store on the hub holds, and sha256 of every served file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from pathlib import Path

import pytest

from tests.agents import Node, free_port, wait_until
from tests.conftest import run_mesh


class HubNode(Node):
    """A hub home's `mesh up`."""

    def _running(self, http: bool = False) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.home.name} exited early:\n{self.log()}")
        status = self.json("status")
        return (bool(status.get("running")) and all(m.get("running") for m in status["meshes"])
                and (not http or bool(status.get("http_listening"))))

    def mesh_home(self, mesh_id: str) -> Path:
        return self.home / "meshes" / mesh_id


def http_get(port: int, path: str, host: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def wait_http(port: int) -> None:
    def answers() -> bool:
        try:
            return http_get(port, "/healthz", "127.0.0.1")[0] == 200
        except OSError:
            return False

    wait_until(answers, 20, f"HTTP on port {port}")


def publish(org: Node, folder: Path, files: dict[str, bytes]) -> str:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    release_id = org.json("release", "create", folder.name, str(folder))["id"]
    org.cli("release", "publish", release_id)
    return release_id


def hub_invite(org: Node) -> str:
    return org.cli("invite", "--role", "hub", "--name", "coop").stdout.decode().strip()


def release_done(node: Node, release_id: str) -> bool:
    release = node.json("status").get("release") or {}
    return release.get("id") == release_id and bool(release.get("complete"))


def chunk_files(store: Path) -> dict[str, Path]:
    return {p.name: p for p in (store / "chunks").glob("*/*")}


def served_digests(port: int, host: str, names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        status, body, _ = http_get(port, f"/release/current/{name}", host)
        assert status == 200, (name, status)
        found[name] = hashlib.sha256(body).hexdigest()
    return found


# ---- the hub home, offline ---------------------------------------------------------------------


def test_a_hub_home_joins_with_hub_invites_only_and_refuses_mistakes_in_one_line(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "spring-popup", "--node-name", "org")
    hub = tmp_path / "hub"
    assert run_mesh("hub", "init", "--name", "Kreuzberg co-op", home=hub).returncode == 0

    edge_token = org.cli("invite", "--role", "edge").stdout.decode().strip()
    refused = run_mesh("hub", "join", edge_token, home=hub)
    assert refused.returncode != 0
    assert b"mesh invite --role hub" in refused.stderr and b"Traceback" not in refused.stderr
    bad_quota = run_mesh("hub", "join", hub_invite(org), "--quota", "lots", home=hub)
    assert bad_quota.returncode != 0 and b"--quota 'lots'" in bad_quota.stderr

    bad_peer = run_mesh("hub", "join", hub_invite(org), "--peer", "venue", home=hub)
    assert bad_peer.returncode != 0 and b"--peer 'venue'" in bad_peer.stderr
    joined = json.loads(run_mesh("hub", "join", hub_invite(org), "--quota", "2MiB", "--peer", "192.0.2.7:7450",
                                 "--json", home=hub).stdout)
    assert joined["quota"] == 2 * 1024 * 1024 and joined["host"].startswith("m-")
    assert joined["peers"] == ["192.0.2.7:7450"]
    again = run_mesh("hub", "join", hub_invite(org), home=hub)
    assert again.returncode != 0 and b"already a member" in again.stderr

    rows = json.loads(run_mesh("hub", "ls", "--json", home=hub).stdout)
    assert [(r["mesh_id"], r["name"], r["quota"], r["running"]) for r in rows] == [
        (joined["mesh_id"], "spring-popup", 2 * 1024 * 1024, False)]
    assert rows[0]["members"] == 0  # offline, never synced: it knows only itself
    assert run_mesh("hub", "quota", joined["mesh_id"][:8], "--quota", "3MiB", home=hub).returncode == 0
    assert json.loads(run_mesh("hub", "ls", "--json", home=hub).stdout)[0]["quota"] == 3 * 1024 * 1024
    plain = run_mesh("status", home=hub)
    assert plain.returncode == 0 and b"not running" in plain.stdout
    # the mesh's home works with every single-mesh command
    mesh_home = hub / "meshes" / joined["mesh_id"]
    assert json.loads(run_mesh("id", "--json", home=mesh_home).stdout)["role"] == "hub"
    unknown = run_mesh("hub", "leave", "nosuchmesh", home=hub)
    assert unknown.returncode != 0 and b"is not a mesh of this hub" in unknown.stderr
    not_single = run_mesh("ls", home=hub)
    assert not_single.returncode != 0 and b"is a hub home" in not_single.stderr


def test_adopt_moves_a_single_mesh_home_in_without_fetching_again(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "adopt-popup", "--node-name", "org")
    single = Node(tmp_path / "old-hub")
    single.cli("join", hub_invite(org))
    files = {"index.html": b"<h1>adopted</h1>", "big.bin": os.urandom(400_000)}
    release = publish(org, tmp_path / "rel", files)
    try:
        single.start("--no-mdns", "--peer", org.address)
        org.start("--no-mdns")
        wait_until(lambda: release_done(single, release), 60, "the single-mesh hub to fetch")
    finally:
        single.stop()
        org.stop()  # from here on nobody could send the release again
    hub = HubNode(tmp_path / "hub")
    assert run_mesh("hub", "init", "--name", "co-op", home=hub.home).returncode == 0
    bad = run_mesh("hub", "adopt", str(tmp_path / "nowhere"), home=hub.home)
    assert bad.returncode != 0 and b"not an AssetMesh home" in bad.stderr
    adopted = json.loads(run_mesh("hub", "adopt", str(single.home), "--host", "adopt.example", "--json",
                                  home=hub.home).stdout)
    assert adopted["host"] == "adopt.example" and not single.home.exists()
    mesh_store = hub.mesh_home(adopted["mesh_id"]) / "store"
    assert set(chunk_files(mesh_store)) <= {p.name for p in (hub.home / "pool").glob("*/*")}
    http_port = free_port()
    hub.start("--no-mdns", "--http", f"127.0.0.1:{http_port}")
    try:
        wait_http(http_port)
        wait_until(lambda: release_done(Node(hub.mesh_home(adopted["mesh_id"])), release), 20,
                   "the adopted release complete from its own store")
        for name, data in files.items():
            assert http_get(http_port, f"/release/current/{name}", "adopt.example")[1] == data
    finally:
        hub.stop()


# ---- one process, two meshes -------------------------------------------------------------------


@pytest.fixture
def two_meshes(tmp_path: Path):
    """(hub, {mesh: (org, edge, release_id, files, host)}), everything running; stopped after."""
    hub = HubNode(tmp_path / "hub")
    assert run_mesh("hub", "init", "--name", "Kreuzberg co-op", home=hub.home).returncode == 0
    shared = os.urandom(700_000)  # both creators publish this same file: the hub stores it once
    meshes = {}
    running: list[Node] = []
    for label in ("a", "b"):
        org = Node(tmp_path / f"org-{label}")
        org.cli("init", f"popup-{label}", "--node-name", f"org-{label}")
        edge = Node(tmp_path / f"edge-{label}")
        edge.cli("join", org.cli("invite", "--role", "edge").stdout.decode().strip())
        joined = json.loads(run_mesh("hub", "join", hub_invite(org), "--host", f"{label}.hub.test", "--json",
                                     home=hub.home).stdout)
        files = {"shared.bin": shared, f"only-{label}.bin": os.urandom(500_000 + (label == "b") * 123_457),
                 "index.html": f"<h1>{label}</h1>".encode()}
        release_id = publish(org, tmp_path / f"release-{label}", files)
        meshes[label] = {"org": org, "edge": edge, "release": release_id, "files": files,
                         "host": joined["host"], "mesh_id": joined["mesh_id"]}
    http_port = free_port()
    hub.start("--no-mdns", "--http", f"127.0.0.1:{http_port}")
    running.append(hub)
    wait_http(http_port)
    try:
        for mesh in meshes.values():
            mesh["org"].start("--no-mdns", "--peer", hub.address)
            mesh["edge_http"] = free_port()
            mesh["edge"].start("--no-mdns", "--peer", hub.address, "--http", f"127.0.0.1:{mesh['edge_http']}")
            running += [mesh["org"], mesh["edge"]]
        yield hub, http_port, meshes
    finally:
        for node in running:
            node.stop()


def test_one_hub_process_serves_two_meshes_and_neither_learns_of_the_other(two_meshes) -> None:
    hub, http_port, meshes = two_meshes
    for label, mesh in meshes.items():
        wait_until(lambda: release_done(mesh["edge"], mesh["release"]), 60, f"edge {label} to complete")
        hub_home = hub.mesh_home(mesh["mesh_id"])
        wait_until(lambda: release_done(Node(hub_home), mesh["release"]), 30, f"the hub's mesh {label}")
        for name, data in mesh["files"].items():  # the edge got its own mesh's bytes, through the hub
            assert http_get(mesh["edge_http"], f"/release/current/{name}", "127.0.0.1")[1] == data

    a, b = meshes["a"], meshes["b"]
    # the peers each mesh's hub node sees are its own mesh's only
    a_peers = Node(hub.mesh_home(a["mesh_id"])).peers()
    assert a_peers == {a["org"].node_id, a["edge"].node_id}
    # each store on the hub holds its own mesh's chunks only; the shared file is one inode
    a_chunks = chunk_files(hub.mesh_home(a["mesh_id"]) / "store")
    b_chunks = chunk_files(hub.mesh_home(b["mesh_id"]) / "store")
    only_b = set(b_chunks) - set(a_chunks)
    assert only_b and set(a_chunks) & set(b_chunks)
    for cid in set(a_chunks) & set(b_chunks):
        assert os.path.samefile(a_chunks[cid], b_chunks[cid]), cid

    # HTTP: B's chunks under A's host answer exactly as a CID nobody holds
    absent_cid = next(iter(only_b))
    b_only_answer = http_get(http_port, f"/c/{absent_cid}", a["host"])
    nobody = "bafkr4i" + "a" * 52
    nobody_answer = http_get(http_port, f"/c/{nobody}", a["host"])
    assert b_only_answer[0] == nobody_answer[0] == 404
    assert b_only_answer[1].replace(absent_cid.encode(), b"X") == nobody_answer[1].replace(nobody.encode(), b"X")
    # each host serves its own mesh's release
    assert http_get(http_port, "/release/current/index.html", a["host"])[1] == b"<h1>a</h1>"
    assert http_get(http_port, "/release/current/index.html", b["host"])[1] == b"<h1>b</h1>"
    assert http_get(http_port, "/release/current/only-b.bin", a["host"])[0] == 404
    # a guessed host (or the bare address) reaches the hub page, which names no mesh
    guess = http_get(http_port, "/", "popup-b.hub.test")
    random_name = http_get(http_port, "/", "zq7-nothing.hub.test")
    assert guess[0] == random_name[0] == 421
    assert guess[1].replace(b"popup-b", b"X") == random_name[1].replace(b"zq7-nothing", b"X")
    bare = http_get(http_port, "/", "127.0.0.1")
    assert bare[0] == 200
    for answer in (bare, http_get(http_port, "/api/status", "127.0.0.1"), http_get(http_port, "/nope", "127.0.0.1")):
        for name in (b"popup-a", b"popup-b", a["mesh_id"].encode(), b["mesh_id"].encode(), b"a.hub.test", b"b.hub.test"):
            assert name not in answer[1]
    # each mesh's organizers are crew on their own host only: B's crew token opens nothing of A
    tokens = {label: mesh["org"].cli("crew-token").stdout.decode().strip() for label, mesh in meshes.items()}
    as_crew = lambda label: {"Authorization": f"Bearer {tokens[label]}"}  # noqa: E731
    members_a = http_get(http_port, "/api/members", a["host"], as_crew("a"))
    assert members_a[0] == 200 and b["org"].node_id.encode() not in members_a[1]
    assert a["org"].node_id.encode() in members_a[1]
    assert http_get(http_port, "/api/members", a["host"], as_crew("b"))[0] == 403
    # the operator's view needs the hub's token, and then shows both meshes
    assert http_get(http_port, "/hub/api/status", "127.0.0.1")[0] == 401
    token = run_mesh("hub", "token", home=hub.home).stdout.decode().strip()
    status, body, _ = http_get(http_port, "/hub/api/status", "127.0.0.1", {"Authorization": f"Bearer {token}"})
    assert status == 200
    view = json.loads(body)
    assert {m["mesh_id"] for m in view["meshes"]} == {a["mesh_id"], b["mesh_id"]}
    assert all(m["release"]["complete"] for m in view["meshes"])


def test_hub_leave_removes_exactly_what_only_that_mesh_held(two_meshes) -> None:
    hub, http_port, meshes = two_meshes
    a, b = meshes["a"], meshes["b"]
    for mesh in (a, b):
        wait_until(lambda: release_done(Node(hub.mesh_home(mesh["mesh_id"])), mesh["release"]), 60, "the hub")
    names = sorted(a["files"])
    before = served_digests(http_port, a["host"], names)
    assert before == {name: hashlib.sha256(data).hexdigest() for name, data in a["files"].items()}
    a_chunks = set(chunk_files(hub.mesh_home(a["mesh_id"]) / "store"))
    b_only = set(chunk_files(hub.mesh_home(b["mesh_id"]) / "store")) - a_chunks

    refused = run_mesh("hub", "leave", b["mesh_id"][:10], home=hub.home)
    assert refused.returncode != 0 and b"stop it first" in refused.stderr  # the hub runs
    hub.stop()
    left = json.loads(run_mesh("hub", "leave", b["mesh_id"][:10], "--json", home=hub.home).stdout)
    assert left["mesh_id"] == b["mesh_id"] and left["bytes_freed"] > 500_000
    assert not hub.mesh_home(b["mesh_id"]).exists()
    pooled = {p.name for p in (hub.home / "pool").glob("*/*")}
    assert not (pooled & b_only) and a_chunks <= pooled
    assert set(chunk_files(hub.mesh_home(a["mesh_id"]) / "store")) == a_chunks

    hub.start("--no-mdns", "--http", f"127.0.0.1:{http_port}")
    wait_http(http_port)
    assert served_digests(http_port, a["host"], names) == before
    assert http_get(http_port, "/", b["host"])[0] == 421  # B's host is no longer served at all
    assert run_mesh("verify", home=hub.mesh_home(a["mesh_id"])).returncode == 0


def test_a_release_past_the_mesh_quota_waits_with_a_clear_reason_and_loses_nothing(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "big-popup", "--node-name", "org")
    hub = HubNode(tmp_path / "hub")
    assert run_mesh("hub", "init", "--name", "small co-op", home=hub.home).returncode == 0
    joined = json.loads(run_mesh("hub", "join", hub_invite(org), "--quota", "1MB", "--json", home=hub.home).stdout)
    small = publish(org, tmp_path / "small", {"a.bin": os.urandom(200_000)})
    nodes = [hub.start("--no-mdns"), org.start("--no-mdns", "--peer", hub.address)]
    try:
        mesh_node = Node(hub.mesh_home(joined["mesh_id"]))
        wait_until(lambda: release_done(mesh_node, small), 60, "the small release on the hub")
        big_folder = tmp_path / "big"
        big = publish(org, big_folder, {"b.bin": os.urandom(1_500_000)})

        def refused() -> dict | None:
            release = mesh_node.json("status").get("release") or {}
            return release.get("over_quota") if release.get("id") == big else None

        over = wait_until(refused, 60, "the quota to refuse the big release")
        assert over["quota_bytes"] == 1_000_000 and over["needs_bytes"] >= 1_500_000
        assert "release.over_quota" in hub.log()
        assert run_mesh("verify", home=mesh_node.home).returncode == 0  # what it held is intact
    finally:
        for node in nodes:
            node.stop()


def test_each_mesh_of_a_hub_is_found_by_mdns_on_the_one_port(tmp_path: Path) -> None:
    """In a private namespace: the organizers seed the hub and stop; then each mesh's edge, which
    knows no address, finds its own mesh's node on the hub by mDNS and fetches its release."""
    from mesh.testing import netns

    reason = netns.netns_available()
    if reason is not None:
        pytest.skip(f"no private network namespace: {reason}")
    from tests.agents import PrivateNet

    net = PrivateNet()
    hub = HubNode(tmp_path / "hub")
    started: list[Node] = []
    try:
        assert run_mesh("hub", "init", "--name", "mdns co-op", home=hub.home).returncode == 0
        meshes = {}
        for label in ("a", "b"):
            org = Node(tmp_path / f"org-{label}")
            org.cli("init", f"mdns-{label}", "--node-name", f"org-{label}")
            edge = Node(tmp_path / f"edge-{label}")
            edge.cli("join", org.cli("invite", "--role", "edge").stdout.decode().strip())
            joined = json.loads(run_mesh("hub", "join", hub_invite(org), "--json", home=hub.home).stdout)
            release = publish(org, tmp_path / f"rel-{label}", {"x.bin": os.urandom(300_000)})
            meshes[label] = (org, edge, release, Node(hub.mesh_home(joined["mesh_id"])))
        started.append(hub.start(prefix=net.prefix))
        for org, _, release, on_hub in meshes.values():
            started.append(org.start(prefix=net.prefix))
            wait_until(lambda: release_done(on_hub, release), 60, "the hub to fetch from the organizer by mDNS")
            org.stop()
        for org, edge, release, on_hub in meshes.values():
            started.append(edge.start(prefix=net.prefix))
            wait_until(lambda: release_done(edge, release), 60, "the edge to find the hub by mDNS")
            assert edge.peers() == {on_hub.node_id}  # its organizer is down: only the hub's node of its mesh
    finally:
        for node in started:
            node.stop()
        net.close()
