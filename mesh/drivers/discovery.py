"""mDNS / DNS-SD discovery: announce this node and find nodes of the same mesh on the LAN.

Theory of operation:

- A box waiting to be admitted (mesh.drivers.pairing) announces the same service with
  `mh` = PENDING_MESH_HASH and browses nothing: it says only that it waits. Members report such
  announcements as `Discovered(pending=True)` (the crew's Pending list), never as peers to dial.
- We register one `_assetmesh._tcp.local.` service. Its instance label and host name are the node
  id (52 base32 characters fit a 63-byte DNS label); the SRV record carries our listening port; the
  TXT record carries exactly `v` (protocol version), `node` (node id) and `mh` (`mesh_hash`: 16 hex
  characters of a domain-separated BLAKE3 of the mesh id). No event name, no human name, no
  personal data ever goes on the air (DESIGN §4).
- zeroconf runs its own asyncio loop in its own thread; its plain methods are thread-safe and may
  block, so the trio side calls them through `trio.to_thread.run_sync`. The `ServiceBrowser` calls
  us from its own thread; that callback only hands `(name, change)` to the trio thread with
  `trio.from_thread.run_sync` and returns.
- Resolver tasks (a fixed pool; a name always goes to the same one, so events for one service stay
  in order) turn names into `ServiceInfo` in a worker thread with a timeout, check every field
  (it is untrusted input) and send a `Discovered` for each new or changed peer of our mesh.
- Every queue is bounded and every hand-off is `*_nowait`: when the consumer is slow we drop and
  log; zeroconf tells us again on the next change or re-announce.
- Cancellation (shutdown) cancels the browser, unregisters the service (goodbye packets, so peers
  see us leave at once) and closes zeroconf, shielded and with a deadline.
"""

from __future__ import annotations

import ipaddress
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import blake3
import ifaddr
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from mesh.errors import MeshError, UsageError
from mesh.ids import parse_node_id

log = logging.getLogger("mesh.discovery")

SERVICE_TYPE = "_assetmesh._tcp.local."
PROTOCOL_VERSION = 1
MESH_HASH_CONTEXT = b"assetmesh/mdns/v1\x00"
MESH_HASH_HEX_CHARS = 16
PROTOCOL_VERSION_MAX = 0xFFFF
PENDING_MESH_HASH = "0" * MESH_HASH_HEX_CHARS  # what a box waiting to be admitted announces

RESOLVERS_MAX = 4  # resolver tasks, each resolving one service at a time
RESOLVE_QUEUE_EVENTS_MAX = 64  # per resolver; more browser events are dropped (and logged)
RESOLVE_TIMEOUT_MS = 3000
PEERS_MAX = 256  # services remembered at once; further ones are ignored until some leave
PEER_ADDRESSES_MAX = 16
SHUTDOWN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Discovered:
    """A node of our mesh that announced itself on the LAN."""

    node_id: str  # the peer's node id (its Ed25519 public key, base32); still to be authenticated
    mesh_hash: str  # `mesh_hash` of the mesh it claims, equal to ours
    addresses: tuple[str, ...]  # its A/AAAA addresses (IPv6 link-local with %scope), as announced
    port: int  # its listening TCP port, from the SRV record
    protocol_version: int  # the `v` it announced; the caller decides what it can speak
    pending: bool = False  # a fresh box waiting to be admitted (not a member: never dialed as a peer)


def mesh_hash(mesh_id: str) -> str:
    """The mesh tag we announce: lets peers match meshes without revealing the mesh id."""
    digest = blake3.blake3(MESH_HASH_CONTEXT + mesh_id.encode()).hexdigest()
    return digest[:MESH_HASH_HEX_CHARS]


def instance_name(node_id: str) -> str:
    """The DNS-SD service instance name announcing `node_id`."""
    return f"{node_id}.{SERVICE_TYPE}"


async def run_discovery(
    *,
    node_id: str,
    mesh_id: str | None,
    port: int,
    interfaces: list[str] | None,
    found: trio.MemorySendChannel | None,
    lost: trio.MemorySendChannel | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce us and report same-mesh peers, and boxes waiting to be admitted (`pending`), into
    `found` (node ids that leave into `lost`). With `mesh_id=None` (a waiting box) only announce.

    `interfaces=None` uses every IPv4 interface; a list of addresses restricts mDNS to those. Runs
    until cancelled; `task_status.started()` fires once we are registered and browsing. The
    channels stay open: they belong to the caller.
    """
    chosen = _checked_interfaces(interfaces)
    ours_hash = PENDING_MESH_HASH if mesh_id is None else mesh_hash(mesh_id)
    ours = _our_service_info(node_id, ours_hash, port, _advertised_addresses(chosen))
    zc = await trio.to_thread.run_sync(_open_zeroconf, chosen)
    try:
        await _register(zc, node_id, ours)
        if mesh_id is None or found is None:
            task_status.started()
            await trio.sleep_forever()
        peers = _Peers(node_id, ours_hash, found, lost)
        await _browse(zc, peers, task_status)
    finally:
        deadline = trio.current_time() + SHUTDOWN_TIMEOUT_S
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            await trio.to_thread.run_sync(_withdraw, zc, ours, abandon_on_cancel=True)
            log.info("mdns.unregistered node=%s", node_id)
        if scope.cancelled_caught:
            log.warning("mdns.unregister_timeout node=%s", node_id)


async def _register(zc: Zeroconf, node_id: str, ours: ServiceInfo) -> None:
    try:
        await trio.to_thread.run_sync(zc.register_service, ours)
    except NonUniqueNameException:
        raise MeshError("another agent with this node id is already announced on the LAN") from None
    addrs = ",".join(ours.parsed_addresses())
    log.info("mdns.registered node=%s port=%d addrs=%s", node_id, ours.port, addrs)


async def _browse(zc: Zeroconf, peers: _Peers, task_status: trio.TaskStatus[None]) -> None:
    """Run the browser and the resolvers until cancelled."""
    channels = [
        trio.open_memory_channel[tuple](RESOLVE_QUEUE_EVENTS_MAX) for _ in range(RESOLVERS_MAX)
    ]
    senders = [send for send, _ in channels]
    on_change = partial(_on_browser_event, trio.lowlevel.current_trio_token(), senders)
    async with trio.open_nursery() as nursery:
        for _, receive in channels:
            nursery.start_soon(_resolve_loop, zc, receive, peers)
        browser = await trio.to_thread.run_sync(
            partial(ServiceBrowser, zc, SERVICE_TYPE, handlers=[on_change])
        )
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_TIMEOUT_S):
                await trio.to_thread.run_sync(browser.cancel, abandon_on_cancel=True)
            for send in senders:
                send.close()


def _on_browser_event(
    token: trio.lowlevel.TrioToken,
    senders: list[trio.MemorySendChannel],
    zeroconf: Zeroconf,
    service_type: str,
    name: str,
    state_change: ServiceStateChange,
) -> None:
    """Runs in zeroconf's browser thread: hand the event to the trio thread and return."""
    send = senders[zlib.crc32(name.lower().encode()) % len(senders)]
    try:
        trio.from_thread.run_sync(_offer, send, (name, state_change), trio_token=token)
    except trio.RunFinishedError:
        pass


def _offer(send: trio.MemorySendChannel, event: tuple[str, ServiceStateChange]) -> None:
    try:
        send.send_nowait(event)
    except trio.WouldBlock:
        log.warning("mdns.event_dropped name=%s change=%s", event[0], event[1].name)
    except trio.ClosedResourceError:
        pass


async def _resolve_loop(zc: Zeroconf, receive: trio.MemoryReceiveChannel, peers: _Peers) -> None:
    async for name, state_change in receive:
        if state_change is ServiceStateChange.Removed:
            peers.forget(name)
            continue
        info = await trio.to_thread.run_sync(_resolve, zc, name, abandon_on_cancel=True)
        if info is None:
            log.info("mdns.resolve_timeout name=%s", name)
            continue
        peers.consider(name, info)


def _resolve(zc: Zeroconf, name: str) -> ServiceInfo | None:
    """Blocking: the service's SRV, TXT and addresses (from cache, else by asking)."""
    try:
        return zc.get_service_info(SERVICE_TYPE, name, timeout=RESOLVE_TIMEOUT_MS)
    except Exception as exc:  # a closing zeroconf or a malformed name must not kill a resolver
        log.info("mdns.resolve_failed name=%s reason=%s", name, exc)
        return None


class _Peers:
    """The services we have reported, so we report changes once and can say who left."""

    def __init__(
        self,
        node_id: str,
        our_mesh_hash: str,
        found: trio.MemorySendChannel,
        lost: trio.MemorySendChannel | None,
    ) -> None:
        self._node_id = node_id
        self._mesh_hash = our_mesh_hash
        self._found = found
        self._lost = lost
        self._known: dict[str, Discovered] = {}

    def consider(self, name: str, info: ServiceInfo) -> None:
        """A service resolved: report it if it is a new or changed peer of our mesh."""
        peer = parse_announcement(name, info)
        if isinstance(peer, str):
            log.info("mdns.rejected name=%s reason=%s", name, peer)
            return
        if peer.mesh_hash == PENDING_MESH_HASH:
            peer = Discovered(peer.node_id, peer.mesh_hash, peer.addresses, peer.port, peer.protocol_version, True)
        elif peer.mesh_hash != self._mesh_hash or peer.node_id == self._node_id:
            return
        key = name.lower()
        if self._known.get(key) == peer:
            return
        if key not in self._known and len(self._known) >= PEERS_MAX:
            log.warning("mdns.peers_full node=%s", peer.node_id)
            return
        self._known[key] = peer
        log.info("mdns.peer_found node=%s addrs=%s port=%d v=%d", peer.node_id,
                 ",".join(peer.addresses), peer.port, peer.protocol_version)  # fmt: skip
        _send_nowait(self._found, peer, peer.node_id)

    def forget(self, name: str) -> None:
        """A service said goodbye or expired."""
        peer = self._known.pop(name.lower(), None)
        if peer is None:
            return
        log.info("mdns.peer_lost node=%s", peer.node_id)
        if self._lost is not None:
            _send_nowait(self._lost, peer.node_id, peer.node_id)


def _send_nowait(channel: trio.MemorySendChannel, value: object, node_id: str) -> None:
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        log.warning("mdns.report_dropped node=%s", node_id)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass


def parse_announcement(name: str, info: ServiceInfo) -> Discovered | str:
    """Check an untrusted resolved service; a `Discovered`, or the reason it is not one."""
    props = info.properties
    node = _text(props.get(b"node"))
    try:
        node_id = parse_node_id(node or "")
    except ValueError:
        return "bad node id"
    if name.lower() != instance_name(node_id):
        return "instance name does not match node id"
    hash_text = _text(props.get(b"mh")) or ""
    if len(hash_text) != MESH_HASH_HEX_CHARS or hash_text.strip("0123456789abcdef"):
        return "bad mesh hash"
    version = _text(props.get(b"v")) or ""
    if not version.isdecimal() or int(version) > PROTOCOL_VERSION_MAX:
        return "bad protocol version"
    if info.port is None or not 0 < info.port < 65536:
        return "bad port"
    addresses = tuple(info.parsed_scoped_addresses()[:PEER_ADDRESSES_MAX])
    if not addresses:
        return "no address"
    return Discovered(node_id, hash_text, addresses, info.port, int(version))


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _our_service_info(
    node_id: str, our_mesh_hash: str, port: int, addresses: list[str]
) -> ServiceInfo:
    parse_node_id(node_id)
    if not 0 < port < 65536:
        raise UsageError(f"cannot announce port {port}")
    properties = {"v": str(PROTOCOL_VERSION), "node": node_id, "mh": our_mesh_hash}
    return ServiceInfo(
        SERVICE_TYPE,
        instance_name(node_id),
        port=port,
        properties=properties,
        server=f"{node_id}.local.",
        parsed_addresses=addresses,
    )


def _checked_interfaces(interfaces: Sequence[str] | None) -> list[str] | None:
    """The `--mdns-interface` addresses, normalised; None stays None (all interfaces)."""
    if interfaces is None:
        return None
    if not interfaces:
        raise UsageError("mDNS needs at least one interface address")
    return [_checked_address(text) for text in interfaces]


def _checked_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"--mdns-interface wants an IP address, not {text!r}") from None


def _advertised_addresses(interfaces: list[str] | None) -> list[str]:
    """The addresses we announce: the chosen ones, else every IPv4 address but loopback's."""
    if interfaces is not None:
        return interfaces
    found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if ip.is_IPv4]
    outside = [addr for addr in found if not ipaddress.ip_address(addr).is_loopback]
    return sorted(set(outside or found))


def _open_zeroconf(interfaces: list[str] | None) -> Zeroconf:
    """Blocking: open the multicast sockets and start zeroconf's loop thread."""
    if interfaces is None:
        return Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
    return Zeroconf(interfaces=list(interfaces))


def _withdraw(zc: Zeroconf, ours: ServiceInfo) -> None:
    """Blocking: say goodbye for our service, then close zeroconf (threads and sockets)."""
    try:
        zc.unregister_service(ours)
    except Exception as exc:  # still close, so sockets and threads never leak
        log.warning("mdns.unregister_failed reason=%s", exc)
    finally:
        zc.close()



def discovery_for(home, config):  # (mesh.drivers.home.Home, mesh.config.AgentConfig)
    """The agent's `discovery` task for this home: announce and browse its mesh (mDNS)."""
    interfaces = list(config.mdns_interfaces) or None

    async def discovery(found, port: int, lost=None) -> None:
        await run_discovery(node_id=home.info.node_id, mesh_id=home.info.mesh_id, port=port,
                            interfaces=interfaces, found=found, lost=lost)

    return discovery
