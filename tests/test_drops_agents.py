"""Real processes: two edges sell a drop of 10 (5 each); the link between them is cut mid-sale, both
keep selling from their own allowance (and refuse a sixth), and after healing both show the exact
tally: 10 sold, 5 at each, never 11. Then the phone page and JSON API on an edge: the page shows
what is left, reserving gives an order code and a QR, the POS marks it paid with a crew token.

The edges listen on 127.0.0.2 and 127.0.0.3 and reach each other only through a relay on 127.0.0.1
that the test can cut (an address a peer tells the other names 127.0.0.1, where nothing listens)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from tests.conftest import mesh_env
from tests.test_gateway_http import first_event
from tests.agents import HttpClient, Node, free_port, make_mesh, stop_all, wait_until

CONVERGE_S = 30


class HostNode(Node):
    """A node listening on another loopback address."""

    def __init__(self, node: Node, host: str) -> None:
        super().__init__(node.home, node.port)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Relay:
    """A TCP relay 127.0.0.1:port -> target that can cut every connection and refuse new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.sockets.clear()

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _tally(node: Node, drop_id: str) -> dict | None:
    rows = {row["id"]: row for row in node.json("drop", "ls")}
    return rows.get(drop_id)


def _sell(node: Node, drop_id: str) -> str:
    order = node.json("drop", "reserve", drop_id)["order"]
    assert node.json("drop", "sell", drop_id, "--order", order)["status"] == "paid"
    return order


def test_two_edges_keep_selling_through_a_cut_and_heal_to_the_exact_tally(tmp_path: Path) -> None:
    org, (plain1, plain2) = make_mesh(tmp_path, 2)
    edge1, edge2 = HostNode(plain1, "127.0.0.2"), HostNode(plain2, "127.0.0.3")
    made = org.json("drop", "create", "Signed print", "--stock", "10", "--price", "25EUR", "--tag", "merch",
                    "--alloc", f"{edge1.node_id}=5", "--alloc", f"{edge2.node_id}=5")
    drop_id, relay = made["id"], None
    try:
        org.start("--no-mdns")
        edge1.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: _tally(edge1, drop_id), CONVERGE_S, "edge 1 to see the drop")
        org.stop()  # from here on the edges only have each other, through the relay
        relay = Relay(("127.0.0.2", edge1.port))
        edge2.start("--no-mdns", "--peer", relay.address)
        wait_until(lambda: _tally(edge2, drop_id), CONVERGE_S, "edge 2 to see the drop through the relay")
        sold = {edge1: [_sell(edge1, drop_id) for _ in range(2)], edge2: [_sell(edge2, drop_id) for _ in range(2)]}
        wait_until(lambda: all(_tally(n, drop_id)["sold"] == 4 for n in (edge1, edge2)), CONVERGE_S,
                   "both edges to see 4 sold")

        relay.cut()  # mid-sale: each edge keeps selling from its own allowance
        for node in (edge1, edge2):
            sold[node] += [_sell(node, drop_id) for _ in range(3)]
            refused = node.cli("drop", "reserve", drop_id, check=False)
            assert refused.returncode != 0 and b"allowance is used up" in refused.stderr
        assert _tally(edge1, drop_id)["sold"] == 7 and _tally(edge2, drop_id)["sold"] == 7  # each sees its own

        relay.heal()
        wait_until(lambda: all(_tally(n, drop_id)["sold"] == 10 for n in (edge1, edge2)), 90,
                   "both edges to see the exact tally after healing")
        final1, final2 = _tally(edge1, drop_id), _tally(edge2, drop_id)
        assert final1 == final2
        assert (final1["sold"], final1["reserved"], final1["left"]) == (10, 0, 0)
        assert final1["per_node"][edge1.node_id]["sold"] == final1["per_node"][edge2.node_id]["sold"] == 5
        assert len({code for codes in sold.values() for code in codes}) == 10
    finally:
        stop_all([org, edge1, edge2])
        if relay is not None:
            relay.close()


def test_the_phone_page_reserves_and_the_pos_marks_paid(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    http_port = free_port()
    made = org.json("drop", "create", "Tee", "--stock", "6", "--price", "20EUR",
                    "--pay-url", "https://pay.example/p/{order}", "--alloc", f"{edge.node_id}=3")
    drop_id = made["id"]
    token = org.cli("crew-token").stdout.decode().strip().split()[-1]
    phone = HttpClient(http_port)
    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address, "--http", f"127.0.0.1:{http_port}")
        wait_until(lambda: phone.get(f"/api/drops/{drop_id}")[0] == 200, CONVERGE_S, "the edge to serve the drop")
        status, _, body = phone.request("GET", f"/drop/{drop_id}", {"Accept": "text/html"})
        html = body.decode()
        assert status == 200 and "Tee" in html and "About 6 left." in html  # spread over org and edge
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
        status, headers, _ = phone.request("POST", f"/drop/{drop_id}/reserve",
                                           {"Content-Type": "application/x-www-form-urlencoded"},
                                           urlencode({"csrf": csrf}).encode())
        assert status == 303, f"reserve redirects to the order: {status} {_!r}"
        location = headers["location"]
        code = location.rsplit("=", 1)[1]
        status, _, body = phone.request("GET", location, {"Accept": "text/html"})
        assert status == 200 and code in body.decode() and "<svg" in body.decode()
        assert f"https://pay.example/p/{code}" in body.decode()

        status, kind, live = first_event(http_port, {}, f"/drop/{drop_id}/updates?order={code}")
        assert status == 200 and kind.startswith("text/event-stream")
        assert live == {"left": "About 5 left.", "open": True, "status": "reserved"}  # what the page follows
        assert first_event(http_port, {}, f"/drop/{drop_id}/updates")[2]["status"] == ""

        status, _, body = phone.request("POST", f"/api/drops/{drop_id}/reserve")
        api_order = json.loads(body)
        assert status == 200 and {"order", "expires", "pay_url"} <= set(api_order)
        assert phone.request("POST", f"/api/drops/{drop_id}/sell", {"Content-Type": "application/json"},
                             json.dumps({"order": code}).encode())[0] == 403  # crew only
        status, _, body = phone.request("POST", f"/api/drops/{drop_id}/sell",
                                        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                                        json.dumps({"order": code}).encode())
        assert status == 200 and json.loads(body)["status"] == "paid", body
        status, _, body = phone.request("POST", f"/api/drops/{drop_id}/sell",
                                        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                                        json.dumps({"order": "ZZZZZZ"}).encode())
        assert status == 409 and b"no order ZZZZZZ" in body
        wait_until(lambda: _tally(org, drop_id)["sold"] == 1, CONVERGE_S, "the organizer to see the sale")
        status, _, body = phone.request("POST", f"/api/drops/{drop_id}/reserve")  # 3rd from this address
        assert status == 200
        status, _, body = phone.request("POST", f"/api/drops/{drop_id}/reserve")
        assert status == 409 and b"too many reservations" in body
        assert phone.get("/api/drops/aaaaaaaaaaaaaaaa")[0] == 404
    finally:
        stop_all([org, edge])


def _orders_made(node: Node, drop_id: str, count: int, sold: list[str]) -> None:
    """Reserve and sell `count` units at `node`, one CLI pair each, appending each paid code."""
    for _ in range(count):
        sold.append(_sell(node, drop_id))


def test_a_box_killed_mid_sale_loses_no_sale_and_rebalancing_never_oversells(tmp_path: Path) -> None:
    """edge 1 runs low and asks; edge 2's running agent answers from its spare units in a state-file
    transaction, while edge 2's own till keeps selling (a unit is never both given and sold). Then
    kill -9: edge 2's agent dies mid-sale and a `drop reserve` is killed mid-write. After the restart
    nothing recorded is lost, and selling out gives exactly the stock everywhere, with no void order."""
    org, (edge1, edge2) = make_mesh(tmp_path, 2)
    stock = 14
    made = org.json("drop", "create", "Zine", "--stock", str(stock), "--price", "8EUR",
                    "--alloc", f"{edge1.node_id}=2", "--alloc", f"{edge2.node_id}={stock - 2}")
    drop_id, sold = made["id"], []
    nodes = [org, edge1, edge2]
    try:
        org.start("--no-mdns")
        for edge in (edge1, edge2):
            edge.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: all(_tally(n, drop_id) for n in nodes), CONVERGE_S, "every node to see the drop")

        till = threading.Thread(target=_orders_made, args=(edge2, drop_id, 3, sold))
        till.start()  # edge 2 sells while it answers edge 1's request
        sold.append(_sell(edge1, drop_id))  # leaves edge 1 one unit: it asks for more by itself
        wait_until(lambda: _tally(edge1, drop_id)["per_node"][edge1.node_id]["credit"] > 2, CONVERGE_S,
                   "edge 2's agent to answer edge 1's request")
        till.join()
        given = _tally(edge2, drop_id)["per_node"][edge2.node_id]["given"]
        assert 0 < given <= (stock - 2 - 3 + 1) // 2 + 1, "it gives at most half of what it has spare"
        assert "drop.order" in edge2.log()  # each order is an event (and an outbox row)

        _orders_made(edge2, drop_id, 1, sold)
        writer = subprocess.Popen([sys.executable, "-m", "mesh", "--home", str(edge2.home), "drop", "reserve",
                                   drop_id, "--hold", "2s", "--json"], env=mesh_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # mid-write, or just after it: either way nothing may be half-recorded
        os.kill(writer.pid, signal.SIGKILL)
        edge2.stop(signal.SIGKILL)  # the agent dies mid-sale
        writer.wait()
        edge2.start("--no-mdns", "--peer", org.address)

        time.sleep(2.5)  # the killed writer's hold (if it was recorded) has lapsed
        for edge in (edge1, edge2):
            while True:
                result = edge.cli("drop", "reserve", drop_id, "--json", check=False)
                if result.returncode != 0:
                    assert b"allowance is used up" in result.stderr, result.stderr
                    break
                code = json.loads(result.stdout)["order"]
                assert edge.json("drop", "sell", drop_id, "--order", code)["status"] == "paid"
                sold.append(code)
        wait_until(lambda: all(_tally(n, drop_id)["sold"] == len(sold) for n in nodes), CONVERGE_S,
                   "every node to see every sale")
        finals = [_tally(n, drop_id) for n in nodes]
        assert finals[0] == finals[1] == finals[2]
        assert len(set(sold)) == len(sold) <= stock
        assert all(row["void"] == 0 for row in finals[0]["per_node"].values()), finals[0]
        left_over = sum(row["left"] for row in finals[0]["per_node"].values())
        assert finals[0]["sold"] + left_over == stock and finals[0]["reserved"] == 0
        assert left_over <= 1, "only a unit too small to give away may stay unsold at a box"
    finally:
        stop_all(nodes)
