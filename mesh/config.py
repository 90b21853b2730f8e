"""Frozen configuration: the limits and timings every layer reads, with units in the names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 7450
INGEST_EXCLUDE_DEFAULT = (  # names a camera, browser or FTP server uses while a file is unfinished
    "*.part", "*.partial", "*.tmp", "*.temp", "*.crdownload", "*.download", "*.filepart", "*.swp", "*~",
    "~*", "Thumbs.db", "desktop.ini",
)


@dataclass(frozen=True)
class CoreLimits:
    """Timings and bounds of the protocol engine."""

    hello_timeout_s: float = 10.0  # a session that sends no valid Hello by then is closed
    ping_interval_s: float = 15.0  # Ping a peer not heard from this long (TCP loses no Ping: two chances per timeout)
    peer_timeout_s: float = 30.0  # close a session that has sent nothing for this long (Syncthing: 5 min)
    dial_backoff_min_s: float = 1.0  # first retry delay after a failed dial
    dial_backoff_max_s: float = 60.0  # retry delay cap
    dial_grace_s: float = 2.0  # the larger node id waits this long before dialing a discovery
    dials_inflight_max: int = 16  # concurrent dials
    sessions_max: int = 256  # concurrent sessions (ready or not)
    addresses_max: int = 4096  # entries in the address book
    addresses_per_node_max: int = 8  # addresses kept per node
    pex_peers_max: int = 64  # addresses sent in one peer-exchange message
    state_flush_s: float = 0.05  # batch persisting and offering state changes this long
    state_sync_bytes_max: int = 64 * 1024 * 1024  # one reassembled state sync message
    receive_buffer_bytes_max: int = 4 * 1024 * 1024  # undecoded bytes buffered per session


@dataclass(frozen=True)
class Probe:
    """A user check of something the event depends on (camera, audio bridge, UPS, a drive)."""

    name: str  # shown in health reports and `mesh doctor`
    kind: str  # "http" (status < 400), "tcp" (connects), "path" (exists) or "command" (exits 0)
    target: str  # the URL, HOST:PORT, path, or command line (split like a shell, never run by one)
    timeout_s: float = 5.0  # a probe that takes longer fails


@dataclass(frozen=True)
class HealthConfig:
    """Thresholds and timings of the periodic health checks (and `mesh doctor`)."""

    interval_s: float = 30.0  # how often the agent runs every check and publishes a report
    disk_free_bytes_min: int = 512 * 1024 * 1024  # less free space under the home fails
    sample_chunks: int = 8  # stored chunks re-hashed per run (a rolling sample)
    peers_min: int = 0  # fewer connected peers fails
    clock_skew_s_max: float = 5.0  # a peer's clock further off than this fails
    connect_timeout_s: float = 3.0  # TCP connect to each static peer
    probes: tuple[Probe, ...] = ()  # user probes, run in order


@dataclass(frozen=True)
class IngestRule:
    """A folder (a camera's card, an FTP drop) whose complete files are imported as assets."""

    path: Path  # the folder, watched recursively
    tags: tuple[str, ...] = ()  # canonical tags given to every file imported
    subject: str | None = None  # a canonical subject code given to every file imported
    subject_pattern: str | None = None  # regex with a group named `subject`, searched in the file name
    retention_s: float | None = None  # keep the assets this long (as `mesh add --retention`); None: keep
    settle_s: float = 2.0  # a file is complete once its size and mtime have not changed for this long
    include: tuple[str, ...] = ()  # glob patterns of file names to import; empty: every name
    exclude: tuple[str, ...] = INGEST_EXCLUDE_DEFAULT  # glob patterns of names skipped (dotfiles always are)


MEDIUM_KINDS = ("auto", "wired", "wireless")


@dataclass(frozen=True)
class TopologyConfig:
    """What this box knows of its link to the mesh (the `[topology]` table)."""

    medium: str = "auto"  # "wireless": a station of a shared medium (Wi-Fi); "wired"; "auto": ask the interface

    def shared_medium(self, interface_wireless: bool) -> bool:
        """Whether to declare a shared medium, given what the interface says (Linux:
        /sys/class/net/IF/wireless or IF/phy80211 exists for the interface of the mesh's route)."""
        if self.medium == "auto":
            return interface_wireless
        return self.medium == "wireless"


@dataclass(frozen=True)
class AgentConfig:
    """What `mesh up` was asked to do (from flags and --config)."""

    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)  # where to accept sessions
    http: tuple[str, int] | None = None  # where to serve HTTP, if anywhere
    http_hosts: tuple[str, ...] = ()  # names besides its own and IP addresses the HTTP side answers to
    https: tuple[str, int] | None = None  # where to serve HTTPS with the event's certificate (mesh tls set)
    peers: tuple[tuple[str, int], ...] = ()  # static peers, always (re)dialed
    mdns: bool = True  # announce and browse with mDNS
    mdns_interfaces: tuple[str, ...] = ()  # restrict mDNS to these interface addresses; empty: all
    state_poll_interval_s: float = 0.1  # how often to look for changes written by CLI commands (a stat and a lock)
    status_interval_s: float = 1.0  # how often to refresh the status file
    gc_interval_s: float = 60.0  # how often to purge what consent, retention and releases let go
    outbox_frames_max: int = 256  # frames queued per connection before it is closed as too slow
    events_max: int = 1024  # events queued for the core
    limits: CoreLimits = CoreLimits()  # protocol engine bounds
    health: HealthConfig = HealthConfig()  # periodic health checks
    outbox_url: str | None = None  # uplink webhook: the outbox POSTs queued items here
    pin_releases: tuple[str, ...] = ()  # release ids or names kept besides the current release
    pin_tags: tuple[str, ...] = ()  # canonical tags whose originals this box keeps (besides `mesh pin`)
    pin_canonical: bool | None = None  # keep the originals of every canonical tag; None: on edges only
    store_budget_bytes: int | None = None  # how much the store may hold; None: store_budget_fraction
    store_quota_bytes: int | None = None  # a hard cap (a hub's per-mesh quota): a release past it is not fetched
    store_budget_fraction: float = 0.5  # ... of the disk (the store's bytes plus the free space)
    outbox_backoff_s_min: float = 1.0  # first retry delay of a failed outbox delivery
    outbox_backoff_s_max: float = 300.0  # retry delay cap
    ingest: tuple[IngestRule, ...] = ()  # folders the agent imports from ([[ingest]] tables)
    enroll: str | None = None  # a fresh box's fleet key (the key, or a file's path); see mesh.drivers.enroll
    topology: TopologyConfig = TopologyConfig()  # its link to the mesh: Wi-Fi stations ask wired peers first
