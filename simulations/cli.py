"""`python -m simulations venue|coop|coop-multi|gossip|churn|partition|report [options] [--json PATH]`."""

from __future__ import annotations

import argparse
import sys
import time

from mesh.testing.sim import SimulationError
from simulations import output
from simulations.scenarios import SCENARIOS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)

    def scenario(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
        return p

    venue = scenario("venue", "a wired seed and N-1 stations on one access point")
    venue.add_argument("--nodes", type=int, default=40)
    venue.add_argument("--release-mb", type=float, default=512)
    venue.add_argument("--wifi-mbit", type=float, default=200)
    venue.add_argument("--seed-mbit", type=float, default=1000)
    venue.add_argument("--files", type=int, default=1)
    venue.add_argument("--ratio-max", type=float, help="fail if completion exceeds this x the bound")
    venue.add_argument("--no-medium-hint", dest="medium_hint", action="store_false",
                       help="stations do not know (nor say) they are on Wi-Fi")
    coop = scenario("coop", "hubs over a WAN, each with a venue on Wi-Fi")
    coop.add_argument("--hubs", type=int, default=20)
    coop.add_argument("--nodes-per-hub", type=int, default=25)
    coop.add_argument("--wan-mbit", type=float, default=20)
    coop.add_argument("--wifi-mbit", type=float, default=200)
    coop.add_argument("--release-mb", type=float, default=64)
    coop.add_argument("--wan-latency-ms", type=float, default=20)
    coop.add_argument("--wan-loss", type=float, default=0.001)
    coop.add_argument("--degree", type=int, default=4)
    coop.add_argument("--files", type=int, default=1)
    coop.add_argument("--ratio-max", type=float)
    coop.add_argument("--no-medium-hint", dest="medium_hint", action="store_false",
                      help="stations do not know (nor say) they are on Wi-Fi")
    multi = scenario("coop-multi", "several creators' meshes sharing hub boxes over a WAN")
    multi.add_argument("--meshes", type=int, default=3)
    multi.add_argument("--hubs", type=int, default=2)
    multi.add_argument("--nodes-per-site", type=int, default=4, help="edges of each mesh at each hub's venue")
    multi.add_argument("--release-mb", type=float, default=8, help="each creator's release")
    multi.add_argument("--wan-mbit", type=float, default=20)
    multi.add_argument("--wifi-mbit", type=float, default=200)
    multi.add_argument("--wan-latency-ms", type=float, default=20)
    multi.add_argument("--wan-loss", type=float, default=0.001)
    multi.add_argument("--degree", type=int, default=3)
    multi.add_argument("--files", type=int, default=1)
    multi.add_argument("--ratio-max", type=float, help="fail if the last completion exceeds this x the shared bound")
    multi.add_argument("--no-medium-hint", dest="medium_hint", action="store_false",
                       help="stations do not know (nor say) they are on Wi-Fi")
    gossip = scenario("gossip", "one state change through a sparse mesh")
    gossip.add_argument("--nodes", type=int, default=1000)
    gossip.add_argument("--degree", type=int, default=4, help="random peers each node discovers")
    gossip.add_argument("--latency-ms", type=float, default=2.0)
    gossip.add_argument("--rounds-max", type=float, help="fail if rounds exceed this x log2 N + ln N")
    churn = scenario("churn", "a release while nodes leave, crash and rejoin")
    churn.add_argument("--nodes", type=int, default=200)
    churn.add_argument("--leave-rate", type=float, default=0.3)
    churn.add_argument("--release-mb", type=float, default=16)
    churn.add_argument("--link-mbit", type=float, default=50)
    churn.add_argument("--degree", type=int, default=4)
    churn.add_argument("--ratio-max", type=float)
    part = scenario("partition", "split, edits on both sides, heal")
    part.add_argument("--nodes", type=int, default=100)
    part.add_argument("--split", type=float, default=0.5)
    part.add_argument("--heal-after", type=float, default=600)
    part.add_argument("--release-mb", type=float, default=16)
    part.add_argument("--link-mbit", type=float, default=50)
    part.add_argument("--degree", type=int, default=4)
    part.add_argument("--ratio-max", type=float)
    report = sub.add_parser("report", help="run the standard set; write docs/simulations.md and plots")
    report.add_argument("--seed", type=int, default=7)
    report.add_argument("--out", default="docs", help="directory for simulations.md and simulations/*.png")
    report.add_argument("--quick", action="store_true", help="smaller runs (for a smoke test)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.scenario == "report":
        from simulations.report import write_report

        write_report(args.seed, args.out, quick=args.quick)
        return 0
    options = {k.replace("-", "_"): v for k, v in vars(args).items() if k not in ("scenario", "json")}
    started = time.perf_counter()
    try:
        result = SCENARIOS[args.scenario](**options)
    except SimulationError as exc:
        print(f"SIMULATION FAILED: {exc}", file=sys.stderr)
        return 1
    output.print_result(result, time.perf_counter() - started)
    if args.json:
        output.write_json(result, args.json)
    return 0
