"""Real processes: two edges sell a drop of 10 (5 each); the link between them is cut mid-sale, both
keep selling from their own allowance (and refuse a sixth), and after healing both show the exact
tally: 10 sold, 5 at each, never 11. Then the phone page and JSON API on an edge: the page shows
what is left, reserving gives an order code and a QR, the POS marks it paid with a crew token.

The edges listen on 127.0.0.2 and 127.0.0.3 and reach each other only through a relay on 127.0.0.1
that the test can cut (an address a peer tells the other names 127.0.0.1, where nothing listens)."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlencode

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
        assert status == 303, "reserve redirects to the order"
        location = headers["location"]
        code = location.rsplit("=", 1)[1]
        status, _, body = phone.request("GET", location, {"Accept": "text/html"})
        assert status == 200 and code in body.decode() and "<svg" in body.decode()
        assert f"https://pay.example/p/{code}" in body.decode()

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
