"""The journal is for the service's own user: it holds password hashes, plates and the
outbox (a default umask of 022 left it readable by every local account)."""

from __future__ import annotations

import os
import stat

from api.auth import UserStore
from gateway.journal import Journal
from parking.private import create_private


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_journal_and_its_wal_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        journal = Journal(tmp_path / "journal.sqlite")
        with journal.transaction():
            journal.set_meta("k", "v")
        assert mode(tmp_path / "journal.sqlite") == 0o600
        assert mode(tmp_path / "journal.sqlite-wal") == 0o600
        journal.close()
        users = tmp_path / "users-first.sqlite"  # `parkguide user add` before the gateway ran
        UserStore(str(users)).add("alice", "manager", "a long enough passphrase 1")
        assert mode(users) == 0o600
    finally:
        os.umask(old)


def test_an_existing_file_keeps_the_mode_its_operator_chose(tmp_path):
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"")
    path.chmod(0o640)
    create_private(path)
    Journal(path).close()
    assert mode(path) == 0o640


def test_a_gateway_on_a_journal_every_local_user_may_read_says_so(tmp_path, mosquitto, caplog):
    """A journal an earlier release made 0644 (or one copied with cp) keeps its mode; the
    gateway says what to do at every start. Its group may read it without a word."""
    from tests.gateway_support import running_gateway, site_variant

    site = site_variant(tmp_path)
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    for chosen, said in ((0o640, False), (0o644, True)):
        path.chmod(chosen)
        caplog.clear()
        with running_gateway(site, mosquitto.url, path):
            pass
        warned = [r for r in caplog.records if "may be read by every local user" in r.message]
        assert bool(warned) is said, chosen
    assert "mode 644" in warned[0].message and f"chmod 600 {path}*" in warned[0].message
    assert mode(path) == 0o644  # said, not changed
