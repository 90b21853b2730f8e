"""`mesh export-static DIR`: the current release, visible assets only, a client-side search page
that works from file:// in Chromium, and a consent page that says how to give consent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.agents import Node

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("export")
    org = Node(root / "org")
    org.cli("init", "export-test")
    org.cli("policy", "set", "photo", "--default", "grant", "--describe", "Photos of the audience")
    org.cli("policy", "set", "retention", "--captured", "7d")
    site = root / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>programme</h1>")
    (site / "css" / "a.css").write_text("h1{}")
    org.cli("release", "publish", org.json("release", "create", "v1", str(site))["id"])
    for name, color in (("stage-1.jpg", (200, 0, 0)), ("stage-2.jpg", (0, 200, 0)), ("crowd.jpg", (0, 0, 200))):
        Image.new("RGB", (800, 600), color).save(root / name)
    (root / "notes.txt").write_text("set list")
    code = org.cli("consent", "new-code").stdout.decode().split()[0]
    org.json("add", str(root / "stage-1.jpg"), str(root / "stage-2.jpg"), str(root / "notes.txt"), "--tag", "stage")
    crowd = org.json("add", str(root / "crowd.jpg"), "--tag", "crowd", "--subject", code)[0]["cid"]
    org.cli("consent", "revoke", code, "photo")
    out = root / "out"
    report = org.json("export-static", str(out))
    return {"out": out, "report": report, "crowd": crowd, "records": {r["name"]: r for r in org.json("ls")}}


def test_writes_release_visible_assets_and_pages(exported) -> None:
    out, report = exported["out"], exported["report"]
    assert report["files"] == 2 and report["assets"] == 3
    assert (out / "release" / "index.html").read_text() == "<h1>programme</h1>"
    assert (out / "release" / "css" / "a.css").exists()
    index = json.loads((out / "index.json").read_text())
    names = {a["name"] for a in index["assets"]}
    assert names == {"stage-1.jpg", "stage-2.jpg", "notes.txt"}
    assert exported["crowd"] not in (out / "index.js").read_text()  # consent revoked: not exported
    assert not (out / "assets" / exported["crowd"]).exists()
    thumb = exported["records"]["stage-1.jpg"]["thumbnail"]
    assert (out / "thumbs" / f"{thumb}.jpg").stat().st_size < 50_000
    consent = (out / "consent.html").read_text()
    assert "Photos of the audience" in consent and "7 days" in consent and "scan the QR code" in consent


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs /usr/bin/chromium")
def test_search_works_from_file_urls_in_chromium(exported) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    out: Path = exported["out"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(10_000)
        page.goto((out / "index.html").as_uri())
        assert page.inner_text("#result-count") == "3 results"
        page.fill("#q", "stage-2")
        assert page.inner_text("#result-count") == "1 result"
        page.fill("#q", "")
        page.click("a.tag[data-tag='stage']")
        assert page.inner_text("#result-count") == "3 results tagged stage"
        widths = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
        assert sorted(widths) == [320, 320]
        page.click("a.card:has-text('stage-1.jpg')")
        page.wait_for_load_state()
        assert page.url.endswith("/stage-1.jpg")
        page.goto((out / "consent.html").as_uri())
        assert "Your photos, your choice" in page.inner_text("h1")
        browser.close()
