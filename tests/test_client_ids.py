"""MQTT client ids: stable across restarts, unknown to the broker's other users, and never
derived from the password (mosquitto logs every id; a digest of the password in it let a
log reader test password guesses offline). Also: no password in a broker URL on a
command line. Real mosquitto, real publisher and gateway."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from pathlib import Path

import pytest
from gateway_support import SITE_ID, Edge, running_gateway, site_variant

from edge.publisher import ReportPublisher
from parking.broker import BrokerConfig

pytestmark = pytest.mark.timeout(60)

SITE, AGENT, SOURCE = "t-site", "serial-t", "bus-t"
PASSWORD = "hunter2-Summer"  # what a person picks: a digest of it falls to a word list


def old_digest_id(base: str, password: str) -> str:
    """The client id of releases before this one: a digest an attacker can test guesses on."""
    digest = hashlib.sha256(f"{base}\0{password}".encode()).hexdigest()[:16]
    return f"{base}-{digest}"


def publisher(port: int, spool: Path, password: str | None = PASSWORD) -> ReportPublisher:
    # mosquitto without a password file lets any login in: the credentials only shape the id
    broker = BrokerConfig("127.0.0.1", port, "serial-t" if password else None, password)
    return ReportPublisher(broker, SITE, AGENT, SOURCE, spool_dir=spool)


def started_id(pub: ReportPublisher) -> str:
    pub.start()
    try:
        deadline = time.monotonic() + 10
        while not pub.connected:
            assert time.monotonic() < deadline, "never connected"
            time.sleep(0.02)
        return pub.client_id
    finally:
        pub.stop(flush_timeout_s=0.2)


def test_an_agents_client_id_is_random_kept_private_and_not_logged(
    mosquitto, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="edge.publisher")
    base = f"parkguide-{SITE}-{AGENT}"
    spool = tmp_path / "spool"
    first = started_id(publisher(mosquitto.port, spool))
    assert re.fullmatch(rf"{base}-[0-9a-f]{{16}}", first)
    assert first != old_digest_id(base, PASSWORD)
    kept = spool / f"{SITE}.{AGENT}.clientid"
    assert kept.read_text().strip() == first.rsplit("-", 1)[1]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # stable across restarts, and across a password change (same spool)
    assert started_id(publisher(mosquitto.port, spool)) == first
    assert started_id(publisher(mosquitto.port, spool, "another-one")) == first
    # another spool folder (another agent's, or a twin's) never shares the suffix
    assert started_id(publisher(mosquitto.port, tmp_path / "other")) != first
    connected = [r.getMessage() for r in caplog.records if "connected to MQTT" in r.getMessage()]
    assert connected and all(m.endswith(f" as {base}-***") for m in connected), connected
    assert not [r for r in caplog.records if first.rsplit("-", 1)[1] in r.getMessage()]
    # a dev broker without a password: the plain id, and no file to keep
    assert started_id(publisher(mosquitto.port, tmp_path / "dev", None)) == base
    assert not (tmp_path / "dev" / f"{SITE}.{AGENT}.clientid").exists()


def test_a_damaged_suffix_file_is_drawn_again(mosquitto, tmp_path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{SITE}.{AGENT}.clientid").write_text("cut sh")  # a crash mid-write, say
    first = started_id(publisher(mosquitto.port, spool))
    assert re.fullmatch(r".*-[0-9a-f]{16}", first)
    assert started_id(publisher(mosquitto.port, spool)) == first


def test_a_suffix_file_that_cannot_be_kept_is_a_clear_error(tmp_path) -> None:
    """Not a crash loop with a traceback: OSError naming the file (the agents print it)."""
    spool = tmp_path / "spool"
    (spool / f"{SITE}.{AGENT}.clientid").mkdir(parents=True)  # in the way
    pub = publisher(1, spool)
    with pytest.raises(OSError, match=r"cannot keep the MQTT client id in .*\.clientid"):
        pub.start()
    # the spool's lock was let go: a fixed folder works without a restart of anything
    os.rmdir(spool / f"{SITE}.{AGENT}.clientid")
    pub.start()
    pub.stop(flush_timeout_s=0.1)


def test_an_upgraded_gateway_drains_the_session_of_its_password_digest_id(
    mosquitto, tmp_path, caplog
) -> None:
    """The release before gave the gateway ``base-digest(password)``: the first start of
    this one draws a random suffix, takes over the reports the broker queued under the old
    id, deletes that session, and keeps the new id from then on. The old id, which gives the
    password away, is never logged."""
    from gateway.journal import Journal
    from gateway.service import CLIENT_ID_KEY, CLIENT_SUFFIX_KEY

    caplog.set_level(logging.INFO, logger="gateway.service")
    site_path = site_variant(tmp_path)
    db = tmp_path / "journal.db"
    url = f"mqtt://gateway:{PASSWORD}@127.0.0.1:{mosquitto.port}"  # built here, not argv
    base = f"parkguide-gateway-{SITE_ID}"
    old = old_digest_id(base, PASSWORD)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, url, db, client_id=old) as gw:  # the old release
            edge.send({"A-001": "occupied"})
            deadline = time.monotonic() + 5
            while gw.gateway.accepted < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        for space in ("A-002", "A-003", "A-004"):  # no gateway: queued for the old id
            edge.send({space: "occupied"})
        time.sleep(0.3)
        with running_gateway(site_path, url, db) as gw:
            new = gw.client_id
            assert re.fullmatch(rf"{base}-[0-9a-f]{{16}}", new) and new != old
            deadline = time.monotonic() + 10
            while gw._previous_client_id is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw._previous_client_id is None, "the take-over never ended"
            assert gw.taken_over >= 3
            states = {s.space: s.state for s in gw.gateway.spaces()}
            assert [states[s] for s in ("A-002", "A-003", "A-004")] == ["occupied"] * 3
        with running_gateway(site_path, url, db) as gw:  # stable from then on
            assert gw.client_id == new and gw._previous_client_id is None
    finally:
        edge.stop()
    journal = Journal(db)
    try:
        assert journal.meta(CLIENT_ID_KEY) == new
        assert journal.meta(CLIENT_SUFFIX_KEY) == new.rsplit("-", 1)[1]
    finally:
        journal.close()
    said = [r.getMessage() for r in caplog.records]
    assert any("took" in m and f"{base}-***" in m for m in said), said
    assert not [m for m in said if old.rsplit("-", 1)[1] in m or new.rsplit("-", 1)[1] in m]


def test_two_gateways_never_share_a_suffix(mosquitto, tmp_path) -> None:
    site_path = site_variant(tmp_path)
    url = f"mqtt://gateway:{PASSWORD}@127.0.0.1:{mosquitto.port}"
    ids = []
    for name in ("a.db", "b.db"):
        with running_gateway(site_path, url, tmp_path / name) as gw:
            ids.append(gw.client_id)
    assert ids[0] != ids[1]
    with running_gateway(site_path, url, tmp_path / "c.db", client_id="gw-mine") as gw:
        assert gw.client_id == "gw-mine"  # --client-id still overrides
