"""``parkguide site acl FILE [--out ACL] [--shared-logins]``: a Mosquitto ACL for one site,
every login's own topics of that site written out (:mod:`parking.acl`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parking.acl import acl_logins, site_acl
from parking.site import SiteError, load_site, login_warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="site YAML file")
    parser.add_argument("--out", metavar="ACL", help="write the ACL there (default: stdout)")
    parser.add_argument(
        "--shared-logins",
        action="store_true",
        help="also the shared 'gate' and 'signs' logins of earlier releases",
    )


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.file)
    except SiteError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: site refused; no ACL made", file=sys.stderr)
        return 2
    clashes = login_warnings(site)
    if clashes:
        # one user block per login: two roles on one login cannot be written apart
        for line in clashes:
            print(f"error: {line}", file=sys.stderr)
        return 2
    text = site_acl(site, shared=args.shared_logins)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    logins = acl_logins(site) + (["gate", "signs"] if args.shared_logins else [])
    print(f"wrote {args.out}: {len(logins)} logins of site {site.id}")
    print("their passwords: deploy/mosquitto/make-passwords.sh PASSWORD_FILE " + " ".join(logins))
    return 0
