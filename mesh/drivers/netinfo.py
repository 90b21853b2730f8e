"""What the host says about its network link (Linux sysfs and procfs; elsewhere: nothing)."""

from __future__ import annotations

from pathlib import Path

SYS_NET = Path("/sys/class/net")
PROC_ROUTE = Path("/proc/net/route")


def wireless_route(sys_net: Path = SYS_NET, route: Path = PROC_ROUTE) -> bool:
    """True if the interface of the default route is a Wi-Fi interface; False if wired or unknown."""
    try:
        lines = route.read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":  # destination 0.0.0.0: the default route
            interface = sys_net / fields[0]
            return (interface / "wireless").exists() or (interface / "phy80211").exists()
    return False
