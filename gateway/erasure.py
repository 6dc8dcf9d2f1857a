"""``parkguide journal forget-plate PLATE --db JOURNAL [--json]``: erase one licence plate
from the gateway's journal (a person's request under PIPL or GDPR), while the gateway runs.

The plate is blanked in every assignment that has it, in its column and in the stored
answer, and the write-ahead log is checkpointed so that no copy is left there; deleted
bytes are overwritten (``secure_delete``). A stand-alone API reloads its recent
assignments within seconds. Backups made earlier, logs and the gates' own records are
not reached: docs/privacy.md says what to do about them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from gateway.journal import forget_plate
from parking.payloads import Plate

_PLATE = TypeAdapter(Plate)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plate", help="the plate, as the gate read it (letters in any case)")
    parser.add_argument("--db", required=True, help="the gateway's journal (SQLite)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")


class WalKept(Exception):
    """The plate is blanked in the journal, but a reader kept the write-ahead log's older
    copy of its pages (the count of assignments is the argument)."""


CHECKPOINT_TRIES = 10
CHECKPOINT_WAIT_MS = 50  # per try: the gateway's writes wait this long at most
CHECKPOINT_PAUSE_S = 0.5  # between tries: the gateway writes meanwhile


def erase(db: Path, plate: str) -> int:
    """Blank ``plate`` in journal ``db``; how many assignments had it. ValueError (for the
    user) when ``db`` is no journal; WalKept when a reader kept the old pages."""
    if not db.is_file():
        raise ValueError(f"--db {db}: no such journal")
    owner = db.stat()
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA secure_delete=ON")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "assignments" not in tables:
            raise ValueError(f"--db {db}: not a parkguide journal (no assignments table)")
        n = forget_plate(conn, plate)
        # an index page SQLite rebuilt can keep a deleted entry in its unused space, which
        # secure_delete does not clear: rebuilt whole (a day of plates, milliseconds)
        conn.execute("REINDEX assignments_plate")
        # the old pages in the WAL hold the plate until they are written back and the log
        # starts over: done now, not at the gateway's next checkpoint. A reader (a backup,
        # a long export) holds it back; it waits for readers with the writer lock held, so
        # briefly each time, not to stall the gateway's writes
        conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
        for attempt in range(CHECKPOINT_TRIES):
            if attempt:
                time.sleep(CHECKPOINT_PAUSE_S)
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
        else:
            raise WalKept(n)
    finally:
        conn.close()
        if os.geteuid() == 0:  # run as root: the gateway's user must still open its WAL
            for side in (Path(f"{db}-wal"), Path(f"{db}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    if side.stat().st_uid != owner.st_uid:
                        os.chown(side, owner.st_uid, owner.st_gid)
    return n


def main(args: argparse.Namespace) -> int:
    try:
        plate = _PLATE.validate_python(args.plate.strip())
    except ValidationError:
        print(f"{args.plate!r}: a plate is 1-16 printable characters", file=sys.stderr)
        return 2
    try:
        n = erase(Path(args.db), plate)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except WalKept as kept:
        print(
            f"plate {plate} blanked in {kept.args[0]} assignment(s) of {args.db}, but a reader "
            "of the journal (a backup, a long export) kept an older copy in its write-ahead "
            "log: run the command again in a minute",
            file=sys.stderr,
        )
        return 1
    except sqlite3.Error as exc:
        print(f"--db {args.db}: cannot change the journal: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"plate": plate, "assignments": n}, ensure_ascii=False))
    else:
        done = (
            f"plate {plate} blanked in {n} assignment(s) of {args.db}"
            if n
            else f"plate {plate} is in no assignment of {args.db} (blanked before, or never kept)"
        )
        print(
            f"{done}; the write-ahead log is emptied. Not reached: backups made before now, "
            "logs, the gates' own records (docs/privacy.md)"
        )
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="gateway.erasure", description=__doc__)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
