"""The compiled site kept beside the journal (``JOURNAL.site-cache``, gateway.site_stamp): a
gateway killed while changes wait in its journal (its stored signs are behind) loads it
instead of parsing the site file, and publishes the same signs a full start does; a cache
of other bytes, a damaged one or one that would build anything but a site is never used."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, MosquittoBroker, parkguide_cmd
from gateway_support import SITE_ID, Collector, Edge, display_topic, site_variant

from gateway.journal import stored_signs
from gateway.site_stamp import (
    CACHE_MAGIC,
    cache_path,
    read_site_cache,
    site_key,
    stamp_path,
    write_site_cache,
)
from parking import topics
from parking.site import load_site

pytestmark = pytest.mark.timeout(150)
FROM_CACHE = "compiled site from its cache"
PARSED_AFTER = "parsed after the signs"
JOURNAL_FILES = ("", "-wal", "-shm")
TTL_S = 300
B1_TTL_S = 3


def test_cache_round_trip_private_and_keyed(tmp_path: Path, example_site, caplog):
    db = tmp_path / "j.db"
    key = site_key(b"the site file's bytes")
    assert read_site_cache(db, key) is None  # none yet
    write_site_cache(db, key, example_site)
    site = read_site_cache(db, key)
    assert site == example_site and site.digest == example_site.digest
    assert os.stat(cache_path(db)).st_mode & 0o777 == 0o600  # private like the journal
    with caplog.at_level(logging.WARNING, logger="gateway.site_stamp"):
        assert read_site_cache(db, site_key(b"other bytes")) is None
    assert caplog.text == ""  # another site file or other code: not a fault, just not used


def _with_body(key: str, body: bytes) -> bytes:
    import hashlib

    return CACHE_MAGIC + key.encode() + b"\n" + hashlib.sha256(body).digest() + body


class _Runs:
    """Pickles as a call of ``os.system``: what a cache must never do when read."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


@pytest.mark.parametrize(
    "damage",
    ["empty", "garbage", "truncated", "altered", "not_a_site", "runs_code"],
)
def test_damaged_cache_is_ignored_with_a_warning(tmp_path: Path, example_site, caplog, damage):
    db = tmp_path / "j.db"
    key = site_key(b"x")
    write_site_cache(db, key, example_site)
    path = cache_path(db)
    good = path.read_bytes()
    marker = tmp_path / "ran"
    blob = {
        "empty": b"",
        "garbage": b"\x00\xff garbage",
        "truncated": good[: len(good) // 2],
        # still a valid pickle, of a site with another space id
        "altered": good.replace(b"A-001", b"A-00X", 1),
        # a well-formed cache (sum and all) of something else than a site
        "not_a_site": _with_body(key, pickle.dumps({"site": "x"})),
        "runs_code": _with_body(key, pickle.dumps(_Runs(f"touch {marker}"))),
    }[damage]
    path.write_bytes(blob)
    with caplog.at_level(logging.WARNING, logger="gateway.site_stamp"):
        assert read_site_cache(db, key) is None
    assert "damaged" in caplog.text
    assert not marker.exists()


# what a gateway's start imports before its first sign, and a site read from the cache in a
# fresh interpreter: which of the site's schemas pydantic built, and whether PyYAML loaded
_LOAD_FROM_CACHE = """
import json, sys
import gateway.cli, gateway.live
from gateway.site_stamp import read_site_cache
from parking import siteconfig
site = read_site_cache(sys.argv[1], sys.argv[2])
built = sorted(
    name for name, c in vars(siteconfig).items()
    if isinstance(c, type) and issubclass(c, siteconfig.BaseModel) and c.__pydantic_complete__
)
print(json.dumps({"site": site.id, "label": site.displays[0].name.zh, "built": built,
                  "yaml": "yaml" in sys.modules}))
"""


def test_a_site_from_the_cache_needs_no_yaml_nor_schemas(tmp_path: Path, example_site):
    """The restart path's imports: a site read from the cache parses no YAML and validates
    nothing, so PyYAML is not imported and pydantic builds none of the site file's schemas
    (~25 ms of the start before the first sign: docs/architecture.md)."""
    db = tmp_path / "j.db"
    key = site_key(b"the site file's bytes")
    write_site_cache(db, key, example_site)
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_FROM_CACHE, str(db), key],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got == {
        "site": example_site.id,
        "label": example_site.displays[0].name.zh,
        "built": [],
        "yaml": False,
    }


def _gateway(site_path: Path, broker: MosquittoBroker, db: Path) -> list[str]:
    return parkguide_cmd(
        "gateway", "--site", str(site_path), "--broker", broker.url, "--db", str(db)
    )


def _copy_journal(db: Path, to: Path) -> Path:
    """The journal's files (database, WAL, stamp, cache) copied to folder ``to``."""
    to.mkdir()
    for suffix in (*JOURNAL_FILES, ".site-ok", ".site-cache"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copy2(src, to / f"{db.name}{suffix}")
    return to / db.name


def _signs_of_a_start(
    cmd: list[str],
    env: dict[str, str],
    watch: Collector,
    log_path: Path,
    procs: list,
    before_kill: Callable[[], object] = lambda: None,
) -> dict[str, Any]:
    """Start the gateway; the lines of every sign it publishes (not retained ones); then
    ``before_kill()`` and the kill."""
    site = load_site(cmd[cmd.index("--site") + 1])
    mark = watch.mark()
    started = time.time()
    procs.append(
        subprocess.Popen(cmd, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    )
    signs = {}
    for d in site.displays:
        msg = watch.wait_for(
            display_topic(d.id), lambda c: c["ts"] >= started, after=mark, timeout=30
        )
        signs[d.id] = msg.json()["lines"]
    before_kill()
    procs[-1].send_signal(signal.SIGKILL)
    procs[-1].wait(10)
    return signs


def test_kill_with_changes_pending_restarts_from_the_cache(mosquitto, tmp_path, subprocess_env):
    """Closures, a hold, sources never heard and one silent past its TTL: the signs after a
    restart from the cache are the full start's, and current (the changes pending at the
    kill are in them)."""
    site_path = site_variant(tmp_path)
    # bus-g (and the silent camera) known through all the restarts; bus-b1 heard once,
    # then unknown by its TTL before the kill
    text = site_path.read_text(encoding="utf-8")
    assert text.count("ttl_s: 15") == 3
    ttls = iter((TTL_S, B1_TTL_S, TTL_S))
    site_path.write_text(
        re.sub("ttl_s: 15", lambda _: f"ttl_s: {next(ttls)}", text), encoding="utf-8"
    )
    site = load_site(site_path)
    db = tmp_path / "journal.db"
    cmd = _gateway(site_path, mosquitto, db)
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    edge_b1 = Edge(mosquitto.port, "serial-bus-b1", "bus-b1")  # the camera stays silent
    (tmp_path / "other").mkdir()
    other = MosquittoBroker(tmp_path / "other")  # the full start's, on its own broker
    other.start()
    other_watch = Collector(other.port)
    procs: list[subprocess.Popen] = []
    try:
        # first start: the site file parsed, its stamp and (once running) its cache written
        procs.append(
            subprocess.Popen(
                cmd,
                env=subprocess_env,
                stdout=(tmp_path / "first.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
        )
        watch.wait_for(topics.gateway_availability(SITE_ID), lambda p: p == "online", timeout=30)
        spaces = site.spaces_of_source("bus-g")
        edge.send(
            {s: ("occupied" if i % 3 == 0 else "free") for i, s in enumerate(spaces)},
            kind="snapshot",
        )
        heard = watch.mark()
        edge_b1.send({s: "free" for s in site.spaces_of_source("bus-b1")}, kind="snapshot")
        watch.wait_for(topics.zone(SITE_ID, "E"), lambda z: z["unknown"] == 0, after=heard)
        heard = watch.mark()  # the gateway's messages come in order: an older one is in
        # a manager's closure, and a car on its way to a held space
        mark = watch.mark()
        now = time.time()
        control = {"action": "close", "by": "test", "reason": "repairs", "ts": now}
        edge.raw(topics.space_control(SITE_ID, "A-002"), json.dumps(control))
        arrival = {"class": "resident", "request_id": "car-1", "ts": now}
        edge.raw(topics.arrival(SITE_ID, "north"), json.dumps(arrival))
        held = watch.wait_for(topics.assignment(SITE_ID, "north"), after=mark).json()["space"]
        assert held
        key = site_key(site_path.read_bytes())
        deadline = time.monotonic() + 15
        while read_site_cache(db, key) != site and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_site_cache(db, key) == site
        # bus-b1's spaces unknown by its TTL; checkpointed: the journal's signs are current
        watch.wait_for(
            topics.zone(SITE_ID, "E"), lambda z: z["unknown"] == z["total"], 15, after=heard
        )
        time.sleep(1.0)

        # changes the signs show, then the kill before the checkpoint takes them in
        mark = watch.mark()
        free = [s for i, s in enumerate(spaces) if i % 3 and s not in (held, "A-002")]
        assert all(s.startswith("A-") for s in free[:5])
        edge.send({s: "occupied" for s in free[:5]})
        # the zone's counts go out after the signs: those are out too
        watch.wait_for(topics.zone(SITE_ID, "A"), after=mark)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        time.sleep(0.3)  # what it sent before it died has reached the collector
        before = {d.id: watch.latest(display_topic(d.id))["lines"] for d in site.displays}
        assert stored_signs(db) == [], "the kill came after the checkpoint: nothing pending"
        # the same journal three times more: a full start, a damaged cache, another key's
        copies = {name: _copy_journal(db, tmp_path / name) for name in ("full", "damaged", "key")}
        stamp_path(copies["full"]).unlink()  # the full start: parse, validate, no cache
        cache_path(copies["full"]).unlink()
        blob = cache_path(db).read_bytes()
        cache_path(copies["damaged"]).write_bytes(blob[:-10] + b"0123456789")
        write_site_cache(copies["key"], site_key(b"another site file"), site)

        def start(db: Path, broker: MosquittoBroker, collector: Collector, name: str, **kw):
            log_path = tmp_path / f"{name}.log"
            cmd = _gateway(site_path, broker, db)
            signs = _signs_of_a_start(cmd, subprocess_env, collector, log_path, procs, **kw)
            return signs, log_path.read_text()

        def cached(db: Path) -> Callable[[], None]:
            def wait() -> None:  # written once the service runs
                deadline = time.monotonic() + 15
                while read_site_cache(db, key) != site and time.monotonic() < deadline:
                    time.sleep(0.1)

            return wait

        fast, text = start(db, mosquitto, watch, "fast")
        assert FROM_CACHE in text and PARSED_AFTER not in text, text
        expected, text = start(copies["full"], other, other_watch, "full")
        assert FROM_CACHE not in text
        assert fast == expected
        # and they are current: the five spaces taken, the closure and the hold kept
        assert fast == before

        # a damaged cache: warned, the site file parsed, the same signs, the cache rewritten
        signs, text = start(
            copies["damaged"], other, other_watch, "damaged", before_kill=cached(copies["damaged"])
        )
        assert "is damaged" in text and PARSED_AFTER in text and FROM_CACHE not in text, text
        assert signs == expected
        assert read_site_cache(copies["damaged"], key) == site

        # a cache of other bytes (another site file or other code): silently the parse
        signs, text = start(
            copies["key"], other, other_watch, "key", before_kill=cached(copies["key"])
        )
        assert PARSED_AFTER in text and FROM_CACHE not in text and "damaged" not in text, text
        assert signs == expected
        assert read_site_cache(copies["key"], key) == site
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        watch.stop()
        other_watch.stop()
        edge.stop()
        edge_b1.stop()
        other.stop()
