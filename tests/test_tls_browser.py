"""HTTPS at the edge as a phone sees it: Debian's Chromium (Playwright) trusts a test CA through an
NSS database in a temporary HOME, reaches an edge by a non-loopback name (event.test, mapped to
127.0.0.1 by --host-resolver-rules), registers the service worker in that secure context and keeps
showing the search page once the node is stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agents import free_port, make_mesh, stop_all, wait_until
from tests.test_tls import served_fingerprint
from tests.tls_certs import TestCa

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
CERTUTIL = shutil.which("certutil")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                       reason="needs the playwright package and /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(CERTUTIL is None, reason="needs certutil to trust the test CA (apt-get install libnss3-tools)"),
]


def _trusting_home(root: Path, ca: TestCa) -> Path:
    """A HOME whose NSS database (what Chromium on Linux reads) trusts `ca` for servers."""
    home = root / "browser-home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.pem)
    subprocess.run([CERTUTIL, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run([CERTUTIL, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "AssetMesh Test CA", "-i", str(ca_file)],
                   check=True, capture_output=True)
    return home


def test_service_worker_registers_over_https_and_search_works_offline(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>over https</h1>")
    org.cli("release", "publish", org.json("release", "create", "v1", str(site))["id"])
    ca = TestCa.make()
    cert, key, _ = ca.write_leaf(tmp_path, "event", ["event.test"])
    fingerprint = org.json("tls", "set", "--cert", cert, "--key", key)["fingerprint"]
    https = free_port()
    browser_home = _trusting_home(tmp_path, ca)
    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address, "--https", f"127.0.0.1:{https}")  # event.test: allowed as a name of the certificate
        wait_until(lambda: served_fingerprint(https, ca) == fingerprint, 20, "the edge to serve HTTPS")
        edge.cli("wait", "--timeout", "20")
        org.stop()
        url = f"https://event.test:{https}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, env={**os.environ, "HOME": str(browser_home)},
                                        args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP event.test 127.0.0.1"])
            try:
                page = browser.new_page()
                page.set_default_timeout(10_000)
                page.goto(url + "/")
                assert page.evaluate("() => window.isSecureContext") is True
                assert page.evaluate("() => navigator.serviceWorker.ready.then(r => r.active.scriptURL)") == url + "/sw.js"
                page.wait_for_function("""async () => {
                    const cache = await caches.open('mesh-offline-v1');
                    return !!(await cache.match('/search')) && !!(await cache.match('/release/current/index.html'));
                }""", timeout=15000)
                page.reload()
                page.wait_for_function("() => !!navigator.serviceWorker.controller")
                edge.stop()
                assert served_fingerprint(https, ca) is None
                page.goto(url + "/search")
                assert page.title() and page.locator("header .brand").count() == 1
                assert page.locator("input[name=q]").count() >= 1
                page.goto(url + "/release/current/index.html")
                assert "over https" in page.content()
            finally:
                browser.close()
    finally:
        stop_all([edge, org])
