"""The gateway over real HTTP against a running `mesh up`: Range edge cases, HEAD, conditional
GETs, hidden assets (410, never bytes, nowhere listed), consent forms, crew login, CSRF, metrics."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import time

import pytest
from PIL import Image

from tests.agents import HttpClient as Client
from tests.agents import Node, free_port, stop_all, wait_until


def _jpeg(color: tuple[int, int, int], size=(1600, 1200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gwhttp")
    org = Node(root / "org")
    org.cli("init", "http-test")
    org.cli("policy", "set", "photo", "--default", "grant", "--describe", "Photos of the crowd")
    org.cli("tags", "set", "music", "merch", "stage", "--describe", "stage=Live from the main stage")
    site = root / "site"
    site.mkdir()
    (site / "index.html").write_bytes(b"<h1>v1</h1>")
    v1 = org.json("release", "create", "v1", str(site))
    org.cli("release", "publish", v1["id"])
    (site / "index.html").write_bytes(b"<h1>v2</h1>")
    v2 = org.json("release", "create", "v2", str(site))
    org.cli("release", "publish", v2["id"])
    clip = hashlib.shake_256(b"clip").digest(600_000)
    (root / "clip.mp4").write_bytes(clip)
    (root / "stage.jpg").write_bytes(_jpeg((200, 20, 20)))
    (root / "crowd.jpg").write_bytes(_jpeg((20, 20, 200)))
    badge = org.json("consent", "new-code", "--json")[0]
    code = badge["code"]
    clip_cid = org.json("add", str(root / "clip.mp4"), "--tag", "stage")[0]["cid"]
    stage_cid = org.json("add", str(root / "stage.jpg"), "--tag", "stage")[0]["cid"]
    crowd_cid = org.json("add", str(root / "crowd.jpg"), "--tag", "crowd", "--subject", code)[0]["cid"]
    records = {r["cid"]: r for r in org.json("ls")}
    port = free_port()
    org.start("--no-mdns", "--http", f"127.0.0.1:{port}")
    client = Client(port)
    wait_until(lambda: client.get("/healthz")[0] == 200, 20, "http to come up")
    token = org.cli("crew-token").stdout.decode().strip()
    yield {"org": org, "client": client, "port": port, "clip": clip_cid, "clip_bytes": clip, "stage": stage_cid,
           "crowd": crowd_cid, "records": records, "code": code, "secret": badge["secret"], "token": token,
           "v1": v1, "v2": v2}
    stop_all([org])


# ---- local CDN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("header, status, start, end", [
    ("bytes=0-", 206, 0, 600_000),
    ("bytes=-600001", 206, 0, 600_000),  # suffix longer than the file: all of it
    ("bytes=599999-599999", 206, 599_999, 600_000),  # the last byte
    ("bytes=0-1,5-6", 200, 0, 600_000),  # multiple ranges: the whole file (RFC 9110 allows)
    ("items=0-5", 200, 0, 600_000),  # unknown unit: ignored
])
def test_range_edge_cases(mesh, header, status, start, end) -> None:
    got, headers, body = mesh["client"].get(f"/c/{mesh['clip']}", range=header)
    assert got == status and body == mesh["clip_bytes"][start:end]
    assert headers["content-length"] == str(end - start)


@pytest.mark.parametrize("header", ["bytes=600000-", "bytes=-0", "bytes=9-3"])
def test_unsatisfiable_ranges(mesh, header) -> None:
    status, headers, body = mesh["client"].get(f"/c/{mesh['clip']}", range=header)
    assert status == 416 and headers["content-range"] == "bytes */600000" and body == b""


def test_if_range_with_another_etag_sends_everything(mesh) -> None:
    status, _, body = mesh["client"].get(f"/c/{mesh['clip']}", range="bytes=0-9", if_range='"other"')
    assert status == 200 and len(body) == 600_000
    status, _, body = mesh["client"].get(f"/c/{mesh['clip']}", range="bytes=0-9", if_range=f'"{mesh["clip"]}"')
    assert status == 206 and body == mesh["clip_bytes"][:10]


def test_head_and_conditional_get(mesh) -> None:
    client, cid = mesh["client"], mesh["clip"]
    status, headers, body = client.request("HEAD", f"/c/{cid}", {"Range": "bytes=10-19"})
    assert status == 206 and headers["content-length"] == "10" and body == b""
    for tags in (f'"{cid}"', f'"x", "{cid}"', "*", f'W/"{cid}"'):  # If-None-Match compares weakly
        status, headers, body = client.get(f"/c/{cid}", if_none_match=tags)
        assert status == 304 and body == b"" and headers["etag"] == f'"{cid}"'
    assert client.get(f"/c/{cid}", if_none_match='"x"')[0] == 200


def test_unknown_cid_and_paths(mesh) -> None:
    client = mesh["client"]
    assert client.get("/c/bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")[0] == 404
    assert client.get("/a/bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")[0] == 404
    assert client.get("/c/not-a-cid")[0] == 400
    assert client.get("/release/current/../../etc/passwd")[0] == 404
    assert client.get("/no/such/page")[0] == 404
    status, headers, body = client.get("/no/such/page", Accept="text/html,*/*")[:3]
    assert status == 404 and headers["content-type"].startswith("text/html") and b"<html" in body.lower()
    status, headers, _ = client.get("/api/no-such-route", Accept="text/html,*/*")[:3]
    assert status == 404 and headers["content-type"].startswith("application/json"), "the API answers JSON"


def test_thumbnails_are_served_and_listed(mesh) -> None:
    client, record = mesh["client"], mesh["records"][mesh["stage"]]
    thumb = record["thumbnail"]
    assert thumb and mesh["records"][mesh["clip"]]["thumbnail"] is None
    status, headers, body = client.get(f"/c/{thumb}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(body)).size) <= 320
    page = client.get("/search?tag=stage")[2].decode()
    assert f'src="/c/{thumb}"' in page and f'href="/a/{mesh["clip"]}"' in page
    assert mesh["crowd"] not in page
    found = json.loads(client.get("/api/search?tag=stage")[2])["assets"]
    assert {a["cid"] for a in found} == {mesh["stage"], mesh["clip"]}


def test_the_event_tags_come_first_with_their_descriptions(mesh) -> None:
    page = mesh["client"].get("/")[2].decode()
    declared, _, rest = page.partition('aria-label="More tags"')
    assert declared.index('href="/search?tag=stage"') < declared.index("Live from the main stage")
    assert 'href="/search?tag=music"' in declared, "a declared tag shows even before any asset has it"
    assert 'href="/search?tag=crowd"' in rest and 'href="/search?tag=crowd"' not in declared


def test_asset_page_uses_native_players(mesh) -> None:
    client = mesh["client"]
    assert f'<video id="media" src="/c/{mesh["clip"]}" controls' in client.get(f"/a/{mesh['clip']}")[2].decode()
    assert f'<img id="media" src="/c/{mesh["stage"]}"' in client.get(f"/a/{mesh['stage']}")[2].decode()


def test_release_files_and_security_headers(mesh) -> None:
    status, headers, body = mesh["client"].get("/release/current/index.html")
    assert status == 200 and body == b"<h1>v2</h1>"
    home = mesh["client"].get("/")
    assert "default-src 'self'" in home[1]["content-security-policy"]
    assert b"http://" not in home[2].replace(b"http://127.0.0.1", b"")  # no external links


# ---- consent: hidden assets are gone everywhere -----------------------------------------------------


def _hidden_everywhere(mesh) -> bool:
    client, cid = mesh["client"], mesh["crowd"]
    thumb = mesh["records"][cid]["thumbnail"]
    checks = [client.get(f"/c/{cid}"), client.get(f"/c/{thumb}"), client.get(f"/a/{cid}"),
              client.request("HEAD", f"/c/{cid}"), client.get(f"/c/{cid}", range="bytes=0-10")]
    if any(status != 410 for status, _, _ in checks):
        return False
    assert all(not body.startswith(b"\xff\xd8") for _, _, body in checks)  # never JPEG bytes
    listed = client.get("/search?q=crowd")[2].decode() + client.get("/api/search?q=jpg")[2].decode()
    return cid not in listed and thumb not in listed


def test_consent_revoke_and_grant_through_the_page(mesh) -> None:
    client, code, cid = mesh["client"], mesh["code"], mesh["crowd"]
    assert client.get(f"/c/{cid}")[0] == 200  # default grant: visible
    page = client.get(f"/consent?code={code}")[2].decode()
    assert "Photos of the crowd" in page and "Stop showing" in page
    token = client.csrf(f"/consent?code={code}", "/consent")
    status, headers, _ = client.post_form("/consent", {"csrf": token, "code": code, "scope": "photo",
                                                      "action": "revoke"})
    assert status == 303 and headers["location"].startswith("/consent?code=")
    wait_until(lambda: _hidden_everywhere(mesh), 10, "the asset to hide")
    revoked = json.loads(client.get(f"/api/consent/{code}")[2])["scopes"]
    assert revoked == [{"scope": "photo", "granted": False, "default": "grant",
                        "description": "Photos of the crowd"}]
    page = client.get(f"/consent?code={code}")[2].decode()
    assert 'name="secret"' in page and "/static/consent.js" in page  # allowing asks for the badge secret
    grant = {"csrf": client.csrf(f"/consent?code={code}", "/consent"), "code": code, "scope": "photo",
             "action": "grant"}
    status, _, body = client.post_form("/consent", grant)  # the code alone: refused, form kept
    assert status == 400 and b"badge secret is needed" in body and b'name="secret"' in body
    status, _, body = client.post_form("/consent", {**grant, "secret": "0000-0000-0000-0000-0000"})
    assert status == 403 and b"Nothing was changed" in body and b"0000-0000-0000-0000-0000" in body
    assert json.loads(client.get(f"/api/consent/{code}")[2])["scopes"] == revoked
    status, headers, _ = client.post_form("/consent", {**grant, "secret": mesh["secret"].lower()})
    assert status == 303 and mesh["secret"] not in headers["location"]
    wait_until(lambda: client.get(f"/c/{cid}")[0] == 200, 10, "the asset to show again")


def test_consent_form_needs_its_csrf_token(mesh) -> None:
    other = Client(mesh["port"])  # a fresh browser with no cookie, as from another site
    fields = {"code": mesh["code"], "scope": "photo", "action": "revoke", "csrf": "0" * 64}
    assert other.post_form("/consent", fields)[0] == 403
    assert mesh["client"].get(f"/c/{mesh['crowd']}")[0] == 200


def test_bad_codes_are_refused_gently(mesh) -> None:
    status, _, body = mesh["client"].get("/consent?code=ABCD-EFGH")
    assert status == 200 and b"not a badge code" in body


# ---- crew ------------------------------------------------------------------------------------------


def test_crew_actions_without_token_are_refused(mesh) -> None:
    stranger = Client(mesh["port"])
    token = stranger.csrf("/crew", "/crew/login")  # the login form, not a crew form
    assert stranger.post_form("/crew/rollback", {"csrf": token, "release_id": mesh["v1"]["id"]})[0] == 403
    assert stranger.request("POST", "/api/crew/rollback", {"Content-Type": "application/json"}, b"{}")[0] == 403
    assert stranger.get("/api/dashboard")[0] == 403
    assert stranger.get("/crew")[0] == 401
    forged = {"Authorization": "Bearer amc1.AAAA", "Content-Type": "application/json"}
    assert stranger.request("POST", "/api/crew/rollback", forged, b"{}")[0] == 403
    assert _current(mesh) == mesh["v2"]["id"]


def _current(mesh) -> str:
    bearer = {"Authorization": f"Bearer {mesh['token']}"}
    rows = json.loads(mesh["client"].request("GET", "/api/releases", bearer)[2])["releases"]
    return next(r["id"] for r in rows if r["current"])


def test_crew_login_csrf_and_rollback(mesh) -> None:
    crew = Client(mesh["port"])
    login = crew.csrf("/crew", "/crew/login")
    assert crew.post_form("/crew/login", {"token": mesh["token"]})[0] == 403  # no CSRF token
    status, headers, _ = crew.post_form("/crew/login", {"csrf": login, "token": mesh["token"]})
    assert status == 303 and "mesh_crew" in crew.cookies
    page = crew.get("/crew")[2].decode()
    assert "Crew dashboard" in page and mesh["v1"]["id"] in page
    # A forged form (right session cookie, wrong per-form token) is refused.
    assert crew.post_form("/crew/rollback", {"csrf": login, "release_id": mesh["v1"]["id"]})[0] == 403
    token = crew.csrf("/crew", "/crew/rollback")
    status, headers, _ = crew.post_form("/crew/rollback", {"csrf": token, "release_id": mesh["v1"]["id"]})
    assert status == 303 and "is+current+again" in headers["location"]
    wait_until(lambda: mesh["client"].get("/release/current/index.html")[2] == b"<h1>v1</h1>", 10, "rollback")
    assert _current(mesh) == mesh["v1"]["id"]
    bearer = {"Authorization": f"Bearer {mesh['token']}", "Content-Type": "application/json"}
    body = json.dumps({"release_id": mesh["v2"]["id"]}).encode()
    status, _, reply = crew.request("POST", "/api/crew/rollback", bearer, body)
    assert status == 200 and json.loads(reply)["ok"] is True
    assert _current(mesh) == mesh["v2"]["id"]


def test_localhost_login_and_expired_tokens(mesh) -> None:
    local = Client(mesh["port"])
    token = local.csrf("/crew", "/crew/login")
    assert local.post_form("/crew/login", {"csrf": token})[0] == 303  # we are on loopback
    assert local.get("/crew")[0] == 200
    expired = mesh["org"].cli("crew-token", "--valid", "1s").stdout.decode().strip()
    wait_until(lambda: mesh["client"].request("GET", "/api/members", {"Authorization": f"Bearer {expired}"})[0] == 403,
               5, "the token to expire")


def test_crew_json_api(mesh) -> None:
    bearer = {"Authorization": f"Bearer {mesh['token']}"}
    client = mesh["client"]
    members = json.loads(client.request("GET", "/api/members", bearer)[2])["members"]
    assert members[0]["self"] is True and members[0]["role"] == "organizer"
    for path in ("/api/peers", "/api/events", "/api/health", "/api/store", "/api/dashboard"):
        status, _, body = client.request("GET", path, bearer)
        assert status == 200 and json.loads(body), path


# ---- operations ---------------------------------------------------------------------------------------


def test_metrics_and_health(mesh) -> None:
    client = mesh["client"]
    client.get("/")
    status, headers, body = client.get("/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    openmetrics = client.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert openmetrics[1]["content-type"].startswith("application/openmetrics-text") and b"# EOF" in openmetrics[2]
    assert 'mesh_http_requests_total{method="GET",route="/",status="200"}' in text
    for name in ("mesh_peers 0.0", "mesh_release_complete 1.0", "mesh_chunks_verified_total",
                 "mesh_bytes_out_total", "mesh_store_bytes"):
        assert name in text, name
    assert "# HELP mesh_members Members of the mesh other than this node" in text
    assert json.loads(client.get("/healthz")[2]) == {"ok": True}


def test_door_page_service_worker_and_offline_list(mesh) -> None:
    client = mesh["client"]
    door = client.get("/door?url=http://10.1.2.3:8080/")[2].decode()
    assert "<svg" in door and "http://10.1.2.3:8080/" in door
    status, headers, body = client.get("/sw.js")
    assert status == 200 and headers["service-worker-allowed"] == "/" and b"caches.open" in body
    listed = json.loads(client.get("/offline.json")[2])
    assert "/release/current/index.html" in listed["files"] and "/" in listed["pages"]
    assert f"/c/{mesh['records'][mesh['stage']]['thumbnail']}" in listed["thumbs"]


def test_withdrawable_media_is_revalidated_not_kept_immutable(mesh) -> None:
    client, records = mesh["client"], mesh["records"]
    for cid in (mesh["crowd"], records[mesh["crowd"]]["thumbnail"]):  # names a subject
        assert client.get(f"/c/{cid}")[1]["cache-control"] == "no-cache"
    assert "immutable" in client.get(f"/c/{mesh['stage']}")[1]["cache-control"]


# ---- crew tokens (pure) --------------------------------------------------------------------------


def test_crew_tokens_verify_offline_and_refuse_forgeries() -> None:
    import base64
    import random

    import cbor2

    from mesh.errors import CredentialError
    from mesh.gateway.crew_token import create_crew_token, verify_crew_token
    from mesh.state.membership import RevocationList
    from mesh.testing.identities import TestMesh

    now = 1_800_000_000.0
    mesh_ = TestMesh(random.Random(7), now - 100)
    org, door = mesh_.founder, mesh_.add_member("door", "edge", now - 50)
    other = TestMesh(random.Random(8), now - 100).founder
    token = create_crew_token(org.authority_public_key, org.key, org.chain, now, 3600)
    grant = verify_crew_token(token, org.authority_public_key, now + 10)
    assert grant.publisher == org.node_id and grant.expires_at == now + 3600
    with pytest.raises(CredentialError, match="organizers"):
        create_crew_token(door.authority_public_key, door.key, door.chain, now)
    with pytest.raises(CredentialError, match="expired"):
        verify_crew_token(token, org.authority_public_key, now + 3601)
    with pytest.raises(CredentialError, match="another mesh"):
        verify_crew_token(token, other.authority_public_key, now)
    # An edge signs a crew body with its own key and real chain: refused.
    body = {"kind": "crew", "mesh": door.mesh_id, "publisher": door.node_id, "at": now, "expires_at": now + 60}
    body_bytes = cbor2.dumps(body, canonical=True)
    blob = cbor2.dumps([door.chain, [body_bytes, door.key.sign(b"assetmesh/v1/crew\x00" + body_bytes)]],
                       canonical=True)
    forged = "amc1." + base64.urlsafe_b64encode(blob).decode().rstrip("=")
    with pytest.raises(CredentialError, match="organizers"):
        verify_crew_token(forged, door.authority_public_key, now)
    # The organizer's body with a longer expiry but the old signature: refused.
    chain, (old_body, signature) = cbor2.loads(base64.urlsafe_b64decode(token[5:] + "=="))
    longer = cbor2.dumps({**cbor2.loads(old_body), "expires_at": now + 7200}, canonical=True)
    tampered = "amc1." + base64.urlsafe_b64encode(cbor2.dumps([chain, [longer, signature]], canonical=True)).decode()
    with pytest.raises(CredentialError, match="signature"):
        verify_crew_token(tampered, org.authority_public_key, now)
    revocations = RevocationList(org.authority_public_key)
    revocations.add(mesh_.authority_revocation(org.node_id, now - 1), now)
    with pytest.raises(CredentialError, match="revoked"):
        verify_crew_token(token, org.authority_public_key, now, revocations)
    for junk in ("", "amc1.", "amc1.!!!", "xyz", "amc1." + "A" * 20000):
        with pytest.raises(CredentialError):
            verify_crew_token(junk, org.authority_public_key, now)


# ---- the live dashboard (issue 22, items 1, 3, 4) ------------------------------------------------------


def first_event(port: int, headers: dict, path: str = "/crew/updates") -> tuple[int, str, dict | None]:
    """(status, content type, the first `update` event's data) of a server-sent event stream."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            return response.status, response.getheader("content-type", ""), None
        event = None
        while True:
            line = response.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "update":
                return response.status, response.getheader("content-type", ""), json.loads(line[6:])
    finally:
        conn.close()


def test_live_stream_sends_the_changing_parts_of_the_dashboard(mesh) -> None:
    assert first_event(mesh["port"], {})[0] == 403  # not crew: nothing
    status, kind, parts = first_event(mesh["port"], {"Authorization": f"Bearer {mesh['token']}"})
    assert status == 200 and kind.startswith("text/event-stream")
    assert set(parts) == {"nodes", "current-release", "events", "charts", "drops"}
    assert "<tr data-node=" in parts["nodes"] and 'class="badge ok"' in parts["nodes"]
    assert "<svg" in parts["charts"] and "agent.started" in parts["events"]


def test_dashboard_chart_release_times_and_event_sentences(mesh) -> None:
    bearer = {"Authorization": f"Bearer {mesh['token']}"}
    page = mesh["client"].request("GET", "/crew", {**bearer, "Accept": "text/html"})[2].decode()
    assert '<svg id="tags-chart"' in page and 'data-tag="stage" data-shown="2" data-hidden="0"' in page
    assert '<svg id="throughput"' in page and "viewBox=" in page
    assert "This node started, listening on 127.0.0.1:" in page  # agent.started, in words
    rows = json.loads(mesh["client"].request("GET", "/api/releases", bearer)[2])["releases"]
    for row in rows:
        assert row["first_published_at"] is not None and row["first_published_at"] <= row["published_at"]
    current = next(i for i, r in enumerate(rows) if r["current"])
    assert [r["older"] for r in rows] == [False] * (current + 1) + [True] * (len(rows) - current - 1)


def test_status_text_has_a_release_and_a_media_progress_line(mesh) -> None:
    text = mesh["org"].cli("status").stdout.decode()
    release = next(line for line in text.splitlines() if line.startswith("release: "))
    assert re.match(r"release: v\d \([a-z2-7]{12}\): (complete|\d+%|fetching its file list)", release), text
    media = next(line for line in text.splitlines() if line.startswith("media: "))
    assert " file(s) that belong here, " in media and " arriving; " in media, text


def test_the_health_signal_carries_store_and_media_for_other_nodes_dashboards(mesh) -> None:
    bearer = {"Authorization": f"Bearer {mesh['token']}"}

    def report() -> dict | None:
        health = json.loads(mesh["client"].request("GET", "/api/health", bearer)[2]).get("health")
        return health if health and "store" in health else None

    health = wait_until(report, 30, "a health report with the store")
    assert health["store"]["bytes"] >= len(mesh["clip_bytes"])
    status = json.loads(mesh["client"].request("GET", "/api/status", bearer)[2])
    assert {k: health["media"][k] for k in ("wanted", "held")} == {k: status["media"][k] for k in ("wanted", "held")}


# ---- connections -------------------------------------------------------------------------------


def _open_sockets(pid: int) -> int:
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return found


@pytest.mark.parametrize("path", ["/api/status", "/c/{stage}"])
def test_a_connection_the_browser_closed_is_closed_at_once_and_a_flood_of_them_holds_no_sockets(mesh, path) -> None:
    """A client that closes its keep-alive connection after the response gets the server's close
    at once (not after the 5 s keep-alive timer), so a burst of short connections leaves no
    sockets behind (each would hold a file descriptor: a flood would run the agent out of them)."""
    path = path.format(stage=mesh["stage"])
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{mesh['port']}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", mesh["port"]), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        conn.shutdown(socket.SHUT_WR)  # done: the server sees end of file
        started = time.monotonic()
        conn.settimeout(4.0)
        while conn.recv(65536):  # the rest of the body, then the server's close
            pass
        assert time.monotonic() - started < 2.0
    pid = mesh["org"].proc.pid
    before = _open_sockets(pid)
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", mesh["port"]), timeout=10) as conn:
            conn.sendall(request)
            conn.recv(65536)
    wait_until(lambda: _open_sockets(pid) <= before + 5, 2.5, "the closed connections' sockets to close")
