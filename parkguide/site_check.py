"""``parkguide site check FILE [--db JOURNAL] [--json]``: validate a site file, summarise it
and, with a gateway's journal, say what the gateway would find changed at its next start."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from parking.site import Site, SiteError, lane_warnings, load_site


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="site YAML file")
    parser.add_argument("--json", action="store_true", help="one JSON object on one line")
    parser.add_argument(
        "--db",
        metavar="JOURNAL",
        help="a gateway's journal: list what changed since the site file it last ran with"
        " (read only; safe while the gateway runs)",
    )


def journal_changes(db: str, site: Site) -> list[str]:
    """What the gateway with journal ``db`` would find changed in ``site`` at its next start."""
    from gateway.site_changes import OUTLINE_KEY, compare, parse_outline

    if not Path(db).is_file():
        raise OSError(f"--db {db}: no such journal")
    conn = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (OUTLINE_KEY,)).fetchone()
    except sqlite3.Error as exc:
        raise OSError(f"--db {db}: not a gateway journal ({exc})") from None
    finally:
        conn.close()
    old = parse_outline(row[0] if row else None)
    if old is None:
        return [
            "the journal does not say which site file it last ran with (a journal of an"
            " older release, or a gateway that never started): nothing to compare"
        ]
    return compare(old, site).lines(show=20) or [
        "no change to spaces, zones or displays against the journal (policies and the time"
        " zone are not compared: the gateway applies the file's at its next start)"
    ]


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
    extra = {}
    if args.db:
        try:
            extra["changes"] = journal_changes(args.db, site)
        except OSError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    if args.json:
        print(
            json.dumps({"ok": True, **summary, "warnings": warnings, **extra}, ensure_ascii=False)
        )
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
    if args.db:
        print(f"  against the journal {args.db}:")
        for line in extra["changes"]:
            print(f"    {line}")
    return 0
