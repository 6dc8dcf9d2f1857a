"""``parkguide journal backup``: a consistent, private copy of the journal while a real
gateway writes it, which a gateway restored on it resumes from."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import stat
import subprocess
import threading
import time

from tests.conftest import eventually, parkguide_cmd
from tests.gateway_support import Edge, running_gateway, site_variant


def _backup(db, out, env) -> subprocess.CompletedProcess:
    cmd = parkguide_cmd("journal", "backup", "--db", str(db), "--out", str(out), "--json")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_a_backup_taken_while_the_gateway_runs_restores_its_state(
    mosquitto, tmp_path, example_site, subprocess_env, caplog
):
    site_path = site_variant(tmp_path, ttl_s=600)  # the restored state is not aged out
    db = tmp_path / "live" / "journal.sqlite"
    db.parent.mkdir()
    spaces = example_site.spaces_of_source("bus-g")
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, db) as service:
            edge.send(dict.fromkeys(spaces, "free"), kind="snapshot")
            edge.send({s: "occupied" for s in spaces[:20]})
            taken = example_site.space_index[spaces[19]]
            assert eventually(lambda: service.gateway.state.state[taken] == 2, timeout=10)
            add = parkguide_cmd("user", "add", "alice", "--role", "manager", "--db", str(db))
            subprocess.run(add, input="a long enough password\n", text=True, check=True,
                           env=subprocess_env, capture_output=True)  # fmt: skip
            out = tmp_path / "backup.sqlite"
            done = _backup(db, out, subprocess_env)
            assert done.returncode == 0, done.stderr
            info = json.loads(done.stdout)
            assert info["users"] == 1 and info["events"] >= 20 and info["out"] == str(out)
            assert stat.S_IMODE(out.stat().st_mode) == 0o600  # hashes and plates
            # restored, the copy brings back no session (one logged out since, a user
            # removed since): every user's session generation is new in it
            generations = [
                sqlite3.connect(f).execute("SELECT generation FROM users").fetchall()
                for f in (db, out)
            ]
            assert generations[0] != generations[1] and None not in generations[1][0]
            before = {
                z.zone: (z.free, z.occupied, z.unknown) for z in service.gateway.zone_counts()
            }
            size = out.stat().st_size
            again = _backup(db, out, subprocess_env)
            assert again.returncode == 2 and "never overwrites" in again.stderr
            assert out.stat().st_size == size
            # reports after the backup: in the live journal, not in the copy
            last = json.loads(edge.send({spaces[0]: "occupied"}))["seq"]
            assert eventually(lambda: service.gateway.gate.sequence(edge.agent)[1] == last)

        # restored on a new box: the copy as the journal, the gateway resumes its state
        restored = tmp_path / "restored" / "journal.sqlite"
        restored.parent.mkdir()
        shutil.copy(out, restored)
        caplog.set_level(logging.INFO, logger="gateway.live")
        # another broker session: the report after the backup is not redelivered to it (the
        # first gateway may stop before its acknowledgement), so it is surely skipped
        with running_gateway(site_path, mosquitto.url, restored, client_id="gw-new-box") as service:
            gw = service.gateway
            after = {z.zone: (z.free, z.occupied, z.unknown) for z in gw.zone_counts()}
            assert after == before
            # the agent's next report skips what came after the backup: no loss said
            edge.send({spaces[30]: "occupied"})  # free until now
            assert eventually(lambda: gw.state.state[example_site.space_index[spaces[30]]] == 2)
            assert gw.reports_missed.get(edge.agent, 0) == 0
        assert "this journal is a backup taken" in caplog.text
        assert "came after the backup this journal was restored from" in caplog.text
        assert "never arrived" not in caplog.text
    finally:
        edge.stop()
    with sqlite3.connect(restored) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("alice",)]
        # said once: a later restart of the restored gateway is an ordinary one
        assert conn.execute("SELECT value FROM meta WHERE key = 'backup_taken'").fetchall() == []


def test_a_backup_while_reports_keep_coming_is_one_checked_moment(
    mosquitto, tmp_path, example_site, subprocess_env
):
    """The gateway commits a report every few milliseconds meanwhile: the backup still
    finishes (one step, a read transaction WAL lets writers past) and the copy is whole."""
    db = tmp_path / "journal.sqlite"
    spaces = example_site.spaces_of_source("bus-g")
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_variant(tmp_path), mosquitto.url, db):
            edge.send(dict.fromkeys(spaces, "free"), kind="snapshot")
            # a backup while reports keep coming: one moment, checked, never stuck
            stop = threading.Event()

            def keep_reporting() -> None:
                i = 0
                while not stop.is_set():
                    edge.send({spaces[20 + i % 40]: "occupied" if i % 80 < 40 else "free"})
                    i += 1
                    time.sleep(0.002)

            writer = threading.Thread(target=keep_reporting)
            writer.start()
            try:
                busy = _backup(db, tmp_path / "busy.sqlite", subprocess_env)
            finally:
                stop.set()
                writer.join()
            assert busy.returncode == 0, busy.stderr
            with sqlite3.connect(tmp_path / "busy.sqlite") as copy:
                assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        edge.stop()


def test_a_backup_refuses_what_is_not_a_journal_and_leaves_nothing(tmp_path, subprocess_env):
    missing = _backup(tmp_path / "none.sqlite", tmp_path / "b1.sqlite", subprocess_env)
    assert missing.returncode == 2 and "no such journal" in missing.stderr
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t(x)")
    refused = _backup(other, tmp_path / "b2.sqlite", subprocess_env)
    assert refused.returncode == 2 and "not a parkguide journal" in refused.stderr
    assert not (tmp_path / "b1.sqlite").exists() and not (tmp_path / "b2.sqlite").exists()


def test_a_damaged_journal_is_refused_with_what_to_do(tmp_path, subprocess_env):
    from tests.conftest import EXAMPLE_SITE

    db = tmp_path / "journal.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)  # a header, then garbage
    out = subprocess.run(
        parkguide_cmd("gateway", "--site", str(EXAMPLE_SITE), "--broker", "mqtt://127.0.0.1:1",
                      "--db", str(db)),
        env=subprocess_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "the journal is damaged: restore the newest backup" in out.stderr
    assert ".recover" in out.stderr


def test_a_journal_of_an_earlier_release_is_backed_up_before_upgrading(tmp_path, subprocess_env):
    """Its users table predates session generations: the copy gets the column (and a fresh
    generation per user); the journal itself is only read."""
    from gateway.journal import Journal

    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    with sqlite3.connect(db) as conn:  # the users table as the first release made it
        conn.execute(
            "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL,"
            " created REAL NOT NULL)"
        )
        conn.execute("INSERT INTO users VALUES ('alice', 'manager', '$argon2id$x', 1.0)")
    out = tmp_path / "before-upgrade.sqlite"
    done = _backup(db, out, subprocess_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["users"] == 1
    with sqlite3.connect(out) as copy:
        (generation,) = copy.execute("SELECT generation FROM users").fetchone()
    assert generation and len(generation) == 32
    with sqlite3.connect(db) as conn:  # untouched
        assert "generation" not in {r[1] for r in conn.execute("PRAGMA table_info(users)")}


def test_an_out_path_in_a_missing_folder_is_blamed_on_out(tmp_path, subprocess_env):
    """SQLite's "unable to open database file" came out as the journal's fault (--db)."""
    from gateway.journal import Journal

    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    out = tmp_path / "that" / "does" / "not" / "exist" / "x.sqlite"
    refused = _backup(db, out, subprocess_env)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"--out {out}: ") and "does not exist" in refused.stderr
    assert "--db" not in refused.stderr
