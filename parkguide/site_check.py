"""``parkguide site check FILE [--json]``: validate a site file and summarise it."""

from __future__ import annotations

import argparse
import json
import sys

from parking.site import SiteError, lane_warnings, load_site


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="site YAML file")
    parser.add_argument("--json", action="store_true", help="one JSON object on one line")


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.file)
    except SiteError as exc:
        if args.json:  # a script reading stdout learns of the refusal too, not only a person
            print(json.dumps({"ok": False, "problems": exc.problems}, ensure_ascii=False))
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s); site refused", file=sys.stderr)
        return 2
    summary = site.summary()
    warnings = []
    unbound = len(site.spaces) - len(site.bindings)
    if unbound:
        warnings.append(f"{unbound} spaces have no sensor and will stay unknown")
    warnings += lane_warnings(site)
    if args.json:
        print(json.dumps({"ok": True, **summary, "warnings": warnings}, ensure_ascii=False))
        return 0
    print(f"site {site.id} ({site.name.zh} / {site.name.en}): OK")
    print(f"  {summary['spaces']} spaces in {summary['zones']} zones on {summary['levels']} levels")
    for bus in site.buses:
        n = sum(1 for s in site.bindings.values() if s.source == bus.id)
        print(
            f"  bus {bus.id}: {bus.baud} baud, nodes {[nc.address for nc in bus.nodes]}, {n} spaces"
        )
    for cam in site.cameras:
        print(f"  camera {cam.id}: {len(cam.polygons)} spaces")
    for warning in warnings:
        print(f"  warning: {warning}")
    print(
        f"  {summary['entrances']} entrances, {summary['displays']} displays, {len(site.lane_nodes)} lane nodes"
    )
    return 0
