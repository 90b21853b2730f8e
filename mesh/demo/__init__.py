"""`mesh demo`: sample assets made in code, and three nodes on loopback."""
