"""Ports for agents a test, a bench or `mesh demo` starts next: free, and out of the kernel's way."""

from __future__ import annotations

import socket

from mesh.drivers.tcp import PORT_RANGE_FILE, free_port


def test_picked_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ephemeral_low = int(PORT_RANGE_FILE.read_text().split()[0]) if PORT_RANGE_FILE.exists() else 32768
    ports = [free_port("127.0.0.1") for _ in range(40)]
    assert len(set(ports)) == len(ports)  # never the same port twice before its listener binds it
    assert all(port < ephemeral_low for port in ports)  # no outgoing connection is given one
    for port in ports:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen()

