"""``parkguide user add|remove|list``: the dashboard users in the journal database.

``parkguide user add NAME --role ROLE --db PATH [--replace]`` adds a user (or, with
``--replace``, gives it a new role and password, ending its sessions). The password is
prompted for (twice) on a terminal, or read as the first line of standard input otherwise
(``echo "$PW" | parkguide user add ...``); it is never a command-line argument, which other
users could read in ``ps``.

``parkguide user remove NAME --db PATH`` deletes a user: every session it had ends at once
(its next request, and its open live stream within seconds, count as no login).

``parkguide user list --db PATH`` prints every user and its role.

Each command word maps to this one module (``parkguide.cli.COMMANDS``); which one runs is
the last word of the parser's ``prog``. ``python -m api.users add|remove|list ...`` runs them
without the ``parkguide`` entry point.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sqlite3
import sys
import time

from api.auth import ROLES, UserError, UserStore

COMMANDS = ("add", "remove", "list")


def _command(parser: argparse.ArgumentParser) -> str:
    word = parser.prog.rsplit(" ", 1)[-1]
    return word if word in COMMANDS else "add"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    command = _command(parser)
    parser.set_defaults(user_command=command)
    if command != "list":
        parser.add_argument("name", help="user name (letters, digits, '_', '.', '@', '-')")
    if command == "add":
        parser.add_argument("--role", required=True, choices=ROLES, help="what the user may do")
    parser.add_argument("--db", required=True, help="the journal database (SQLite)")
    if command == "add":
        parser.add_argument(
            "--replace",
            action="store_true",
            help="change the role and password of an existing user",
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


def _add(args: argparse.Namespace) -> int:
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


def _existing_store(command: str, db: str) -> UserStore | None:
    # never create a database for a mistyped path: removing or listing needs the real one
    if not os.path.isfile(db):
        print(f"parkguide user {command}: no database {db}", file=sys.stderr)
        return None
    try:
        return UserStore(db)
    except sqlite3.Error as exc:
        print(f"parkguide user {command}: cannot open {db}: {exc}", file=sys.stderr)
        return None


def _remove(args: argparse.Namespace) -> int:
    store = _existing_store("remove", args.db)
    if store is None:
        return 1
    try:
        removed = store.remove(args.name)
    except sqlite3.Error as exc:
        print(f"parkguide user remove: cannot change {args.db}: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"parkguide user remove: no user {args.name!r} in {args.db}", file=sys.stderr)
        return 1
    print(f"user {args.name} removed from {args.db}; its sessions have ended")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _existing_store("list", args.db)
    if store is None:
        return 1
    try:
        users = store.all()
    except sqlite3.Error as exc:
        print(f"parkguide user list: cannot read {args.db}: {exc}", file=sys.stderr)
        return 1
    for user in users:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(user.created))
        print(f"{user.name}\t{user.role}\t{created}")
    if not users:
        print(f"no users in {args.db}", file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "user_command", "add")
    return {"add": _add, "remove": _remove, "list": _list}[command](args)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="api.users", description="dashboard users")
    _sub = _parser.add_subparsers(dest="word", metavar="COMMAND", required=True)
    for _word in COMMANDS:
        add_arguments(_sub.add_parser(_word))
    sys.exit(main(_parser.parse_args()))
