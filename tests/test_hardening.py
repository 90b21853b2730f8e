"""Real `mesh up` processes under the attacks a venue LAN will see (issue 19): a connection flood
under a 1,024 descriptor limit, and the web side's rebinding and credential cases."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.drivers.runtime import REFUSED_LOGGED_PER_S
from tests.agents import Node, free_port, make_mesh, stop_all, wait_until

FLOOD_CONNECTIONS = 1100  # held at once: more than the agent's whole descriptor limit
FLOOD_SOURCES = 100  # 127.0.0.2 ... 127.0.0.101: the per-source bound alone cannot stop it
FD_LIMIT = 1024  # the default soft limit of a service without LimitNOFILE

# Hold FLOOD_CONNECTIONS plain TCP connections to the port from many loopback sources; whenever
# the agent closes one, open another at once. On SIGINT, prints how many it opened in all.
FLOOD_SCRIPT = """
import resource, selectors, socket, sys
host, port, count, sources = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
selector = selectors.DefaultSelector()
opened = 0
def open_one():
    global opened
    sock = socket.socket()
    sock.bind((f"127.0.0.{2 + opened % sources}", 0))
    sock.setblocking(False)
    sock.connect_ex((host, port))
    selector.register(sock, selectors.EVENT_READ)
    opened += 1
for _ in range(count):
    open_one()
print("holding", flush=True)
try:
    while True:
        for key, _ in selector.select(0.2):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                open_one()
except KeyboardInterrupt:
    print(opened, flush=True)
"""


def _release_dir(root: Path, files: int = 8, size: int = 256 * 1024) -> None:
    root.mkdir()
    for index in range(files):
        (root / f"file-{index}.bin").write_bytes(os.urandom(size))


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux) to set a 1,024 fd limit")
def test_connection_flood_under_a_1024_fd_limit_does_not_stop_a_release(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    flood = None
    try:
        org.start("--no-mdns", prefix=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"))
        flood = subprocess.Popen([sys.executable, "-c", FLOOD_SCRIPT, "127.0.0.1", str(org.port),
                                  str(FLOOD_CONNECTIONS), str(FLOOD_SOURCES)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert flood.stdout.readline().strip() == b"holding", flood.stderr.read().decode()
        wait_until(lambda: any(line in org.log() for line in ("peer.shed", "Too many open files")), 20,
                   "the flood to reach the agent's bound (or its descriptor limit)")
        _release_dir(tmp_path / "site")
        made = org.json("release", "create", "during-the-flood", str(tmp_path / "site"))
        org.cli("release", "publish", made["id"])
        edge.start("--no-mdns", "--peer", org.address)
        done = edge.cli("wait", "--timeout", "60", "--json")
        assert json.loads(done.stdout)["id"] == made["id"]
        assert f"release: during-the-flood ({made['id'][:12]}): complete, {8 * 256 * 1024:,} bytes" in \
            edge.cli("status").stdout.decode()  # the text status has a progress line too
        assert flood.poll() is None, "the flood ran for the whole transfer"
        assert org.proc.poll() is None, f"the agent died under the flood:\n{org.log()[-3000:]}"
        assert org.json("status")["running"]
        assert "Too many open files" not in org.log(), "descriptors ran out"
        flood.send_signal(signal.SIGINT)
        assert int(flood.communicate(timeout=30)[0].split()[-1]) > FLOOD_CONNECTIONS, "the agent shed none"
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        stop_all([org, edge])


# ---- the web side ------------------------------------------------------------------------------------


def _http(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_rebinding_revoked_organizers_tokens_and_the_open_status_route(tmp_path: Path) -> None:
    org, _ = make_mesh(tmp_path, 0)
    second = Node(tmp_path / "org2")
    invite = org.cli("invite", "--role", "organizer", "--name", "org-2").stdout.decode().strip()
    second.cli("join", invite)
    port = free_port()
    try:
        org.start("--no-mdns", "--http", f"127.0.0.1:{port}")
        wait_until(lambda: _http(port, "GET", "/healthz")[0] == 200, 20, "http to come up")
        # DNS rebinding: a page on attacker.example whose name now points at 127.0.0.1.
        foreign = {"Host": f"attacker.example:{port}"}
        assert _http(port, "GET", "/crew", foreign)[0] == 421, "the login page (and its CSRF token) is not served"
        assert _http(port, "POST", "/crew/login", foreign)[0] == 421
        assert _http(port, "GET", "/api/status", foreign)[0] == 421
        cross = {"Origin": "http://attacker.example", "Content-Type": "application/x-www-form-urlencoded"}
        assert _http(port, "POST", "/crew/login", cross, b"")[0] == 403, "a foreign Origin is refused on our Host too"
        status, _ = _http(port, "GET", "/crew", {"Host": f"localhost:{port}"})
        assert status == 401  # our own names still work

        # The open status route names no member; the crew sees everything.
        token = org.cli("crew-token").stdout.decode().strip()
        status, body = _http(port, "GET", "/api/status")
        assert status == 200 and json.loads(body)["ok"] is True
        for secret in (org.node_id, second.node_id, "org-2", "127.0.0.1:"):
            assert secret.encode() not in body, f"{secret} leaked on the open status route"
        status, body = _http(port, "GET", "/api/status", {"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(body)["node_id"] == org.node_id and "members" in json.loads(body)

        # A crew token the second organizer minted works, until that organizer is revoked.
        theirs = second.cli("crew-token", "--valid", "2h").stdout.decode().strip()
        bearer = {"Authorization": f"Bearer {theirs}", "Content-Type": "application/json"}
        policy = json.dumps({"scope": "photo", "default": "grant", "description": "Photos"}).encode()
        assert _http(port, "GET", "/api/dashboard", bearer)[0] == 200
        assert _http(port, "POST", "/api/crew/policy", bearer, policy)[0] == 200
        status, body = _http(port, "POST", "/api/crew/renew", bearer)
        renewed = json.loads(body)["token"]
        assert status == 200 and _http(port, "GET", "/api/dashboard", {"Authorization": f"Bearer {renewed}"})[0] == 200
        org.cli("revoke", second.node_id, "--force")  # it never ran, so the organizer has not seen it
        wait_until(lambda: _http(port, "GET", "/api/dashboard", bearer)[0] == 403, 10, "the token to stop working")
        assert _http(port, "POST", "/api/crew/policy", bearer, policy)[0] == 403
        assert _http(port, "POST", "/api/crew/renew", bearer)[0] == 403, "a dead token renews nothing"
        assert "amc1." not in org.log(), "mesh up printed a crew token into its log"
        ours = {"Authorization": f"Bearer {token}"}
        assert _http(port, "GET", "/api/dashboard", ours)[0] == 200, "the other organizer's tokens still work"

        # Wrong tokens are throttled per address, before any signature is checked.
        wrong = {"Authorization": f"Bearer {token[:-4]}AAAA"}
        statuses = [_http(port, "GET", "/api/members", wrong)[0] for _ in range(25)]
        assert statuses[0] == 403 and statuses[-1] == 429
        assert _http(port, "GET", "/api/members", ours)[0] == 429, "the address waits out the window"
    finally:
        stop_all([org])


RANDOM_BYTES_SCRIPT = """
import os, random, socket, sys
from concurrent.futures import ThreadPoolExecutor
port, count = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(20261203)
def one(n):
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(rng.randbytes(rng.choice((1, 2, 47, 48, 49, 300, 4096))))
        try:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass
with ThreadPoolExecutor(32) as pool:
    list(pool.map(one, range(count)))
print("sent", flush=True)
"""


def test_two_thousand_random_byte_connections_leave_the_agent_serving(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    try:
        org.start("--no-mdns")
        started = time.monotonic()
        fuzz = subprocess.run([sys.executable, "-c", RANDOM_BYTES_SCRIPT, str(org.port), "2000"],
                              capture_output=True, timeout=120)
        seconds = time.monotonic() - started
        assert fuzz.returncode == 0 and b"sent" in fuzz.stdout, fuzz.stderr.decode()[-2000:]
        assert org.proc.poll() is None
        lines = org.log().count("peer.refused")
        assert 0 < lines <= REFUSED_LOGGED_PER_S * (seconds + 2), f"{lines} refusal lines in {seconds:.1f} s"
        edge.start("--no-mdns", "--peer", org.address)
        (tmp_path / "after.txt").write_bytes(b"still here")
        cid = org.json("add", str(tmp_path / "after.txt"), "--tag", "merch")[0]["cid"]
        wait_until(lambda: edge.tags_of(cid) == {"merch"}, 20, "the member to sync after the fuzz")
    finally:
        stop_all([org, edge])


XSS = '<img src=x onerror=alert(1)><script>alert(2)</script>'


def test_markup_in_names_queries_and_messages_is_shown_as_text(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", f"gala {XSS}", "--node-name", "org")
    hostile = tmp_path / f"{XSS.replace('/', '')}.txt"
    hostile.write_bytes(b"a file with a hostile name")
    cid = org.json("add", str(hostile), "--tag", "merch")[0]["cid"]
    port = free_port()
    try:
        org.start("--no-mdns", "--http", f"127.0.0.1:{port}")
        wait_until(lambda: _http(port, "GET", "/healthz")[0] == 200, 20, "http to come up")
        from urllib.parse import quote

        for path in ("/", f"/search?q={quote(XSS)}", f"/asset/{cid}", f"/crew?error={quote(XSS)}",
                     f"/consent?code={quote(XSS)}", "/door"):
            status, body = _http(port, "GET", path, {"Accept": "text/html"})
            assert status < 500, path
            assert b"<script>alert" not in body and b"<img src=x" not in body, f"markup not escaped on {path}"
        status, body = _http(port, "GET", "/")
        assert b"&lt;script&gt;" in body or b"&lt;img" in body, "the mesh name is shown, escaped"
        # the login page shows only messages the server chose, by code (a crafted link shows nothing)
        phishing = quote("Your token expired: call 0800 123 and read it to us")
        assert b"call 0800" not in _http(port, "GET", f"/crew?error={phishing}", {"Accept": "text/html"})[1]
        assert b"has expired" in _http(port, "GET", "/crew?error=expired", {"Accept": "text/html"})[1]
    finally:
        stop_all([org])


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    http_port = free_port()
    try:
        org.start("--no-mdns", "--http", f"127.0.0.1:{http_port}")
        for args, taken in ((("--listen", org.address), org.address),
                            (("--listen", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{http_port}"),
                             f"127.0.0.1:{http_port}")):
            result = edge.cli("up", "--no-mdns", *args, check=False)
            err = result.stderr.decode()
            assert result.returncode == 1 and "Traceback" not in err, err
            assert f"error: {taken} is already in use" in err, err
    finally:
        stop_all([org])
