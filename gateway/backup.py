"""``parkguide journal backup --db JOURNAL --out FILE [--json]``: a consistent copy of the
gateway's journal while the gateway runs.

The journal holds the site's whole history, the dashboard users, the alerts and the
InfluxDB outbox. Copying the file with ``cp`` while the gateway writes can give a torn
copy (the database file and its WAL copied at different moments). This uses SQLite's
online backup in one step: a read transaction, which in WAL mode does not hold the
gateway's writes up, copies one moment of the journal. The copy is private (mode 0600:
it holds password hashes and plates), checked (``PRAGMA quick_check``) and never written
over an existing file. Every dashboard session has ended in the copy (a restore must not
bring back a session logged out or a user's removed since), and it is marked as a backup,
so a gateway started on it says so. Restoring is a copy back with the gateway stopped
(deploy/README.md).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from api.auth import NEW_GENERATION_SQL, add_missing_user_columns
from gateway.journal import BACKUP_TAKEN_KEY
from parking.private import create_private


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the gateway's journal (SQLite)")
    parser.add_argument("--out", required=True, help="the copy to write (must not exist)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")


def backup(db: Path, out: Path) -> dict[str, object]:
    """Copy journal ``db`` to the new file ``out``; what the copy holds. ValueError (for
    the user) when ``db`` is no journal or ``out`` exists; nothing is left behind then."""
    if not db.is_file():
        raise ValueError(f"--db {db}: no such journal")
    if out.exists() or out.is_symlink():
        raise ValueError(f"--out {out}: exists; give a new file name (a backup never overwrites)")
    if not out.parent.is_dir():
        # SQLite would only say "unable to open database file", read as the journal's fault
        raise ValueError(f"--out {out}: its folder {out.parent} does not exist (or is no folder)")
    source = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    made = False
    try:
        source.execute("PRAGMA busy_timeout=5000")
        tables = {r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "events" not in tables:
            raise ValueError(f"--db {db}: not a parkguide journal (no events table)")
        create_private(out)
        made = True
        try:
            target = sqlite3.connect(out)
        except sqlite3.Error as exc:  # a folder we may not write to
            raise ValueError(f"--out {out}: cannot create the copy ({exc})") from None
        try:
            started = time.monotonic()
            source.backup(target)  # one step: one moment of the journal
            took = time.monotonic() - started
            check = target.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise ValueError(f"--out {out}: the copy failed its check ({check})")
            with target:  # a gateway started on the copy knows it is a restore
                target.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (BACKUP_TAKEN_KEY, repr(time.time())),
                )
                if "users" in tables:
                    # restored, it must not bring back sessions ended since (a logout, a
                    # user removed): every session of the copy has ended. A journal of an
                    # earlier release (backed up before upgrading) gets the column first
                    add_missing_user_columns(target)
                    target.execute(f"UPDATE users SET generation = {NEW_GENERATION_SQL}")
            events, first, last = target.execute(
                "SELECT count(*), min(ts), max(ts) FROM events"
            ).fetchone()
            users = (
                target.execute("SELECT count(*) FROM users").fetchone()[0]
                if "users" in tables
                else 0
            )
        finally:
            target.close()
    except BaseException:
        if made:
            out.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "events": events,
        "first_event": first,
        "last_event": last,
        "users": users,
        "seconds": round(took, 3),
    }


def main(args: argparse.Namespace) -> int:
    try:
        copied = backup(Path(args.db), Path(args.out))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"--db {args.db}: cannot copy the journal: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"--out {args.out}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(copied))
    else:

        def when(ts: object) -> str:
            if not isinstance(ts, int | float):
                return "-"
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

        print(
            f"journal copied to {copied['out']} ({copied['bytes']} bytes, mode 0600): "
            f"{copied['events']} events from {when(copied['first_event'])} to "
            f"{when(copied['last_event'])}, {copied['users']} users"
        )
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="gateway.backup", description=__doc__)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
