"""``parkguide user add NAME --role ROLE --db PATH``: add a dashboard user to the journal database.

The password is prompted for (twice) on a terminal, or read as the first line
of standard input otherwise (``echo "$PW" | parkguide user add ...``); it is
never a command-line argument, which other users could read in ``ps``.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys

from api.auth import ROLES, UserError, UserStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="user name (letters, digits, '_', '.', '@', '-')")
    parser.add_argument("--role", required=True, choices=ROLES, help="what the user may do")
    parser.add_argument("--db", required=True, help="the journal database (SQLite)")
    parser.add_argument(
        "--replace", action="store_true", help="change the role and password of an existing user"
    )


def read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            print("the two passwords differ", file=sys.stderr)
            return None
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def main(args: argparse.Namespace) -> int:
    password = read_password()
    if password is None:
        return 1
    try:
        store = UserStore(args.db)
        user = store.add(args.name, args.role, password, replace=args.replace)
    except UserError as exc:
        print(f"parkguide user add: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        print(f"parkguide user add: cannot open {args.db}: {exc}", file=sys.stderr)
        return 1
    print(f"user {user.name} ({user.role}) saved in {args.db}")
    return 0
