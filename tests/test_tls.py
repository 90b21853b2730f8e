"""HTTPS at the edge: `mesh tls set|rm|show`, the key over the secure channel, `mesh up --https`.

Real agents on loopback without mDNS; a throwaway CA made here (tests/tls_certs.py) is the only
thing the TLS clients trust."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from pathlib import Path

import automerge.core as am
import pytest

from mesh.drivers.statefile import StateFile
from mesh.errors import CredentialError
from mesh.state import tls as st
from mesh.state.document import MeshState
from tests.agents import Node, free_port, make_mesh, stop_all, wait_until
from tests.conftest import assert_one_line_error
from tests.tls_certs import TestCa, key_der, leaf_der, private_scalar


# ---- helpers -----------------------------------------------------------------------------------------


def https_request(port: int, ca: TestCa, path: str = "/healthz", name: str = "event.test",
                  host: str | None = None) -> tuple[int, str, bytes]:
    """(status, fingerprint of the certificate served, body) of one HTTPS GET to 127.0.0.1:port
    that trusts only the test CA and checks the certificate against `name` (also the Host header,
    unless `host` is given)."""
    host = host or f"{name}:{port}"
    context = ssl.create_default_context(cadata=ca.pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            fingerprint = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), fingerprint, body


def served_fingerprint(port: int, ca: TestCa) -> str | None:
    """The fingerprint HTTPS on `port` serves now, or None if nothing answers TLS there."""
    try:
        status, fingerprint, _ = https_request(port, ca, host=f"127.0.0.1:{port}")
    except (OSError, ssl.SSLError, IndexError, ValueError):  # nothing there, or a server restarting
        return None
    return fingerprint if status == 200 else None


def http_request(port: int, path: str, host: str) -> tuple[int, dict[str, str]]:
    """(status, lower-case headers) of one plain HTTP GET with this Host header."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def key_files(node: Node) -> set[str]:
    directory = node.home / "tls"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def document_values(home: Path) -> list[bytes]:
    """Every byte and text value anywhere in the node's shared document (maps, recursively)."""
    state = StateFile(home / "state").load(os.urandom(16))
    doc, found, todo = state._doc, [], [am.ROOT]
    while todo:
        obj = todo.pop()
        for key in doc.keys(obj):
            value, child = doc.get(obj, key)
            if value == am.ObjType.Map:
                todo.append(child)
            elif isinstance(value, tuple) and isinstance(value[1], str):
                found.append(value[1].encode())
            elif isinstance(value, tuple) and isinstance(value[1], (bytes, list)):  # the binding gives bytes as ints
                found.append(bytes(value[1]))
    return found


def state_file_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((home / "state").rglob("*")) if p.is_file())


def assert_no_key_material(node: Node, key_pem: bytes, cert_chain_pem: bytes) -> None:
    """The shared document (its saved bytes, and every value in it) never holds the key."""
    secrets = (key_pem, key_der(key_pem), private_scalar(key_pem))
    saved = state_file_bytes(node.home)
    assert saved and not any(secret in saved for secret in secrets), f"key bytes in {node.home.name}'s state files"
    values = document_values(node.home)
    assert any(leaf_der(cert_chain_pem) in value for value in values), "the certificate is in the document"
    assert not any(secret in value for value in values for secret in secrets), "key bytes in the document"


# ---- statements (no agents) ------------------------------------------------------------------------


def test_statements_are_signed_by_organizers_and_the_newest_wins(tmp_path: Path) -> None:
    from tests.agents import Node as _Node  # homes only

    org = _Node(tmp_path / "org")
    org.cli("init", "popup-test", "--node-name", "org")
    edge = _Node(tmp_path / "edge")
    edge.cli("join", org.cli("invite", "--role", "edge").stdout.decode().strip())
    from mesh.drivers.home import Home

    org_home, edge_home = Home.open(org.home), Home.open(edge.home)
    authority = org_home.info.authority_public_key
    ca = TestCa.make()
    first, second = (st.load_pem_chain(ca.leaf(["event.test"])[0]) for _ in range(2))
    now = time.time()
    state = MeshState(os.urandom(16))
    id1 = st.put_tls_statement(state, st.create_tls_statement(authority, org_home.node_key(), org_home.info.chain,
                                                              first, now))
    id2 = st.put_tls_statement(state, st.create_tls_statement(authority, org_home.node_key(), org_home.info.chain,
                                                              second, now + 1))
    book = st.TlsBook(state, authority, now + 2)
    assert book.current.fingerprint == st.chain_fingerprint(second) and book.current.id == id2
    assert book.fingerprints() == {st.chain_fingerprint(first), st.chain_fingerprint(second)}
    with pytest.raises(CredentialError, match="only organizers"):
        st.create_tls_statement(authority, edge_home.node_key(), edge_home.info.chain, first, now)
    blob = state._bytes_map(st.TLS_STATEMENTS_KEY)[id1]
    tampered = blob.replace(b"event.test", b"evil.test!")
    with pytest.raises(CredentialError):
        st.verify_tls_statement(tampered, authority, now)
    st.put_tls_statement(state, st.create_tls_removal(authority, org_home.node_key(), org_home.info.chain,
                                                      book.current.fingerprint, now + 3))
    assert st.current_certificate(state, authority, now + 4) is None


def test_certificate_names_cover_hosts_like_browsers() -> None:
    ca = TestCa.make()
    chain, _ = ca.leaf(["door.event.test", "*.stage.event.test", "192.0.2.7"])
    names, _, _ = st.describe(tuple(leaf_der(c) for c in [chain]))
    cert = st.TlsCertificate("x", "0" * 64, (leaf_der(chain),), names, 0, 1, "p", 0)
    assert cert.covers("door.event.test") and cert.covers("DOOR.event.test.") and cert.covers("a.stage.event.test")
    assert cert.covers("192.0.2.7")
    assert not cert.covers("stage.event.test") and not cert.covers("a.b.stage.event.test")
    assert not cert.covers("event.test") and not cert.covers("attacker.example")


# ---- the CLI refuses bad input in one line ------------------------------------------------------------


def test_tls_set_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    ca = TestCa.make()
    good_cert, good_key, _ = ca.write_leaf(tmp_path, "good", ["event.test"])
    _, other_key, _ = ca.write_leaf(tmp_path, "other", ["event.test"])
    old_cert, old_key, _ = ca.write_leaf(tmp_path, "old", ["event.test"], days=-1, not_before_days=-30)
    assert_one_line_error(org.cli("tls", "set", "--cert", good_cert, "--key", other_key, check=False),
                          "--key does not match --cert")
    assert_one_line_error(org.cli("tls", "set", "--cert", old_cert, "--key", old_key, check=False), "expired")
    assert_one_line_error(edge.cli("tls", "set", "--cert", good_cert, "--key", good_key, check=False),
                          "only organizers")
    assert_one_line_error(edge.cli("tls", "rm", check=False), "only organizers")
    assert_one_line_error(org.cli("tls", "set", "--cert", good_key, "--key", good_key, check=False),
                          "no PEM certificate")
    assert_one_line_error(org.cli("tls", "set", "--cert", good_cert, "--key", good_cert, check=False),
                          "not a PEM private key")
    assert_one_line_error(org.cli("tls", "set", "--cert", tmp_path / "missing.pem", "--key", good_key,
                                  check=False), "no such file")
    assert_one_line_error(org.cli("tls", "rm", check=False), "no TLS certificate")
    assert org.json("tls", "show") is None and not key_files(org)
    soon_cert, soon_key, _ = ca.write_leaf(tmp_path, "soon", ["event.test"], days=2)
    done = org.cli("tls", "set", "--cert", soon_cert, "--key", soon_key, "--window", "3d")
    assert b"within the event window" in done.stderr
    shown = edge.json("tls", "show")  # not synced: the edge's own state has no certificate yet
    assert shown is None
    shown = org.json("tls", "show")
    assert shown["names"] == ["event.test"] and shown["key_held"] is True
    assert (os.stat(org.home / "tls" / f"{shown['fingerprint']}.key").st_mode & 0o777) == 0o600


# ---- the key travels to the edge that serves HTTPS, and only there -----------------------------------


@pytest.fixture
def venue(tmp_path: Path):
    """An organizer, an edge that serves HTTPS (and HTTP) and an edge that serves HTTP only."""
    org, (edge, plain) = make_mesh(tmp_path, 2)
    config = tmp_path / "edge.toml"
    config.write_text('http_hosts = ["event.test"]\n')
    ports = {"https": free_port(), "http": free_port(), "plain_http": free_port()}
    org.start("--no-mdns")
    edge.start("--no-mdns", "--peer", org.address, "--http", f"127.0.0.1:{ports['http']}",
               "--https", f"127.0.0.1:{ports['https']}", "--config", str(config))
    plain.start("--no-mdns", "--peer", org.address, "--http", f"127.0.0.1:{ports['plain_http']}")
    for node in (edge, plain):
        wait_until(lambda: org.node_id in node.peers(), 20, f"{node.home.name} to connect")
    yield org, edge, plain, ports, tmp_path
    stop_all([plain, edge, org])


def test_the_edge_gets_the_key_over_the_channel_and_serves_https(venue) -> None:
    org, edge, plain, ports, tmp_path = venue
    ca = TestCa.make()
    # No certificate yet: one warning line, HTTP keeps working, nothing answers TLS.
    wait_until(lambda: "https.waiting" in edge.log(), 10, "the no-certificate warning")
    assert edge.log().count("https.waiting") == 1 and "mesh tls set" in edge.log()
    assert http_request(ports["http"], "/", f"127.0.0.1:{ports['http']}")[0] == 200
    assert served_fingerprint(ports["https"], ca) is None

    cert, key, key_pem = ca.write_leaf(tmp_path, "event", ["event.test", "*.event.test"])
    fingerprint = org.json("tls", "set", "--cert", cert, "--key", key)["fingerprint"]
    wait_until(lambda: served_fingerprint(ports["https"], ca) == fingerprint, 20, "the edge to serve HTTPS")
    assert key_files(edge) == {f"{fingerprint}.key"}
    assert (os.stat(edge.home / "tls" / f"{fingerprint}.key").st_mode & 0o777) == 0o600
    assert edge.json("tls", "show")["key_held"] is True
    status, _, body = https_request(ports["https"], ca, "/")  # every page over TLS, Host allowed by http_hosts
    assert status == 200 and b"<html" in body.lower()
    assert "tls.key_received" in edge.log() and "tls.key_sent" in org.log()
    run = edge.home / "run" / "https"
    assert {p.name for p in run.iterdir()} == {"cert.pem", "key.pem"}
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in run.iterdir())

    # The edge that serves no HTTPS never asks, never receives, never keeps the key.
    wait_until(lambda: plain.json("tls", "show") is not None, 10, "the plain edge to see the certificate")
    time.sleep(1.0)
    assert plain.json("tls", "show")["key_held"] is False and not key_files(plain)
    assert "tls.key_received" not in plain.log() and plain.node_id not in _key_sent_to(org)
    for node in (org, edge, plain):
        assert_no_key_material(node, key_pem, cert.read_bytes())

    # HTTP sends browsers to HTTPS for the certificate's names; /healthz and other names stay on HTTP.
    status, headers = http_request(ports["http"], "/search?q=x", f"event.test:{ports['http']}")
    assert status == 307 and headers["location"] == f"https://event.test:{ports['https']}/search?q=x"
    assert http_request(ports["http"], "/healthz", f"event.test:{ports['http']}")[0] == 200
    assert http_request(ports["http"], "/", f"127.0.0.1:{ports['http']}")[0] == 200

    # Replacement: the edge switches to the new certificate and deletes the old key.
    cert2, key2, key2_pem = ca.write_leaf(tmp_path, "event2", ["event.test"])
    fingerprint2 = org.json("tls", "set", "--cert", cert2, "--key", key2)["fingerprint"]
    wait_until(lambda: served_fingerprint(ports["https"], ca) == fingerprint2, 20, "the edge to switch certificates")
    wait_until(lambda: key_files(edge) == {f"{fingerprint2}.key"}, 10, "the old key to go from the edge")
    assert key_files(org) == {f"{fingerprint2}.key"}
    assert_no_key_material(edge, key2_pem, cert2.read_bytes())

    # Removal: HTTPS stops, every holder deletes the key, HTTP no longer redirects.
    org.cli("tls", "rm")
    wait_until(lambda: served_fingerprint(ports["https"], ca) is None, 20, "HTTPS to stop")
    wait_until(lambda: not key_files(edge), 10, "the edge to delete the key")
    wait_until(lambda: not (run / "key.pem").exists(), 10, "the served key to leave run/")
    assert not key_files(org) and not (run / "key.pem").exists()
    assert http_request(ports["http"], "/search?q=x", f"event.test:{ports['http']}")[0] == 200


def _key_sent_to(org: Node) -> str:
    return "\n".join(line for line in org.log().splitlines() if "tls.key_sent" in line)


def test_a_node_that_joins_later_gets_the_key_from_an_edge(tmp_path: Path) -> None:
    """The organizer's laptop is gone: a second HTTPS edge gets the key from the first one."""
    org, (edge, late) = make_mesh(tmp_path, 2)
    ca = TestCa.make()
    cert, key, _ = ca.write_leaf(tmp_path, "event", ["event.test"])
    fingerprint = org.json("tls", "set", "--cert", cert, "--key", key)["fingerprint"]
    https1, https2 = free_port(), free_port()
    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address, "--https", f"127.0.0.1:{https1}")
        wait_until(lambda: served_fingerprint(https1, ca) == fingerprint, 20, "the first edge to serve HTTPS")
        org.stop()
        late.start("--no-mdns", "--peer", edge.address, "--https", f"127.0.0.1:{https2}")
        wait_until(lambda: served_fingerprint(https2, ca) == fingerprint, 20, "the late edge to serve HTTPS")
        assert edge.node_id in "\n".join(line for line in late.log().splitlines() if "tls.key_received" in line)
    finally:
        stop_all([late, edge, org])
