"""A phone reserves on an edge's drop page: Debian's Chromium driven by Playwright against two real
`mesh up` processes on loopback (no mDNS), as tests/test_web_browser.py does."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.agents import free_port, make_mesh, stop_all, wait_until
from tests.test_web_browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright

pytestmark = pytest.mark.skipif(sync_playwright is None or not shutil.which(CHROMIUM),
                                reason="needs the playwright package and /usr/bin/chromium")


def test_a_phone_reserves_follows_the_drop_live_and_the_crew_marks_it_paid(tmp_path: Path) -> None:
    """The phone reserves on the edge and gets its code, QR and pay link; a sale at the organizer's box
    updates "left" on the open page without a reload; the crew marks the order paid on the edge's
    dashboard (which lists the drop, each box's share and sales per tag), and the phone's page turns
    to "Paid" by itself."""
    org, (edge,) = make_mesh(tmp_path, 1)
    drop_id = org.json("drop", "create", "Signed print", "--stock", "4", "--price", "25EUR", "--tag", "merch",
                       "--pay-url", "https://pay.example/p/{order}", "--alloc", f"{edge.node_id}=2")["id"]
    token = org.cli("crew-token").stdout.decode().strip()
    http = free_port()
    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address, "--http", f"127.0.0.1:{http}")
        wait_until(lambda: any(r["id"] == drop_id for r in edge.json("drop", "ls")), 30, "the edge to see the drop")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            page.set_default_timeout(10_000)
            page.goto(f"http://127.0.0.1:{http}/drop/{drop_id}")
            assert page.text_content("h1") == "Signed print"
            assert page.text_content("#left") == "About 4 left."  # 2 here, 2 with the organizer
            page.click("#reserve")
            page.wait_for_url(re.compile(rf"/drop/{drop_id}\?order=[0-9A-Z]{{6}}$"))
            code = page.url.rsplit("=", 1)[1]
            assert page.text_content("#order-code") == code
            assert page.locator(".qr svg").count() == 1
            assert page.get_attribute("a.button", "href") == f"https://pay.example/p/{code}"
            assert page.text_content("#left") == "About 3 left."
            page.wait_for_selector("[data-drop-live][data-live]")  # the event stream is open
            page.evaluate("window.notReloaded = true")

            at_org = org.json("drop", "reserve", drop_id)["order"]
            org.cli("drop", "sell", drop_id, "--order", at_org)  # another box sells: the page follows
            page.wait_for_function("() => document.getElementById('left').textContent === 'About 2 left.'",
                                   timeout=30_000)
            assert page.evaluate("window.notReloaded") is True

            crew = browser.new_page(viewport={"width": 1280, "height": 900})
            crew.set_default_timeout(10_000)
            crew.goto(f"http://127.0.0.1:{http}/crew")
            crew.fill("#token", token)
            crew.click("button:has-text('Log in')")
            row = crew.locator(f"#drops [data-drop='{drop_id}']")
            assert row.locator(f"li[data-order='{code}']").count() == 1  # waiting for payment here
            assert row.locator(f"tr[data-node='{edge.node_id}']").count() == 1
            row.locator(f"li[data-order='{code}'] button[value='yes']").click()
            assert crew.text_content("#done") == f"order {code} is paid"
            crew.wait_for_function(
                f"() => document.querySelector(\"#drops [data-drop='{drop_id}']\").dataset.sold === '2'",
                timeout=30_000)
            assert crew.get_attribute("#tags-chart g[data-tag='merch']", "data-sold") == "2"  # sales per tag

            page.wait_for_selector("#order-status:has-text('Paid')", timeout=30_000)  # reloaded by itself
            browser.close()
        wait_until(lambda: next(r for r in org.json("drop", "ls") if r["id"] == drop_id)["sold"] == 2, 30,
                   "the organizer to count both sales")
    finally:
        stop_all([org, edge])
