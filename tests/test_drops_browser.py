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


def test_a_phone_reserves_on_the_drop_page_and_gets_an_order_code_and_qr(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    drop_id = org.json("drop", "create", "Signed print", "--stock", "4", "--price", "25EUR",
                       "--pay-url", "https://pay.example/p/{order}", "--alloc", f"{edge.node_id}=2")["id"]
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
            browser.close()
        orders = edge.json("drop", "sell", drop_id, "--order", code)
        assert orders["status"] == "paid"
        wait_until(lambda: next(r for r in org.json("drop", "ls") if r["id"] == drop_id)["sold"] == 1, 30,
                   "the organizer to count the sale")
    finally:
        stop_all([org, edge])
