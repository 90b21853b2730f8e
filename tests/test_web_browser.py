"""The web as people use it: Debian's Chromium driven by Playwright against two real `mesh up`
processes on loopback (no mDNS). Node A is the organizer, node B an edge joined to it."""

from __future__ import annotations

import math
import re
import shutil
import struct
import wave
from pathlib import Path

import pytest
from PIL import Image

from tests.agents import free_port, make_mesh, stop_all, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not shutil.which(CHROMIUM),
                                reason="needs the playwright package and /usr/bin/chromium")


def _jpeg(path: Path, color: tuple[int, int, int]) -> None:
    Image.new("RGB", (1200, 900), color).save(path, "JPEG")


def _wav(path: Path, seconds: int = 8, rate: int = 8000) -> None:
    """A tone clip (WAV: every Chromium plays it, and seeking fetches byte ranges)."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(seconds * rate))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)


def _bounded(make_page):
    """Pages with a 10 s timeout instead of Playwright's 30 s, so a failure fails fast."""
    def new_page():
        page = make_page()
        page.set_default_timeout(10_000)
        return page
    return new_page


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("web")
    a, (b,) = make_mesh(root, 1)
    a.cli("policy", "set", "photo", "--default", "grant", "--describe", "Photos of the audience")
    site = root / "site"
    site.mkdir()
    releases = {}
    for name in ("v1", "v2"):
        (site / "index.html").write_text(f"<h1>{name}</h1>")
        releases[name] = a.json("release", "create", name, str(site))["id"]
        a.cli("release", "publish", releases[name])
    media = root / "media"
    media.mkdir()
    _jpeg(media / "stage-1.jpg", (220, 30, 30))
    _jpeg(media / "stage-2.jpg", (30, 160, 30))
    _jpeg(media / "crowd.jpg", (30, 30, 220))
    _wav(media / "set.wav")
    code, secret = a.cli("consent", "new-code").stdout.decode().split()
    stage = a.json("add", str(media / "stage-1.jpg"), str(media / "stage-2.jpg"), str(media / "set.wav"),
                   "--tag", "stage")
    a.json("add", str(media / "crowd.jpg"), "--tag", "crowd", "--subject", code)
    records = {r["name"]: r for r in a.json("ls")}
    a_http, b_http = free_port(), free_port()
    a.start("--no-mdns", "--http", f"127.0.0.1:{a_http}")
    b.start("--no-mdns", "--http", f"127.0.0.1:{b_http}", "--peer", a.address)
    wait_until(lambda: a.node_id in b.peers(), 20, "B to connect to A")
    token = a.cli("crew-token").stdout.decode().strip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browser.new_page = _bounded(browser.new_page)
        yield {"a": a, "b": b, "A": f"http://127.0.0.1:{a_http}", "B": f"http://127.0.0.1:{b_http}",
               "records": records, "code": code, "secret": secret, "token": token, "releases": releases, "browser": browser,
               "stage": stage}
        browser.close()
    stop_all([b, a])


def test_search_by_tag_shows_the_right_thumbnails_and_an_image_opens(lab) -> None:
    page = lab["browser"].new_page()
    page.goto(lab["A"] + "/")
    page.click("a.tag:has-text('stage')")
    page.wait_for_url(re.compile(r"/search\?tag=stage"))
    shown = set(page.eval_on_selector_all(".grid img", "imgs => imgs.map(i => i.getAttribute('src'))"))
    records = lab["records"]
    assert shown == {f"/c/{records['stage-1.jpg']['thumbnail']}", f"/c/{records['stage-2.jpg']['thumbnail']}"}
    widths = page.eval_on_selector_all(".grid img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert widths == [320, 320]  # thumbnails, loaded, not the 1200 px originals
    assert page.locator(".grid .card").count() == 3  # and the clip, without a thumbnail
    page.click(f"a[data-cid='{records['stage-1.jpg']['cid']}']")
    page.wait_for_function("() => { const m = document.getElementById('media'); return m && m.complete && m.naturalWidth; }")
    assert page.eval_on_selector("#media", "m => m.naturalWidth") == 1200
    page.close()


def test_an_edge_shows_every_thumbnail_and_opens_an_original_it_did_not_hold(lab) -> None:
    """The door node's main page, as an attendee sees it: the thumbnails of media captured on the
    organizer have flowed to the edge (no broken image), and an original the edge does not keep
    (no tag of it is pinned there) streams from the organizer when opened."""
    records = lab["records"]
    def thumbnails_here() -> bool:
        media = lab["b"].json("status")["media"]
        return media["wanted"] >= 2 and media["held"] == media["wanted"]

    wait_until(thumbnails_here, 30, "B to hold every thumbnail (previews go to every edge)")
    page = lab["browser"].new_page()
    page.goto(lab["B"] + "/")
    images = page.evaluate("""async () => {  // lazy images load when scrolled to: load each, then look
        const found = [];
        for (const img of document.images) {
            img.loading = "eager";
            try { await img.decode(); } catch (e) { /* broken: naturalWidth stays 0 */ }
            found.push([img.getAttribute("src"), img.naturalWidth]);
        }
        return found;
    }""")
    assert images and all(width for _, width in images), f"broken images on the edge's page: {images}"
    assert f"/c/{records['stage-2.jpg']['thumbnail']}" in {src for src, _ in images}
    assert lab["b"].cli("cat", records["stage-2.jpg"]["cid"], check=False).returncode != 0, "not kept on B"
    page.goto(f"{lab['B']}/a/{records['stage-2.jpg']['cid']}")
    page.wait_for_function("() => { const m = document.getElementById('media'); return m && m.complete && m.naturalWidth; }")
    assert page.eval_on_selector("#media", "m => m.naturalWidth") == 1200
    page.close()


def _ranges_served(lab) -> float:
    text = lab["browser"].new_page()
    try:
        text.goto(lab["A"] + "/metrics")
        body = text.inner_text("body")
    finally:
        text.close()
    found = re.search(r'mesh_http_requests_total\{method="GET",route="c",status="206"\} ([0-9.]+)', body)
    return float(found.group(1)) if found else 0.0


def test_a_clip_plays_and_seeks_with_range_requests(lab) -> None:
    before = _ranges_served(lab)
    page = lab["browser"].new_page()
    page.goto(f"{lab['A']}/a/{lab['records']['set.wav']['cid']}")
    page.wait_for_function("() => document.getElementById('media').readyState >= 1")
    assert page.eval_on_selector("#media", "m => m.duration") == pytest.approx(8, abs=0.1)
    page.eval_on_selector("#media", "m => { m.currentTime = 6.5; }")
    page.wait_for_function("() => { const m = document.getElementById('media'); return !m.seeking && m.currentTime > 6; }")
    page.close()
    assert _ranges_served(lab) > before


def test_consent_revoke_on_b_hides_the_asset_on_a(lab) -> None:
    crowd = lab["records"]["crowd.jpg"]
    browser = lab["browser"]
    on_a = browser.new_page()
    on_a.goto(lab["A"] + "/search?tag=crowd")
    assert on_a.locator(f"a[data-cid='{crowd['cid']}']").count() == 1
    attendee = browser.new_page()
    wait_until(lambda: "photo" in attendee.goto(lab["B"] + "/api/policies").text(), 15, "B to get the policy")
    attendee.goto(f"{lab['B']}/consent?code={lab['code']}")  # as from the badge QR
    attendee.click("button:has-text('Stop showing')")
    attendee.wait_for_selector(".scope.denied")
    attendee.goto(lab["B"] + "/consent")  # the code is remembered by the browser
    attendee.wait_for_selector(".scope.denied")
    assert lab["code"] in attendee.url

    def hidden_on_a() -> bool:
        on_a.goto(lab["A"] + "/search?tag=crowd")
        return on_a.locator(f"a[data-cid='{crowd['cid']}']").count() == 0

    wait_until(hidden_on_a, 10, "the revoke to reach A")
    assert on_a.goto(f"{lab['A']}/c/{crowd['cid']}").status == 410
    assert on_a.goto(f"{lab['A']}/c/{crowd['thumbnail']}").status == 410

    attendee.close()
    attendee = browser.new_page()  # a fresh tab, as the phone's camera opens it
    attendee.goto(f"{lab['B']}/consent?code={lab['code']}#secret={lab['secret']}")  # the badge's QR link
    assert attendee.input_value(".scope input[name=secret]") == lab["secret"]  # moved into the form
    assert attendee.evaluate("location.hash") == ""  # and out of the address bar
    attendee.click("button:has-text('Allow')")
    attendee.wait_for_selector(".scope.granted")
    wait_until(lambda: on_a.goto(f"{lab['A']}/c/{crowd['cid']}").status == 200, 10, "the grant to reach A")
    on_a.close()
    attendee.close()


def test_dashboard_lists_peers_and_rollback_switches_the_release(lab) -> None:
    page = lab["browser"].new_context().new_page()
    page.goto(lab["A"] + "/crew")
    page.fill("#token", lab["token"])
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#members")
    b_row = page.locator(f"tr[data-node='{lab['b'].node_id}']")
    assert "online" in b_row.get_attribute("class") and "edge" in b_row.inner_text()
    assert "v2" in page.inner_text("#current-release")
    v1_row, v2_row = (page.locator(f"tr[data-release='{lab['releases'][name]}']") for name in ("v1", "v2"))
    assert v2_row.locator("button").count() == 0  # the current release: nothing to roll back to
    assert v1_row.locator("button").inner_text() == "Roll back"
    page.on("dialog", lambda dialog: dialog.accept())
    v1_row.locator("button").click()
    page.wait_for_selector("#done")
    assert "current again" in page.inner_text("#done") and "v1" in page.inner_text("#current-release")
    # v2 is newer than the current release now: no "Roll back" on it; v1 was published long
    # before it became current again, and the page says both.
    assert v2_row.locator("button").count() == 0 and "newer" in v2_row.inner_text()
    first = float(v1_row.locator("td.published .ago").get_attribute("data-t"))
    became = float(v1_row.locator("td.became-current .ago").get_attribute("data-t"))
    assert became > first
    wait_until(lambda: page.goto(lab["B"] + "/release/current/index.html").text() == "<h1>v1</h1>", 15,
               "B to switch to v1")
    page.context.close()


def test_crew_action_without_token_is_refused(lab) -> None:
    page = lab["browser"].new_context().new_page()
    page.goto(lab["A"] + "/crew")
    assert page.locator("#token").count() == 1  # the login form, no dashboard
    status = page.evaluate("""async (id) => {
        const body = new URLSearchParams({release_id: id, csrf: "0".repeat(64)});
        const r = await fetch('/crew/rollback', {method: 'POST', body});
        return r.status; }""", lab["releases"]["v2"])
    assert status == 403
    status = page.evaluate("async () => (await fetch('/api/crew/rollback', {method: 'POST'})).status")
    assert status == 403
    page.context.close()


# ---- layout: phone and desktop (issue 22, items 2, 6, 7, 8) ----------------------------------------

PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1280, "height": 800}
OVERFLOWING = """() => {  // elements whose box leaves the viewport sideways, and the page's scroll width
    const width = document.documentElement.clientWidth, found = [];
    for (const el of document.querySelectorAll("body *")) {
        const box = el.getBoundingClientRect();
        if (box.width > 0 && (box.right > width + 0.5 || box.left < -0.5))
            found.push(`${el.tagName}#${el.id}.${el.className} ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
    return {width, scroll: document.documentElement.scrollWidth, found: found.slice(0, 8)};
}"""


def _crew_page(lab, viewport):
    """A logged-in dashboard in a fresh context of that size."""
    page = lab["browser"].new_context(viewport=viewport).new_page()
    page.goto(lab["A"] + "/crew")
    page.fill("#token", lab["token"])
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#members")
    return page


def _pages(lab) -> list[str]:
    return ["/", "/search?tag=stage", f"/consent?code={lab['code']}", "/door", "/crew",
            f"/a/{lab['records']['stage-1.jpg']['cid']}", "DASHBOARD"]


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_no_element_overflows_the_viewport_sideways_on_any_page(lab, viewport) -> None:
    page = lab["browser"].new_context(viewport=viewport).new_page()
    crew = _crew_page(lab, viewport)
    for path in _pages(lab):
        shown = crew if path == "DASHBOARD" else page
        if path != "DASHBOARD":
            page.goto(lab["A"] + path)
        found = shown.evaluate(OVERFLOWING)
        assert found["scroll"] <= found["width"] and not found["found"], f"{path} at {viewport}: {found}"
    page.context.close()
    crew.context.close()


def test_nodes_are_cards_on_a_phone_and_a_table_on_a_desktop(lab) -> None:
    for viewport, display in ((PHONE, "block"), (DESKTOP, "table-row")):
        page = _crew_page(lab, viewport)
        row = page.locator(f"tr[data-node='{lab['b'].node_id}']")
        assert row.evaluate("r => getComputedStyle(r).display") == display
        revoke = row.locator("button:has-text('Revoke')").bounding_box()
        assert revoke["x"] >= 0 and revoke["x"] + revoke["width"] <= viewport["width"]  # reachable, no sideways scroll
        if display == "block":  # each value says what it is
            labels = row.locator("td[data-label]").evaluate_all(
                "tds => tds.map(td => getComputedStyle(td, '::before').content)")
            assert '"Store"' in labels and '"Health"' in labels
        page.context.close()


HEADER = """() => {  // [the header's height, 1 if its name and links sit on one line]
    const bar = document.querySelector("header.bar");
    const middles = [...bar.querySelectorAll(".brand, nav a")].map(e => { const r = e.getBoundingClientRect(); return r.top + r.height / 2; });
    return [bar.getBoundingClientRect().height, Math.max(...middles) - Math.min(...middles) < 4 ? 1 : 2];
}"""


def test_the_header_is_one_line_of_the_same_height_on_every_page(lab) -> None:
    page = lab["browser"].new_context(viewport=PHONE).new_page()
    heights = {}
    for path in _pages(lab)[:-1]:
        page.goto(lab["A"] + path)
        heights[path], rows = page.evaluate(HEADER)
        assert rows == 1, f"the header wraps on {path}"
        page.evaluate("() => { document.querySelector('.brand').textContent = 'popup-berlin-summer-festival-2026'; }")
        assert page.evaluate(HEADER) == [heights[path], 1], f"a long event name wraps the header on {path}"
    assert len(set(heights.values())) == 1, heights
    page.context.close()


@pytest.mark.parametrize("media", ["screen-phone", "screen-desktop", "print"])
def test_the_door_qr_scales_centred_without_empty_space(lab, media) -> None:
    sizes = {"screen-phone": PHONE, "screen-desktop": DESKTOP, "print": {"width": 794, "height": 1123}}  # A4
    page = lab["browser"].new_context(viewport=sizes[media]).new_page()
    if media == "print":
        page.emulate_media(media="print")
    page.goto(lab["A"] + "/door")
    svg = page.locator(".door .qr svg")
    assert svg.get_attribute("viewBox") and svg.get_attribute("width") is None
    box, qr = page.locator(".door .qr").bounding_box(), svg.bounding_box()
    assert abs(qr["width"] - qr["height"]) < 1  # square: no empty band under the code
    assert abs(box["height"] - qr["height"]) < 1  # its box is just as tall
    assert abs((qr["x"] + qr["width"] / 2) - (box["x"] + box["width"] / 2)) < 1  # centred
    drawn = page.evaluate("() => { const s = document.querySelector('.door .qr svg'), p = s.querySelector('path'); "
                          "const b = p.getBoundingClientRect(), o = s.getBoundingClientRect(); "
                          "return [b.width / o.width, b.height / o.height]; }")
    assert all(share > 0.75 for share in drawn), drawn  # the modules fill the SVG (a 2-module quiet zone around)
    if media == "print":
        assert 440 < qr["width"] < 470  # 12 cm
    page.context.close()


def test_badge_code_input_placeholder_cards_and_login_buttons(lab) -> None:
    page = lab["browser"].new_context(viewport=PHONE).new_page()
    page.goto(lab["A"] + "/consent")
    page.fill("#code", "ABCD-EFGI")
    assert page.eval_on_selector("#code", "i => i.scrollWidth <= i.clientWidth"), "the code's last letter is cut"
    page.goto(lab["A"] + "/search?tag=stage")  # two thumbnails and the clip's placeholder
    heights = page.eval_on_selector_all(".grid .card", "cs => cs.map(c => Math.round(c.getBoundingClientRect().height))")
    assert len(heights) == 3 and len(set(heights)) == 1, heights
    page.goto(lab["A"] + "/crew")
    log_in = page.locator("button:has-text('Log in')").first.bounding_box()
    local = page.locator("#local-login").bounding_box()
    assert local["y"] - (log_in["y"] + log_in["height"]) >= 16
    page.context.close()


def test_dashboard_events_read_as_sentences(lab) -> None:
    page = _crew_page(lab, DESKTOP)
    connected = page.locator("#events li[data-event='peer.connected']").first
    assert "door-1 (edge) connected from 127.0.0.1:" in connected.inner_text()
    assert "node=" not in connected.inner_text()  # the raw line is kept as the label's title only
    assert "peer.connected node=" in connected.locator("small").get_attribute("title")
    page.context.close()


def test_the_dashboard_updates_live_during_a_release_without_a_reload(lab, tmp_path) -> None:
    """Server-sent events (/crew/updates) move the edge's release cell from the old release to the
    new one, complete, and the current-release line with it, while the page stays loaded."""
    page = _crew_page(lab, DESKTOP)
    page.evaluate("""() => {
        window.notReloaded = true;
        window.seen = [];
        const note = () => {
            const cell = document.querySelector("tr[data-node='%s'] td.release");
            const text = cell ? cell.innerText.trim() : "";
            if (window.seen[window.seen.length - 1] !== text) window.seen.push(text);
        };
        note();
        new MutationObserver(note).observe(document.getElementById("nodes"), {childList: true, subtree: true});
    }""" % lab["b"].node_id)
    site = tmp_path / "site3"
    site.mkdir()
    (site / "index.html").write_text("<h1>v3</h1>")
    (site / "big.bin").write_bytes(bytes(range(256)) * 16384)  # 4 MiB: some chunks to fetch
    v3 = lab["a"].json("release", "create", "v3", str(site))["id"]
    lab["a"].cli("release", "publish", v3)
    page.wait_for_function("() => document.getElementById('current-release').innerText.includes('v3')", timeout=20_000)
    page.wait_for_function("() => window.seen.some(t => t.startsWith('v3') && t.includes('complete'))", timeout=30_000)
    seen = page.evaluate("window.seen")
    assert page.evaluate("window.notReloaded") is True
    assert page.get_attribute("#dashboard", "data-live")  # the updates came from the event stream
    assert not seen[0].startswith("v3") and seen[-1].startswith("v3"), seen  # it moved, live
    page.context.close()


def test_the_live_stream_is_for_the_crew_only(lab) -> None:
    page = lab["browser"].new_context().new_page()
    page.goto(lab["A"] + "/")
    assert page.evaluate("async () => (await fetch('/crew/updates')).status") == 403
    page.context.close()


# Last: it stops node B.
def test_service_worker_serves_the_page_with_the_node_stopped(lab) -> None:
    context = lab["browser"].new_context()
    page = context.new_page()
    page.goto(lab["B"] + "/")
    page.evaluate("() => navigator.serviceWorker.ready.then(() => true)")
    page.wait_for_function("""async () => {
        const cache = await caches.open('mesh-offline-v1');
        return !!(await cache.match('/')) && !!(await cache.match('/release/current/index.html'));
    }""", timeout=15000)
    page.reload()  # now controlled by the worker
    page.wait_for_function("() => !!navigator.serviceWorker.controller")
    lab["b"].stop()
    page.reload()
    assert page.title() and page.locator("header .brand").count() == 1
    page.goto(lab["B"] + "/release/current/index.html")
    assert re.search(r"<h1>v\d</h1>", page.content())  # whichever release was current (v3 after the live test)
    context.close()
