"""Pairing a fresh box by the code it shows: the SPAKE2 exchange in-process over a real socket
pair, then `mesh up` on an empty home and `mesh admit` as a crew would run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh.drivers.pairing import (
    PAIR_TRIES_MAX, PairingError, WaitingBox, admit, format_code, normalize_code,
)
from mesh.errors import UsageError
from tests.agents import Node, agents_in_namespace, free_port, stop_all, wait_until
from tests.conftest import assert_one_line_error, mesh_env

JOIN_S = 40


def test_codes_are_short_and_forgiving_to_type() -> None:
    assert format_code("4H7K2Q") == "4H7-K2Q" and len(format_code("4H7K2Q")) <= 8
    assert normalize_code(" 4h7-k2q ") == "4H7K2Q"
    assert normalize_code("OIL-123") == "011123", "O reads as 0, I and L as 1"
    for bad in ("4H7-K2", "4H7-K2QQ", "4H7-K2U", ""):
        with pytest.raises(UsageError, match="not a pairing code"):
            normalize_code(bad)


async def _pair(box: WaitingBox, code: str) -> str:
    """One admit attempt against `box` over an in-memory stream pair."""
    left, right = trio.testing.memory_stream_pair()
    result: dict = {}

    async def run_admit() -> None:
        try:
            result["node"] = await admit(left, code, lambda: "am1-the-token")
        except PairingError as exc:
            result["error"] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_admit)
        nursery.start_soon(box.handle, right, "test")
    return result.get("node") or result["error"]


def test_the_right_code_delivers_the_token_and_wrong_ones_are_counted_then_the_code_changes() -> None:
    shown: list[tuple[str, str]] = []

    async def main() -> None:
        box = WaitingBox("node-of-the-box", lambda code, why: shown.append((code, why)))
        box.check_expiry()
        first = box.code
        wrong = "000000" if first != "000000" else "111111"
        for attempt in range(PAIR_TRIES_MAX - 1):
            assert "refused the code" in await _pair(box, wrong)
            assert box.token is None and box.wrong == attempt + 1
        assert "refused the code" in await _pair(box, wrong)
        assert box.code != first and box.wrong == 0, "after the last wrong try the box makes a new code"
        assert shown[-1][1] == f"{PAIR_TRIES_MAX} wrong tries"
        assert "refused the code" in await _pair(box, first), "the old code is void"
        assert await _pair(box, box.code) == "node-of-the-box"
        assert box.token == "am1-the-token"

    trio.run(main)


def _launch_fresh(box: Node, *extra: str) -> None:
    log = open(box.log_path, "ab")
    box.proc = subprocess.Popen(box.up_argv("--no-mdns", *extra), stdout=log, stderr=log, env=mesh_env(),
                                start_new_session=True)
    log.close()


def _get_text(url: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def _pending(box: Node) -> dict | None:
    result = box.cli("id", "--json", check=False)
    doc = json.loads(result.stdout) if result.returncode == 0 else None
    return doc if doc and doc.get("state") == "pending" else None


def test_a_box_with_no_key_is_admitted_by_its_code_and_joins_without_a_restart(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "Spring pop-up", "--node-name", "org")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>Tonight</h1>")
    release = org.json("release", "create", "tonight", str(site))["id"]
    org.cli("release", "publish", release)
    box = Node(tmp_path / "box")
    http = free_port()
    try:
        org.start("--no-mdns")
        _launch_fresh(box, "--http", f"127.0.0.1:{http}")
        pending = wait_until(lambda: _pending(box), JOIN_S, "the box to wait with a code")
        assert set(pending) == {"node_id", "state", "code"} and len(pending["code"]) <= 8
        page = wait_until(lambda: _get_text(f"http://127.0.0.1:{http}/"), JOIN_S, "the box's own page")
        assert "Waiting to be admitted" in page and pending["code"] in page, "its own screen (loopback) shows the code"
        wait_until(lambda: "waiting to be admitted — code " + pending["code"] in box.log(), 10, "the code on its console")
        wrong = "000-000" if pending["code"] != "000-000" else "111-111"
        refused = org.cli("admit", wrong, "--addr", box.address, check=False)
        assert_one_line_error(refused, "refused the code")
        assert box.proc.poll() is None and _pending(box)["code"] == pending["code"], "it keeps waiting"
        assert_one_line_error(org.cli("admit", "nonsense", "--addr", box.address, check=False), "not a pairing code")
        pid = box.proc.pid
        admitted = org.json("admit", pending["code"], "--addr", box.address, "--role", "edge", "--name", "door-2")
        assert admitted["node_id"] == pending["node_id"]
        wait_until(lambda: (box.home / "home.json").exists(), JOIN_S, "the box to join")
        assert box.json("id") == {"node_id": pending["node_id"], "mesh_id": org.json("id")["mesh_id"],
                                  "role": "edge", "name": "door-2"}
        wait_until(lambda: pending["node_id"] in org.peers(), JOIN_S, "the box among the organizer's peers")
        wait_until(lambda: (box.json("status").get("release") or {}).get("complete"), JOIN_S, "the release")
        assert box.proc.pid == pid and box.proc.poll() is None, "the same process, no restart"
        assert not (box.home / "pending.json").exists()
    finally:
        stop_all([box, org])


def test_the_organizer_hears_a_waiting_box_on_mdns_and_admits_it_by_code_alone(tmp_path: Path) -> None:
    """Inside a private namespace: the box announces only that it waits; `mesh pending` lists it on
    the organizer, and `mesh admit CODE` (no address) pairs with it."""
    import shutil
    import sys

    from mesh.testing.netns import netns_available

    reason = netns_available() or (None if shutil.which("nsenter") else "needs nsenter")
    if reason:
        pytest.skip(reason)
    org = Node(tmp_path / "org")
    org.cli("init", "Spring pop-up", "--node-name", "org")
    box = Node(tmp_path / "box")
    with agents_in_namespace([(org, ()), (box, ())]) as lab:
        pending = wait_until(lambda: _pending(box), JOIN_S, "the box to wait with a code")

        def listed() -> list[dict]:
            result = org.cli("pending", "--json", check=False)
            return json.loads(result.stdout) if result.returncode == 0 else []

        boxes = wait_until(listed, JOIN_S, "the organizer to hear the box on mDNS")
        assert [b["node_id"] for b in boxes] == [pending["node_id"]] and set(boxes[0]) == {"node_id", "addr", "seen"}
        inside = ["nsenter", f"--net=/proc/{lab.pid}/ns/net", sys.executable, "-m", "mesh", "--home", str(org.home)]
        admitted = subprocess.run([*inside, "admit", pending["code"], "--name", "door-2", "--json"],
                                  capture_output=True, env=mesh_env(), timeout=60)
        assert admitted.returncode == 0, admitted.stderr.decode()
        assert json.loads(admitted.stdout)["node_id"] == pending["node_id"]
        wait_until(lambda: pending["node_id"] in org.peers(), JOIN_S, "the admitted box among the organizer's peers")
        wait_until(lambda: not listed(), JOIN_S, "the box gone from the Pending list")


BROWSER_ADMIT = r"""
import sys
from playwright.sync_api import sync_playwright
url, token, node, code = sys.argv[1:5]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"])
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    page.set_default_timeout(15000)
    page.goto(url + "/crew")
    page.fill("#token", token)
    page.click("button:has-text('Log in')")
    card = page.locator(f"#pending li[data-node='{node}']")
    card.wait_for()
    card.locator("input[name=code]").fill(code.lower())  # typed as a person would
    card.locator("input[name=name]").fill("door-2")
    card.locator("button:has-text('Admit')").click()
    page.wait_for_selector("#done")
    print(page.inner_text("#done"))
    browser.close()
"""


def test_the_crew_dashboard_lists_a_waiting_box_and_admits_it_from_a_phone(tmp_path: Path) -> None:
    import shutil
    import sys

    from mesh.testing.netns import netns_available

    reason = netns_available() or (None if shutil.which("nsenter") else "needs nsenter")
    try:
        import playwright  # noqa: F401
    except ImportError:
        reason = reason or "needs the playwright package"
    if reason or not shutil.which("/usr/bin/chromium"):
        pytest.skip(reason or "needs /usr/bin/chromium")
    org = Node(tmp_path / "org")
    org.cli("init", "Spring pop-up", "--node-name", "org")
    box = Node(tmp_path / "box")
    http = free_port()
    with agents_in_namespace([(org, ("--http", f"127.0.0.1:{http}")), (box, ())]) as lab:
        pending = wait_until(lambda: _pending(box), JOIN_S, "the box to wait with a code")
        wait_until(lambda: (org.cli("pending", "--json", check=False).stdout or b"[]").strip() not in (b"", b"[]"),
                   JOIN_S, "the organizer to hear the box")
        token = org.cli("crew-token").stdout.decode().strip()
        browser = subprocess.run(["nsenter", f"--net=/proc/{lab.pid}/ns/net", sys.executable, "-c", BROWSER_ADMIT,
                                  f"http://127.0.0.1:{http}", token, pending["node_id"], pending["code"]],
                                 capture_output=True, env=mesh_env(), timeout=120)
        assert browser.returncode == 0, browser.stderr.decode()[-2000:]
        assert "admitted" in browser.stdout.decode(), browser.stdout.decode()
        wait_until(lambda: pending["node_id"] in org.peers(), JOIN_S, "the admitted box among the organizer's peers")
        assert box.json("id")["name"] == "door-2"


def _asgi_get(app, path: str, client: str, host: str | None = None) -> tuple[int, bytes]:
    """One GET through the ASGI app, as from `client` (what hypercorn hands it)."""
    headers = [(b"host", host.encode())] if host else []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": (client, 50000), "server": ("127.0.0.1", 8080)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    trio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_the_waiting_box_page_shows_the_code_only_to_its_own_screen() -> None:
    from mesh.gateway.pending import pending_app

    app = pending_app(lambda: {"node_id": "62sj5z6l727x", "code": "4H7-K2Q"})
    status, page = _asgi_get(app, "/", "127.0.0.1")
    assert status == 200 and b"4H7-K2Q" in page, "the box's own screen shows the code"
    assert json.loads(_asgi_get(app, "/api/pending", "::1")[1])["code"] == "4H7-K2Q"
    status, page = _asgi_get(app, "/", "192.168.1.77")
    assert status == 200 and b"Waiting to be admitted" in page and b"4H7-K2Q" not in page and b"box 62sj5z" in page
    assert "code" not in json.loads(_asgi_get(app, "/api/pending", "192.168.1.77")[1])
    assert _asgi_get(app, "/crew", "192.168.1.77")[0] == 503
    assert b"4H7-K2Q" in _asgi_get(app, "/", "127.0.0.1", "localhost:8080")[1]
    # a page whose name rebinds to 127.0.0.1: refused outright, even from the box's own browser
    status, page = _asgi_get(app, "/api/pending", "127.0.0.1", "attacker.example:8080")
    assert status == 421 and b"4H7-K2Q" not in page
