"""The scenarios: each builds a World, runs the production cores, and returns its figures.

Every scenario is a function of its parameters and seed only; the figures hold virtual times and
byte counts (never wall time), so the same seed gives the same JSON bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from mesh.state import consent
from mesh.state.records import AssetRecord
from mesh.testing.content import ReleaseContent, build_release, random_files, seed_and_publish
from mesh.testing.netmodel import connected, mbit, random_k_out
from mesh.testing.sim import World
from simulations import checks
from simulations.measure import (
    ChangeTracker, ChunkDeliveries, chunk_traffic, completion_times, distribution_bound, eccentricity,
    gossip_bound_rounds, parts_bound_s, spread,
)
from simulations.mesh_setup import (
    Placement, discover_edges, new_world, populate, sessions_up, settle,
)

MIB = 1024 * 1024
CONNECT_TIMEOUT_S = 120.0
SUBJECT_SCOPE = "photo"


# ---- shared pieces ---------------------------------------------------------------------------------


def release_content(seed: int, release_mb: float, files: int, label: str = "") -> ReleaseContent:
    """`files` incompressible files (a video or two) of `release_mb` MiB in total (`label` draws
    other bytes: another creator's release)."""
    rng = random.Random(f"{seed}/release{label}")
    each = max(1, int(release_mb * MIB) // files)
    if each <= 64 * MIB:
        return build_release(random_files(rng, files, each, each, "media"))
    pieces = [(each // (64 * MIB)) * [64 * MIB] + [each % (64 * MIB)] for _ in range(files)]
    # Random.randbytes stops below 256 MiB: a big file is drawn in 64 MiB pieces
    return build_release({f"media-{i:03d}.bin": b"".join(rng.randbytes(n) for n in sizes) for i, sizes in enumerate(pieces)})


def topology(seed: int, names: list[str], degree: int) -> dict[str, list[str]]:
    """A connected random k-out discovery graph (re-drawn until connected)."""
    for attempt in range(100):
        edges = random_k_out(names, degree, random.Random(f"{seed}/topology/{attempt}"))
        if connected(edges):
            return edges
    raise ValueError(f"no connected {degree}-out graph on {len(names)} nodes")


def all_complete(release_id: str, names: list[str]) -> Callable[[World], bool]:
    def done(world: World) -> bool:
        for name in names:
            core = world.nodes[name].core
            if core is None or core.release is None or core.release.id != release_id:
                return False
            if core.swarm is None or not core.swarm.complete:
                return False
        return True
    return done


def await_release(world: World, release_id: str, receivers: list[str], bound: dict[str, float],
                  ratio_max: float | None, allowance_s: float, started: float) -> None:
    """Run until every receiver holds the release; with `ratio_max`, give up (loudly) once the
    run is past `ratio_max` times its lower bound."""
    done = all_complete(release_id, receivers)
    if ratio_max is None:
        settle(world, done, 50 * bound["bound_s"] + allowance_s, "release complete", 1.0)
        return
    limit = started + ratio_max * bound["bound_s"]
    while not done(world):
        if world.now >= limit:
            checks.require_ratio(world, (world.now - started) / bound["bound_s"], ratio_max, "distribution")
        world.run_for(min(1.0, max(0.001, limit - world.now)))


def distribution_figures(world: World, content: ReleaseContent, release_id: str, started: float,
                         receivers: list[str], seeds: set[str], bound: dict[str, float],
                         deliveries: ChunkDeliveries, ratio_max: float | None) -> dict:
    times = completion_times(world, release_id, started, receivers)
    missing = [n for n in receivers if n not in times]
    if missing:
        raise world.fail(f"release never completed on {missing[:5]}")
    took = max(times.values())
    figures = {
        "release_bytes": content.chunk_bytes, "chunks": len(content.chunks), "receivers": len(receivers),
        "completion_s": spread(list(times.values())), "completion_times": sorted(times.values()),
        **chunk_traffic(world, seeds),
        "duplicate_chunk_deliveries": deliveries.duplicates(), "bound": bound,
        "ratio_to_bound": took / bound["bound_s"],
    }
    checks.require_ratio(world, figures["ratio_to_bound"], ratio_max, "distribution")
    world.check_stores()
    return figures


def sim_figures(world: World) -> dict:
    return {"events": world.steps, "virtual_s": world.elapsed, "nodes": len(world.nodes),
            "busy_ticks": world.busy_ticks}


def publish_and_track(world: World, content: ReleaseContent, name: str) -> tuple[str, ChangeTracker, float]:
    release_id = seed_and_publish(world, "seed", content, name)
    return release_id, ChangeTracker.start(world, "seed"), world.now


def state_figures(tracker: ChangeTracker, nodes: int) -> dict:
    figures = tracker.figures()
    bound = gossip_bound_rounds(nodes)
    figures.update({"gossip_bound_rounds": bound, "rounds_ratio_to_bound": figures["rounds"] / bound if bound else 0.0})
    return figures


# ---- venue: one access point, a wired seed, a big release ------------------------------------------


def venue(seed: int = 7, nodes: int = 40, release_mb: float = 512, wifi_mbit: float = 200,
          seed_mbit: float = 1000, files: int = 1, ratio_max: float | None = None,
          medium_hint: bool = True) -> dict:
    """An edge box wired to the venue's access point seeds a release to N-1 Wi-Fi stations (which
    know they are on Wi-Fi and say so, unless `medium_hint` is False)."""
    world = new_world(seed)
    world.media_declared = medium_hint
    airtime = mbit(wifi_mbit)
    world.net.add_medium("ap", airtime)
    places = [Placement("seed", "organizer", mbit(seed_mbit), mbit(seed_mbit))]
    places += [Placement(f"edge-{i:03d}", medium="ap") for i in range(nodes - 1)]
    populate(world, places)
    world.discover_all()
    settle(world, lambda w: w.all_connected(), CONNECT_TIMEOUT_S, "everyone connected")
    content = release_content(seed, release_mb, files)
    receivers = [p.name for p in places[1:]]
    size = content.chunk_bytes
    bound = distribution_bound(size, len(receivers), mbit(seed_mbit), airtime, len(receivers) * airtime,
                               {"airtime (N-1)*F/W": len(receivers) * size / airtime})
    deliveries = ChunkDeliveries(world)
    release_id, tracker, started = publish_and_track(world, content, "venue")
    await_release(world, release_id, receivers, bound, ratio_max, 300, started)
    return {
        "scenario": "venue",
        "params": {"seed": seed, "nodes": nodes, "release_mb": release_mb, "wifi_mbit": wifi_mbit,
                   "seed_mbit": seed_mbit, "files": files, "medium_hint": medium_hint},
        "distribution": distribution_figures(world, content, release_id, started, receivers, {"seed"}, bound,
                                             deliveries, ratio_max),
        "state": state_figures(tracker, nodes),
        "airtime_bytes": world.net.media["ap"].bytes_total,
        "sim": sim_figures(world),
    }


# ---- coop: hubs linked over a WAN, venues behind them ------------------------------------------------


def coop(seed: int = 7, hubs: int = 20, nodes_per_hub: int = 25, wan_mbit: float = 20, wifi_mbit: float = 200,
         release_mb: float = 64, wan_latency_ms: float = 20, wan_loss: float = 0.001, degree: int = 4,
         hub_degree: int = 3, files: int = 1, ratio_max: float | None = None, medium_hint: bool = True) -> dict:
    """Hub 0 (the seed) holds a release; every hub fetches it over its WAN link, its venue over
    Wi-Fi (stations say they are on Wi-Fi unless `medium_hint` is False)."""
    world = new_world(seed)
    world.media_declared = medium_hint
    wan, airtime = mbit(wan_mbit), mbit(wifi_mbit)
    places: list[Placement] = []
    hub_names = ["seed"] + [f"hub-{i:02d}" for i in range(1, hubs)]
    for i, hub in enumerate(hub_names):
        world.net.add_site(f"site-{i:02d}", wan, wan, wan_latency_ms / 2000, wan_loss / 2)
        world.net.add_medium(f"ap-{i:02d}", airtime)
        places.append(Placement(hub, "organizer" if i == 0 else "hub", site=f"site-{i:02d}", public=True))
        places += [Placement(f"s{i:02d}-n{j:02d}", medium=f"ap-{i:02d}", site=f"site-{i:02d}", public=False)
                   for j in range(nodes_per_hub)]
    populate(world, places)
    hub_edges = {h: [hub_names[(i + 1) % hubs]] for i, h in enumerate(hub_names)} if hubs > 1 else {hub_names[0]: []}
    extra = random_k_out(hub_names, min(hub_degree, hubs - 1), random.Random(f"{seed}/hubs"))
    for hub in hub_names:
        for other in extra[hub]:
            if other not in hub_edges[hub]:
                hub_edges[hub].append(other)
        for other in hub_edges[hub]:
            world.add_static_peer(hub, other)
    local_edges: dict[str, list[str]] = {}
    for i, hub in enumerate(hub_names):
        members = [p.name for p in places if p.site == f"site-{i:02d}" and p.name != hub]
        for name, targets in (topology(seed + i, members, min(degree, len(members) - 1)).items() if len(members) > 1
                              else [(m, []) for m in members]):
            local_edges[name] = targets + [hub]
    discover_edges(world, local_edges)
    every = {**{h: [] for h in hub_names}, **local_edges}
    settle(world, lambda w: sessions_up(w, every) and all(
        set(hub_edges[h]) <= w.nodes[h].peer_names() for h in hub_names), CONNECT_TIMEOUT_S, "everyone connected")
    content = release_content(seed, release_mb, files)
    size = content.chunk_bytes
    receivers = [p.name for p in places if p.name != "seed"]
    extra = {"airtime n*F/W": nodes_per_hub * size / airtime}
    if hubs > 1:  # hubs forward whole chunks, and the last a hub gets still has to cross its venue's air
        part = min(len(content.blocks[cid]) for cid in content.chunks)
        extra["parts F/u+floor(log2 N)c/u+n*c/W"] = (parts_bound_s(size, part, hubs - 1, wan)
                                                     + nodes_per_hub * part / airtime)
    bound = distribution_bound(size, hubs - 1, wan, wan, (hubs - 1) * wan, extra)
    deliveries = ChunkDeliveries(world)
    release_id, tracker, started = publish_and_track(world, content, "coop")
    await_release(world, release_id, receivers, bound, ratio_max, 600, started)
    wan_bytes = sum(p.bytes_total for p in world.net.wan_up.values())
    return {
        "scenario": "coop",
        "params": {"seed": seed, "hubs": hubs, "nodes_per_hub": nodes_per_hub, "wan_mbit": wan_mbit,
                   "wifi_mbit": wifi_mbit, "release_mb": release_mb, "wan_latency_ms": wan_latency_ms,
                   "wan_loss": wan_loss, "degree": degree, "hub_degree": hub_degree, "files": files,
                   "medium_hint": medium_hint},
        "distribution": distribution_figures(world, content, release_id, started, receivers, {"seed"}, bound,
                                             deliveries, ratio_max),
        "wan_bytes": wan_bytes, "wan_bytes_per_F": wan_bytes / size,
        "state": state_figures(tracker, len(places)),
        "sim": sim_figures(world),
    }


# ---- coop-multi: several creators' meshes share the hub boxes ------------------------------------------


def coop_multi(seed: int = 7, meshes: int = 3, hubs: int = 2, nodes_per_site: int = 4, release_mb: float = 8,
               wan_mbit: float = 20, wifi_mbit: float = 200, wan_latency_ms: float = 20, wan_loss: float = 0.001,
               degree: int = 3, files: int = 1, ratio_max: float | None = None, medium_hint: bool = True) -> dict:
    """`meshes` creators each publish a release from their own studio (a site behind its WAN
    link), all at once. `hubs` hub boxes, each a member of every mesh (one host: one address, one
    WAN link, one Wi-Fi access point; one core per mesh), front venues where every mesh has
    `nodes_per_site` edges on that access point. A creator's hub cores peer over the WAN; every
    box and studio also holds a foreign mesh's address (a misconfigured static peer, a neighbour's
    box on the LAN): those handshakes must fail, and no byte may cross meshes."""
    world = new_world(seed)
    world.media_declared = medium_hint
    wan, airtime = mbit(wan_mbit), mbit(wifi_mbit)
    names = [f"m{k}" for k in range(meshes)]
    for h in range(hubs):
        world.net.add_site(f"hub-site-{h}", wan, wan, wan_latency_ms / 2000, wan_loss / 2)
        world.net.add_medium(f"ap-{h}", airtime)
    plan: dict[str, list[Placement]] = {}
    for k, mesh in enumerate(names):
        world.net.add_site(f"studio-{k}", wan, wan, wan_latency_ms / 2000, wan_loss / 2)
        places = [Placement(f"{mesh}-seed", "organizer", site=f"studio-{k}", public=True)]
        for h in range(hubs):  # the box: mesh 0's core owns the host, the others run on it
            places.append(Placement(f"hub{h}-{mesh}", "hub", site=f"hub-site-{h}", public=True,
                                    host=None if k == 0 else f"hub{h}-{names[0]}"))
            places += [Placement(f"v{h}-{mesh}-n{j}", medium=f"ap-{h}", site=f"hub-site-{h}", public=False)
                       for j in range(nodes_per_site)]
        populate(world, places, world.add_mesh(mesh))
        plan[mesh] = places
    isolation = checks.MeshIsolation.install(world)  # from the first byte: handshakes and probes too
    edges = _coop_multi_edges(seed, names, hubs, plan, degree)
    for name, targets in edges.items():
        for target in targets:  # studios and hub cores: static peers; venue edges: mDNS
            (world.add_static_peer if name.startswith(("hub", "m")) else world.discover)(name, target)
    settle(world, lambda w: sessions_up(w, edges), CONNECT_TIMEOUT_S, "every mesh connected")
    _coop_multi_probes(world, names, hubs, nodes_per_site)
    contents = {mesh: release_content(seed, release_mb, files, f"/{mesh}") for mesh in names}
    size_total = sum(c.chunk_bytes for c in contents.values())
    shared = {"max F/u_studio": max(c.chunk_bytes for c in contents.values()) / wan,
              "hub downlink sum(F)/wan": size_total / wan,  # every mesh's release crosses each box's WAN link
              "airtime n*sum(F)/W": nodes_per_site * size_total / airtime}  # every venue edge hears its F
    shared["bound_s"] = max(shared.values())
    deliveries = ChunkDeliveries(world)
    started = world.now
    releases = {mesh: seed_and_publish(world, f"{mesh}-seed", contents[mesh], f"coop-{mesh}") for mesh in names}
    receivers = {mesh: [p.name for p in plan[mesh] if p.role != "organizer"] for mesh in names}
    done = [all_complete(releases[mesh], receivers[mesh]) for mesh in names]
    settle(world, lambda w: all(d(w) for d in done), 50 * shared["bound_s"] + 600, "every mesh's release complete")
    per_mesh = {mesh: _coop_multi_mesh(world, contents[mesh], releases[mesh], started, receivers[mesh], hubs,
                                       nodes_per_site, wan, airtime, shared) for mesh in names}
    isolation.require(world, {mesh: set(contents[mesh].blocks) for mesh in names}, releases)
    took = max(m["completion_s"]["max"] for m in per_mesh.values())
    checks.require_ratio(world, took / shared["bound_s"], ratio_max, "distribution")
    world.check_stores()
    box = world.net.wan_down["hub-site-0"]
    return {
        "scenario": "coop-multi",
        "params": {"seed": seed, "meshes": meshes, "hubs": hubs, "nodes_per_site": nodes_per_site,
                   "release_mb": release_mb, "wan_mbit": wan_mbit, "wifi_mbit": wifi_mbit,
                   "wan_latency_ms": wan_latency_ms, "wan_loss": wan_loss, "degree": degree, "files": files,
                   "medium_hint": medium_hint},
        "meshes": per_mesh,
        "distribution": {
            "release_bytes": size_total, "receivers": sum(len(r) for r in receivers.values()),
            "completion_s": spread([t for m in per_mesh.values() for t in m["completion_times"]]),
            "completion_times": sorted(t for m in per_mesh.values() for t in m["completion_times"]),
            **chunk_traffic(world, {f"{mesh}-seed" for mesh in names}),
            "duplicate_chunk_deliveries": deliveries.duplicates(), "bound": shared,
            "ratio_to_bound": took / shared["bound_s"],
        },
        "hub_box": {"wan_down_bytes_per_sum_F": box.bytes_total / size_total,
                    "wan_up_bytes_per_sum_F": world.net.wan_up["hub-site-0"].bytes_total / size_total},
        "isolation": isolation.figures(),
        "sim": sim_figures(world),
    }


def _coop_multi_edges(seed: int, names: list[str], hubs: int, plan: dict[str, list[Placement]],
                      degree: int) -> dict[str, list[str]]:
    """Static peers (studio -> every hub core of its mesh, hub cores of a mesh to each other) and
    each venue's mDNS graph (per mesh: a random k-out graph over its edges there, plus its hub core)."""
    edges: dict[str, list[str]] = {}
    for k, mesh in enumerate(names):
        cores = [f"hub{h}-{mesh}" for h in range(hubs)]
        edges[f"{mesh}-seed"] = list(cores)
        for h, core in enumerate(cores):
            edges[core] = cores[h + 1:]
            venue = [p.name for p in plan[mesh] if p.site == f"hub-site-{h}" and p.role == "edge"]
            graph = topology(seed + 100 * k + h, venue, min(degree, len(venue) - 1)) if len(venue) > 1 else {
                n: [] for n in venue}
            for name, targets in graph.items():
                edges[name] = targets + [core]
    return edges


def _coop_multi_probes(world: World, names: list[str], hubs: int, nodes_per_site: int) -> None:
    """Foreign addresses: each studio keeps dialing the next creator's studio (a static peer), and
    each venue edge was told of the next mesh's edge beside it on the same access point."""
    for k, mesh in enumerate(names):
        other = names[(k + 1) % len(names)]
        if other == mesh:
            return
        world.add_static_peer(f"{mesh}-seed", f"{other}-seed")
        for h in range(hubs):
            for j in range(nodes_per_site):
                world.discover(f"v{h}-{mesh}-n{j}", f"v{h}-{other}-n{j}")


def _coop_multi_mesh(world: World, content: ReleaseContent, release_id: str, started: float, receivers: list[str],
                     hubs: int, nodes_per_site: int, wan: float, airtime: float, shared: dict) -> dict:
    """One mesh's figures: completion against its own bound (alone on the boxes) and the shared one."""
    size = content.chunk_bytes
    own = distribution_bound(size, hubs, wan, wan, hubs * wan, {"airtime n*F/W": nodes_per_site * size / airtime})
    times = completion_times(world, release_id, started, receivers)
    missing = [n for n in receivers if n not in times]
    if missing:
        raise world.fail(f"release {release_id} never completed on {missing[:5]}")
    took = max(times.values())
    return {"release_bytes": size, "receivers": len(receivers), "completion_s": spread(list(times.values())),
            "completion_times": sorted(times.values()), "bound": own, "ratio_to_bound": took / own["bound_s"],
            "ratio_to_shared_bound": took / shared["bound_s"]}


# ---- gossip: one change through a sparse thousand-node mesh --------------------------------------------


def gossip(seed: int = 7, nodes: int = 1000, degree: int = 4, latency_ms: float = 2.0,
           rounds_max: float | None = None) -> dict:
    """Each node discovers `degree` random others (sessions: about 2*degree per node); one node
    changes the shared state; how many hops and how long until every replica has it."""
    world = new_world(seed, latency_s=latency_ms / 1000)
    names = ["seed"] + [f"node-{i:04d}" for i in range(nodes - 1)]
    populate(world, [Placement(n, "organizer" if n == "seed" else "edge") for n in names])
    edges = topology(seed, names, min(degree, nodes - 1))
    discover_edges(world, edges)
    connect_s = settle(world, lambda w: sessions_up(w, edges), CONNECT_TIMEOUT_S, "sessions up", 0.5)
    world.run_for(1.0)  # heads exchanged, nothing in flight
    origin = random.Random(f"{seed}/origin").choice(names)
    sessions = sum(len(world.nodes[n].peer_names()) for n in names) / nodes
    floor = eccentricity(world, origin)
    world.mutate(origin, lambda s: s.put_asset(_asset(world, origin)))
    tracker = ChangeTracker.start(world, origin)
    settle(world, lambda w: len(tracker.hops) == nodes, 60, "every replica has the change", 0.01)
    world.run_for(1.0)  # late duplicates arrive
    checks.require_converged(world)
    figures = state_figures(tracker, nodes)
    figures["eccentricity"] = floor
    checks.require_ratio(world, figures["rounds_ratio_to_bound"], rounds_max, "gossip")
    return {
        "scenario": "gossip",
        "params": {"seed": seed, "nodes": nodes, "degree": degree, "latency_ms": latency_ms},
        "topology": {"sessions_per_node": sessions, "connect_s": connect_s, "origin": origin},
        "state": figures,
        "sim": sim_figures(world),
    }


def _asset(world: World, origin: str, label: str = "") -> AssetRecord:
    from mesh.content.cid import cid_for_raw

    return AssetRecord(cid=str(cid_for_raw(f"{world.seed}/{origin}/{label}".encode())), name="poster.jpg", size=123456,
                       media_type="image/jpeg", added_at=world.now, added_by=world.nodes[origin].node_id,
                       tags=frozenset({"stage"}))


# ---- churn: nodes leave, crash and come back during a release --------------------------------------


def _consent_lan(seed: int, nodes: int, link_mbit: float, degree: int):
    """A seed and `nodes - 1` edges on a sparse LAN (every link `link_mbit`), sessions up, a consent
    ledger watching every decision, and a subject code: (world, link, names, edges, ledger, subject)."""
    world = new_world(seed)
    link = mbit(link_mbit)
    names = ["seed"] + [f"node-{i:03d}" for i in range(nodes - 1)]
    populate(world, [Placement(n, "organizer" if n == "seed" else "edge", link, link) for n in names])
    edges = topology(seed, names, min(degree, nodes - 1))
    discover_edges(world, edges)
    settle(world, lambda w: sessions_up(w, edges), CONNECT_TIMEOUT_S, "sessions up", 0.5)
    ledger = checks.ConsentLedger()
    ledger.install(world)
    subject = consent.new_subject_code(random.Random(f"{seed}/subject"))
    return world, link, names, edges, ledger, subject


def churn(seed: int = 7, nodes: int = 200, leave_rate: float = 0.3, release_mb: float = 16,
          link_mbit: float = 50, degree: int = 4, files: int = 1, ratio_max: float | None = None) -> dict:
    """A release spreads over a LAN while `leave_rate` of the nodes leave (cleanly or by crashing)
    and come back with their store intact or wiped; consent decisions are made meanwhile."""
    rng = random.Random(f"{seed}/churn")
    world, link, names, edges, ledger, subject = _consent_lan(seed, nodes, link_mbit, degree)
    content = release_content(seed, release_mb, files)
    receivers = names[1:]
    bound = distribution_bound(content.chunk_bytes, len(receivers), link, link, len(receivers) * link)
    deliveries = ChunkDeliveries(world)
    release_id, tracker, started = publish_and_track(world, content, "churn")
    window = 2 * bound["bound_s"]
    plan = _churn_plan(rng, receivers, leave_rate, window)
    plan += [(rng.uniform(0, window), "decide", rng.choice(names), i % 3 != 0) for i in range(6)]
    outcomes = _run_plan(world, sorted(plan, key=lambda p: (p[0], p[2], p[1])), started, ledger, subject)
    await_release(world, release_id, receivers, bound, ratio_max, 600, started)
    heal_s = settle(world, lambda w: w.converged(), 300, "replicas converged", 0.5)
    checks.require_converged(world)
    return {
        "scenario": "churn",
        "params": {"seed": seed, "nodes": nodes, "leave_rate": leave_rate, "release_mb": release_mb,
                   "link_mbit": link_mbit, "degree": degree, "files": files},
        "churn": outcomes,
        "distribution": distribution_figures(world, content, release_id, started, receivers, {"seed"}, bound,
                                             deliveries, ratio_max),
        "state": {**state_figures(tracker, nodes), "converged_after_churn_s": heal_s,
                  "consent_granted_at_end": consent.consent_state(world.nodes["seed"].state, subject,
                                                                  SUBJECT_SCOPE, consent.Policies())},
        "sim": sim_figures(world),
    }


def _churn_plan(rng: random.Random, names: list[str], rate: float, window: float) -> list[tuple]:
    plan = []
    for name in sorted(rng.sample(names, round(rate * len(names)))):
        at, down = rng.uniform(0, window), rng.uniform(5, 60)
        plan.append((at, rng.choice(["leave", "crash"]), name, None))
        plan.append((at + down, rng.choice(["rejoin", "rejoin-wiped"]), name, None))
    return plan


def _run_plan(world: World, plan: list[tuple], started: float, ledger: checks.ConsentLedger,
              subject: str) -> dict:
    counts = {"leave": 0, "crash": 0, "rejoin": 0, "rejoin-wiped": 0, "decide": 0}
    for at, action, name, grant in plan:
        world.run_for(max(0.0, started + at - world.now))
        handle = world.nodes[name]
        if action in ("leave", "crash") and handle.alive:
            world.leave(name) if action == "leave" else world.crash(name)
        elif action.startswith("rejoin") and not handle.alive:
            world.run_for(1.1)  # a clean leave ends its process after its grace period
            if action == "rejoin-wiped":
                world.wipe_store(name)
            world.restart(name)
        elif action == "decide" and handle.alive:
            ledger.decide(world, name, subject, SUBJECT_SCOPE, bool(grant))
        else:
            continue
        counts[action] += 1
    return counts


# ---- partition: two halves, edits on both sides, heal ----------------------------------------------------


def partition(seed: int = 7, nodes: int = 100, split: float = 0.5, heal_after: float = 600,
              release_mb: float = 16, link_mbit: float = 50, degree: int = 4, files: int = 1,
              ratio_max: float | None = None) -> dict:
    """A release starts, the mesh splits; one side revokes a consent the other side grants again
    (not having seen the revoke) and both edit tags; after the heal every replica agrees and the
    revoke stands."""
    world, link, names, edges, ledger, subject = _consent_lan(seed, nodes, link_mbit, degree)
    ledger.decide(world, "seed", subject, SUBJECT_SCOPE, True)
    settle(world, lambda w: w.converged(), 60, "grant everywhere", 0.1)
    content = release_content(seed, release_mb, files)
    receivers = names[1:]
    bound = distribution_bound(content.chunk_bytes, len(receivers), link, link, len(receivers) * link)
    deliveries = ChunkDeliveries(world)
    release_id, tracker, started = publish_and_track(world, content, "partition")
    world.run_for(min(2.0, bound["bound_s"] / 4))  # the transfer is under way
    order = names[1:]
    random.Random(f"{seed}/split").shuffle(order)
    cut = max(1, round(split * nodes)) - 1
    side_a, side_b = ["seed"] + sorted(order[:cut]), sorted(order[cut:])
    world.partition(side_a, side_b)
    split_at = world.now
    world.run_for(5.0)
    ledger.decide(world, "seed", subject, SUBJECT_SCOPE, False)  # side A revokes
    ledger.decide(world, side_b[0], subject, SUBJECT_SCOPE, True)  # side B grants, unaware of it
    for i, name in enumerate((side_a[-1], side_b[-1])):
        world.mutate(name, lambda s, i=i, name=name: s.put_asset(_asset(world, name, f"side-{i}")))
    world.run_for(max(0.0, split_at + heal_after - world.now))
    world.heal()
    discover_edges(world, edges)  # mDNS announces again; addresses forgotten during the split return
    healed_at = world.now
    converge_s = settle(world, lambda w: w.converged(), 600, "replicas converged after heal", 0.1)
    await_release(world, release_id, receivers, bound, ratio_max, heal_after + 600, started)
    checks.require_converged(world)
    granted = {n: consent.consent_state(world.nodes[n].state, subject, SUBJECT_SCOPE, consent.Policies())
               for n in names}
    if any(granted.values()):
        raise world.fail(f"the revoke was undone on {[n for n, g in granted.items() if g][:5]}")
    return {
        "scenario": "partition",
        "params": {"seed": seed, "nodes": nodes, "split": split, "heal_after": heal_after,
                   "release_mb": release_mb, "link_mbit": link_mbit, "degree": degree, "files": files},
        "sides": {"a": len(side_a), "b": len(side_b)},
        "distribution": distribution_figures(world, content, release_id, started, receivers, {"seed"}, bound,
                                             deliveries, ratio_max),
        "state": {"converged_after_heal_s": converge_s, "heal_at_s": healed_at - world.start_time,
                  "revoke_stands": True},
        "sim": sim_figures(world),
    }


SCENARIOS = {"venue": venue, "coop": coop, "coop-multi": coop_multi, "gossip": gossip, "churn": churn,
             "partition": partition}
