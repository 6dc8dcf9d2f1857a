"""The stamp of a validated site file beside the journal (gateway.site_stamp): a restart on
the same bytes republishes the journaled signs before loading the site (from its cache:
tests/test_gateway_site_cache.py); another byte, a damaged stamp or a bad site file fall
back to parsing first, and a bad one is refused before any sign is published."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import parkguide_cmd
from gateway_support import SITE_ID, Collector, Edge, display_topic, site_variant

from gateway.site_changes import DIGEST_KEY
from gateway.site_stamp import ValidatedSite, read_stamp, site_key, stamp_path, write_stamp
from parking import topics
from parking.site import load_site

pytestmark = pytest.mark.timeout(120)
PARSED_AFTER = "parsed after the signs"
FROM_CACHE = "compiled site from its cache"  # written by the start before (the stamp's key)
REPUBLISHED = "republished"


def test_stamp_round_trip_and_keys(tmp_path: Path):
    db = tmp_path / "j.db"
    raw = b"site: {}\n"
    key = site_key(raw)
    assert site_key(raw) == key
    assert site_key(raw.replace(b"{}", b"{ }")) != key  # one byte more: another key
    site = ValidatedSite("x", ("d1", "d2"), "Asia/Shanghai", 15.0)
    assert read_stamp(db, key) is None  # none yet
    write_stamp(db, key, site)
    assert read_stamp(db, key) == site
    assert read_stamp(db, site_key(b"other")) is None
    assert os.stat(stamp_path(db)).st_mode & 0o777 == 0o600  # private like the journal


def test_a_stamp_without_the_ttl_is_read_without_it(tmp_path: Path):
    """Written before the TTL was kept (or damaged there): the signs' expiry only."""
    db = tmp_path / "j.db"
    key = site_key(b"x")
    for ttl in ("absent", "15", -1, float("inf")):
        doc = {"v": 1, "key": key, "site": "x", "timezone": "Asia/Shanghai", "displays": ["d"]}
        if ttl != "absent":
            doc["ttl_s"] = ttl
        stamp_path(db).write_text(json.dumps(doc))
        assert read_stamp(db, key) == ValidatedSite("x", ("d",), "Asia/Shanghai", None), ttl


@pytest.mark.parametrize(
    "damage",
    [b"", b"\x00\xff garbage", b'{"v": 1, "key": 3}', b'{"v": 1, "displays": "x"}', b"[]"],
)
def test_damaged_stamp_is_ignored_with_a_warning(tmp_path: Path, caplog, damage: bytes):
    db = tmp_path / "j.db"
    stamp_path(db).write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="gateway.site_stamp"):
        assert read_stamp(db, site_key(b"x")) is None
    assert "ignored" in caplog.text


def test_stamp_of_a_time_zone_this_machine_lacks_is_not_trusted(tmp_path: Path):
    db = tmp_path / "j.db"
    key = site_key(b"x")
    write_stamp(db, key, ValidatedSite("x", ("d",), "Nowhere/Atlantis"))
    assert read_stamp(db, key) is None


def _run(cmd, env, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_restarts_with_the_stamp(mosquitto, tmp_path, subprocess_env):
    site_path = site_variant(tmp_path)
    site = load_site(site_path)
    db = tmp_path / "journal.db"
    cmd = parkguide_cmd(
        "gateway", "--site", str(site_path), "--broker", mosquitto.url, "--db", str(db)
    )
    availability = topics.gateway_availability(SITE_ID)
    sign = display_topic(site.displays[0].id)
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    procs: list[subprocess.Popen] = []

    def start(run: str) -> tuple[subprocess.Popen, Path]:
        log_path = tmp_path / f"gateway-{run}.log"
        procs.append(_run(cmd, subprocess_env, log_path))
        return procs[-1], log_path

    def online(after: int) -> None:
        watch.wait_for(availability, lambda p: p == "online", after=after, timeout=30)

    try:
        # first start: no stamp, the site file is parsed first, then the stamp is written
        proc, log_path = start("first")
        online(0)
        edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
        watch.wait_for(sign, lambda c: c["ts"] > 0)
        time.sleep(0.5)
        text = log_path.read_text()
        assert PARSED_AFTER not in text
        # a new journal has no signs to be out of date: not told the site file changed
        assert "a new journal: the signs follow the full start" in text
        assert "site file changed" not in text
        assert read_stamp(db, site_key(site_path.read_bytes())) == ValidatedSite.of(site)
        assert os.stat(stamp_path(db)).st_mode & 0o777 == 0o600
        _kill(proc)

        # unchanged site file: the journaled signs go out before it is parsed again
        mark = watch.mark()
        edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
        proc, log_path = start("same")
        online(mark)
        watch.wait_for(sign, after=mark)
        text = log_path.read_text()
        assert REPUBLISHED in text and FROM_CACHE in text and PARSED_AFTER not in text
        assert text.index(REPUBLISHED) < text.index(FROM_CACHE)
        _kill(proc)

        # one byte more (a comment): another key, parsed first, the stamp replaced
        site_path.write_bytes(site_path.read_bytes() + b"# changed\n")
        mark = watch.mark()
        proc, log_path = start("changed")
        online(mark)
        time.sleep(0.5)
        assert PARSED_AFTER not in log_path.read_text()
        assert read_stamp(db, site_key(site_path.read_bytes())) == ValidatedSite.of(site)
        _kill(proc)

        # a sign's line renamed: the journal's signs are of the old file, and a driver would
        # read the old label until the full start; only the new content goes out
        text = site_path.read_text()
        old_label = "{zh: A区, en: Zone A}, arrow: right"
        assert site.displays[0].id == "gate-north" and old_label in text
        site_path.write_text(text.replace(old_label, "{zh: A区西, en: Zone A West}, arrow: up", 1))
        edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
        mark = watch.mark()
        proc, log_path = start("renamed")
        online(mark)
        watch.wait_for(sign, lambda c: c["lines"][0]["label"]["en"] == "Zone A West", after=mark)
        shown = [m.json()["lines"][0]["label"]["en"] for m in watch.since(mark, sign) if m.payload]
        assert shown and set(shown) == {"Zone A West"}, shown
        text = log_path.read_text()
        assert REPUBLISHED not in text and "site file changed since the journal's signs" in text
        _kill(proc)

        # a damaged stamp: warned, ignored, the gateway starts and writes it anew
        stamp_path(db).write_bytes(b'{"v": 1, "key": "')
        mark = watch.mark()
        proc, log_path = start("damaged")
        online(mark)
        time.sleep(0.5)
        text = log_path.read_text()
        assert "cannot be read" in text and PARSED_AFTER not in text
        assert read_stamp(db, site_key(site_path.read_bytes())) == ValidatedSite.of(site)
        _kill(proc)

        # a journal of a release that kept no digest of its signs' site file (nor a stamp):
        # its signs follow the full start, and it is not called new
        stamp_path(db).unlink()
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (DIGEST_KEY,))
        conn.close()
        mark = watch.mark()
        proc, log_path = start("old release")
        online(mark)
        watch.wait_for(sign, after=mark)
        text = log_path.read_text()
        assert "from a release that did not record which site file" in text, text
        assert "a new journal" not in text and REPUBLISHED not in text
        _kill(proc)

        # a bad site file (a field the schema does not know), stamp or not: refused, and
        # not one sign published meanwhile
        edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
        site_path.write_bytes(site_path.read_bytes() + b"surprise: 1\n")
        mark = watch.mark()
        proc, log_path = start("bad")
        assert proc.wait(30) == 2
        assert "site file refused" in log_path.read_text()
        time.sleep(0.5)
        assert watch.since(mark, f"{topics.PREFIX}/{SITE_ID}/displays/") == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        watch.stop()
        edge.stop()


@dataclass
class _Restarts:
    """A site with source TTL ``ttl``, the gateway command on its journal, a watcher and
    bus-g's agent; ``start`` runs the gateway (every process is stopped at the end)."""

    site: Any
    cmd: list[str]
    env: dict[str, str]
    logs: Path
    watch: Collector
    edge: Edge
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, run: str) -> subprocess.Popen:
        self.procs.append(_run(self.cmd, self.env, self.logs / f"gateway-{run}.log"))
        return self.procs[-1]

    def online(self, after: int) -> None:
        availability = topics.gateway_availability(SITE_ID)
        self.watch.wait_for(availability, lambda p: p == "online", after=after, timeout=30)


@contextmanager
def _restarts(mosquitto, tmp_path: Path, env: dict[str, str], ttl: float) -> Iterator[_Restarts]:
    site_path = site_variant(tmp_path, ttl_s=ttl)
    cmd = parkguide_cmd(
        "gateway", "--site", str(site_path), "--broker", mosquitto.url, "--db",
        str(tmp_path / "journal.db"),
    )  # fmt: skip
    r = _Restarts(
        load_site(site_path),
        cmd,
        env,
        tmp_path,
        Collector(mosquitto.port),
        Edge(mosquitto.port, "serial-bus-g", "bus-g"),
    )
    try:
        yield r
    finally:
        for p in r.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        r.watch.stop()
        r.edge.stop()


def test_a_stop_longer_than_the_shortest_ttl_republishes_no_journaled_sign(
    mosquitto, tmp_path, subprocess_env
):
    """Down longer than its sources' TTL, the gateway's journaled signs count spaces that
    would have gone unknown meanwhile: they are not shown again at the restart (a driver
    read the pre-crash count for half a second after a 20 s stop with TTL 15 s); within
    the TTL they are, as before."""
    ttl = 3.0
    with _restarts(mosquitto, tmp_path, subprocess_env, ttl) as r:
        sign = display_topic(r.site.displays[0].id)
        for run, pause in (("first", 0.0), ("soon", 0.5), ("late", ttl + 1.5)):
            mark = r.watch.mark()
            time.sleep(pause)
            proc = r.start(run)
            r.online(mark)
            r.edge.send(dict.fromkeys(r.site.spaces_of_source("bus-g"), "free"), kind="snapshot")
            r.watch.wait_for(sign, after=mark)
            time.sleep(0.5)  # the checkpoint: the signs are journaled
            text = (tmp_path / f"gateway-{run}.log").read_text()
            if run == "soon":
                assert REPUBLISHED in text
            elif run == "late":
                assert REPUBLISHED not in text
            _kill(proc)


def test_after_a_long_stop_the_first_counts_include_the_reports_kept_meanwhile(
    mosquitto, tmp_path, subprocess_env
):
    """Down longer than the TTL, with reports the broker kept for the gateway meanwhile:
    the first zone counts and signs after the restart already include them (every zone
    and sign used to go out with the counts of before the stop, then the backlog's 41 ms
    later: a driver read the old count)."""
    ttl = 3.0
    zone_a = topics.zone(SITE_ID, "A")
    with _restarts(mosquitto, tmp_path, subprocess_env, ttl) as r:
        spaces = r.site.spaces_of_source("bus-g")
        taken = [s for s in spaces if r.site.space(s).zone == "A"][:10]
        first = r.start("1")
        r.online(0)
        r.edge.send(dict.fromkeys(spaces, "free"), kind="snapshot")
        r.watch.wait_for(zone_a, lambda z: z["free"] == 80)
        time.sleep(0.5)  # the checkpoint
        _kill(first)
        r.edge.send(dict.fromkeys(taken, "occupied"))  # kept by the broker for the gateway
        time.sleep(ttl + 1.0)
        mark = r.watch.mark()
        r.start("2")
        r.watch.wait_for(zone_a, lambda z: z["free"] == 70, after=mark, timeout=30)
        time.sleep(0.5)
        counts = [m.json()["free"] for m in r.watch.since(mark) if m.topic == zone_a]
        assert counts and 80 not in counts, counts
