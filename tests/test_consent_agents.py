"""Real processes: a consent revocation made at the door empties the camera node's store; on a
node's public /consent page anyone may withdraw with a badge's code, only its holder may allow."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from tests.agents import HttpClient, free_port, make_mesh, stop_all, wait_until

CONVERGE_S = 20


def test_revocation_on_another_node_purges_the_media_where_it_is_stored(tmp_path: Path) -> None:
    cam, (door,) = make_mesh(tmp_path, 1)
    cam.cli("policy", "set", "photo", "--default", "grant", "--describe", "Photos of you may be shown")
    code = cam.cli("consent", "new-code").stdout.decode().split()[0]
    shot, other = tmp_path / "shot-0412.jpg", tmp_path / "poster.jpg"
    shot.write_bytes(hashlib.shake_256(b"shot").digest(600_000))
    other.write_bytes(hashlib.shake_256(b"poster").digest(300_000))
    shot_cid = cam.json("add", str(shot), "--subject", code, "--tag", "stage-a")[0]["cid"]
    other_cid = cam.json("add", str(other), "--tag", "stage-a")[0]["cid"]
    config = tmp_path / "cam.toml"
    config.write_text("gc_interval_s = 0.5\nmdns = false\n")
    try:
        cam.start("--config", str(config))
        door.start("--no-mdns", "--peer", cam.address)
        wait_until(lambda: door.tags_of(shot_cid) == {"stage-a"}, CONVERGE_S, "the door to see the shot")
        assert cam.cli("cat", shot_cid).stdout == shot.read_bytes()

        door.cli("consent", "revoke", code, "photo")
        wait_until(lambda: cam.cli("cat", shot_cid, check=False).returncode != 0, CONVERGE_S,
                   "the camera node to purge the shot")
        assert cam.tags_of(shot_cid) is None and door.tags_of(shot_cid) is None  # hidden everywhere
        assert cam.cli("cat", other_cid).stdout == other.read_bytes()  # the rest is untouched
        assert "store.purged" in cam.log()
    finally:
        stop_all([cam, door])


class Browser(HttpClient):
    """An attendee's browser on loopback: asks for HTML, keeps its cookies, never follows redirects."""

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
        return super().request(method, path, {"Accept": "text/html", **(headers or {})}, body)

    def choose(self, page: str, fields: dict) -> tuple[int, dict, bytes]:
        """Open `page` and submit one of its consent forms with `fields` (and the form's token)."""
        html = self.request("GET", page)[2].decode()
        token = re.search(r'<form action="/consent" method="post">\s*'
                          r'<input type="hidden" name="csrf" value="([0-9a-f]+)">', html)
        assert token, f"no consent form on {page}"
        body = urlencode({"csrf": token.group(1), **fields}).encode()
        return self.request("POST", "/consent", {"Content-Type": "application/x-www-form-urlencoded"}, body)


def test_a_badge_code_alone_withdraws_but_only_the_badge_secret_allows_again(tmp_path: Path) -> None:
    cam, (door,) = make_mesh(tmp_path, 1)
    http_port = free_port()
    cam.cli("policy", "set", "photo", "--default", "grant", "--describe", "Photos of you may be shown")
    (badge,) = cam.json("consent", "new-code", "--url", f"http://127.0.0.1:{http_port}")
    code, secret, link = badge["code"], badge["secret"], urlsplit(badge["url"])
    assert link.fragment == f"secret={secret}" and secret not in link.query  # never sent by a browser
    shot = tmp_path / "shot-0413.jpg"
    shot.write_bytes(hashlib.shake_256(b"shot 413").digest(400_000))
    shot_cid = cam.json("add", str(shot), "--subject", code, "--tag", "stage-a")[0]["cid"]
    config = tmp_path / "cam.toml"
    config.write_text("gc_interval_s = 3600\nmdns = false\n")  # keep the bytes: the grant restores them
    browser, page = Browser(http_port), f"{link.path}?{link.query}"  # what the QR opens, minus the fragment
    try:
        cam.start("--config", str(config))
        door.start("--no-mdns", "--peer", cam.address, "--http", f"127.0.0.1:{http_port}")
        wait_until(lambda: browser.request("GET", f"/c/{shot_cid}")[0] == 200, CONVERGE_S, "the door to serve it")

        status, headers, _ = browser.choose(page, {"code": code, "scope": "photo", "action": "revoke"})
        assert status == 303, "a withdrawal needs only the code"
        wait_until(lambda: browser.request("GET", f"/c/{shot_cid}")[0] == 410, CONVERGE_S, "the door to hide it")
        wait_until(lambda: cam.tags_of(shot_cid) is None, CONVERGE_S, "the camera node to hide it")

        for wrong in ({}, {"secret": ""}, {"secret": "0000-0000-0000-0000-0000"}):
            status, _, body = browser.choose(page, {"code": code, "scope": "photo", "action": "grant", **wrong})
            assert status in (400, 403) and (b"Nothing was changed" in body or b"secret is needed" in body)
            assert b'name="secret"' in body and code.encode() in body  # the form is kept
        shown = door.json("consent", "show", code)["scopes"]
        assert [d["grant"] for d in shown[0]["decisions"]] == [False], "no grant was recorded"
        assert browser.request("GET", f"/c/{shot_cid}")[0] == 410

        status, headers, _ = browser.choose(page, {"code": code, "scope": "photo", "action": "grant",
                                                   "secret": secret})
        assert status == 303 and secret not in headers["location"]
        wait_until(lambda: cam.tags_of(shot_cid) == {"stage-a"}, CONVERGE_S, "the camera node to show it again")
        wait_until(lambda: browser.request("GET", f"/c/{shot_cid}")[0] == 200, CONVERGE_S, "the door to serve it")
        assert browser.request("GET", f"/c/{shot_cid}")[2] == shot.read_bytes()
    finally:
        stop_all([cam, door])
    spellings = {secret, secret.replace("-", ""), secret.lower(), secret.replace("-", "").lower()}
    for node in (cam, door):
        saved = node.cli("consent", "export", code).stdout + node.log().encode()
        saved += b"".join(path.read_bytes() for path in node.home.rglob("*") if path.is_file())
        assert not any(s.encode() in saved for s in spellings), f"the badge secret reached {node.home.name}"
