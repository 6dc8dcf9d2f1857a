"""Durable MQTT publisher of occupancy reports, shared by every edge agent.

``ReportPublisher`` gives an agent five calls (see its docstring):

* ``report(kind, spaces)`` -- number a delta or snapshot ``OccupancyReport``
  (random ``boot`` per process, ``seq`` counting up) and queue it;
* ``snapshot_due()`` -- whether the agent should report a snapshot now (after
  every (re)connect, and periodically while connected);
* ``request_snapshot()`` -- make one due now (a step of the wall clock, ``edge.clocks``);
* ``publish_health(report)`` -- retained QoS 0 health, latest one wins (numbered by
  ``boot`` and ``seq`` as reports are, so the gateway orders it without the clock);
* ``stop()`` -- publish ``offline``, flush, disconnect.

Durability: a delta is appended to an on-disk spool (SQLite in WAL mode, one
file per agent) before anything else, and leaves it only when the broker has
acknowledged it (PUBACK, QoS 1). A snapshot is kept in memory instead (sent after
what the spool holds, acknowledged like the rest): the next one replaces it, and
spooling each cost an edge box's SD card two synced writes every few seconds; it is
spooled with the delta that follows it when the broker has not taken it yet. While the broker is unreachable, reports
wait on disk; when it returns they go out in spool order, at most
``max_inflight`` unacknowledged at a time. A restarted agent drains what its
previous run left first, with that run's boot id and seq numbers, because
they are stored in the payloads themselves. QoS 1 is at-least-once: after a
lost acknowledgement a report may arrive twice, and consumers drop the repeat
by (agent, boot, seq).

Threads: all paho calls happen on one network thread of our own, which
selects on the MQTT socket and a wake-up pipe; the agent's thread only
touches the spool (under a lock) and wakes it. Each connection attempt uses a
fresh paho client, so nothing is retransmitted behind the spool's back and
the order is the spool's. Reconnects back off exponentially with jitter
(``parking.broker.backoff_delay``), reset after an accepted connection.

A spool that cannot be written or read (a full disk, an I/O error) does not stop the
agent: a report it cannot take is kept in memory (at most ``max_unspooled``, the oldest
dropped beyond that: a seq gap the gateway counts), sent from there after everything
the spool holds (seq order: the gateway takes a lower seq after a higher one for a
repeat), and moved into the spool as soon as it takes writes again. Meanwhile
``spool_ok`` is False, which the agents' health reports as ``degraded`` with
``spool_health()`` in its counters, and an error is logged at most once a minute.

Client id: ``parkguide-{site}-{agent}``, with a password plus a random suffix drawn once
and kept in the spool folder (``{site}.{agent}.clientid``, 0600): stable across restarts
(a restarted agent takes its old connection over, whose last will would otherwise say
``offline`` after the new ``online``) and unknown to the broker's other users.

Two agents with one id but different spool folders both run: when their client ids are
the same (no password) the broker just closes the older connection when the other
connects (MQTT 3.1.1 sends no reason), so each takes the other's session over within a
second, again and again. The publisher tells that apart from an outage by its
pattern, accepted connections closed by the broker ``TAKEOVER_DROPS`` times within
``TAKEOVER_WINDOW_S``, and says so in an error. With a password each spool folder has
its own suffix, so such twins both stay connected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import select
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt

from parking import topics
from parking.broker import (
    BrokerConfig,
    backoff_delay,
    is_client_suffix,
    new_client_suffix,
    refusal_hint,
    shown_client_id,
)
from parking.payloads import (
    HealthReport,
    OccupancyReport,
    SpaceObservation,
    fit_health,
    is_identifier,
)
from parking.private import create_private
from parking.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_INTERVAL_S = 60.0
DEFAULT_MAX_INFLIGHT = 20
DEFAULT_KEEPALIVE_S = 30
DEFAULT_FLUSH_TIMEOUT_S = 5.0
DEFAULT_MAX_UNSPOOLED = 1000
"""reports kept in memory while the spool cannot take them; the oldest go beyond this (the
next snapshot, on connect and periodically, puts every space right again)"""
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0  # a broker back after a power cut hears from every agent within it
_WARN_EVERY_S = 60.0  # connection failures: a warning at most this often, debug otherwise
TAKEOVER_DROPS = 3
TAKEOVER_WINDOW_S = 30.0
"""this many accepted connections closed by the broker within this many seconds: not an
outage (the broker keeps accepting us) but another client with our client id"""
ECHO_WAIT_S = 5.0
"""How long after the broker acknowledged the agent's own ``online`` the agent waits to hear
it back before it says the broker drops what it sends (an ACL that does not let this login
write as this agent). Counted from the PUBACK, not the connect: over a slow link the echo
comes late, and the ERROR would be false."""
_SPOOL_ERROR_EVERY_S = 60.0  # a failing spool: an error at most this often, debug otherwise
SPOOL_ERRORS = (sqlite3.DatabaseError, OSError)
"""what a spool call raises when the disk is full (SQLITE_FULL), fails (SQLITE_IOERR) or the
file is damaged: the agent runs on without the spool, never dies of it"""

ReportKind = Literal["delta", "snapshot"]


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/parkguide`` or ``~/.local/state/parkguide``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "parkguide"


class SpoolBusy(RuntimeError):
    """Another process already uses this agent's spool (two agents with one id)."""


def kept_client_suffix(path: Path) -> str:
    """The random client-id suffix kept in ``path``, drawn and written (0600) when there is
    none yet. Call it holding the spool's lock: one agent per file."""
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        kept = ""
    except UnicodeDecodeError:
        kept = ""  # damaged: drawn again (the id changes once)
    if is_client_suffix(kept):
        return kept
    suffix = new_client_suffix()
    # written aside and renamed: a power cut leaves the old file or the new one, never half
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{suffix}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return suffix


class ReportSpool:
    """Reports not yet acknowledged by the broker, in order, on disk (SQLite, WAL).

    The lock is taken at once (``SpoolBusy``); the database is opened on first use, and
    again on the next use after that failed (on a full disk SQLite cannot even size the
    WAL index of a file it opens), so every other call may raise one of ``SPOOL_ERRORS``.
    """

    def __init__(self, path: Path):
        # private: the reports name the site's spaces, and a lock file other users could
        # open is one they could flock to keep the agent from starting. An existing
        # folder keeps the mode its operator gave it
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._lockfd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lockfd)
            raise SpoolBusy(
                f"spool {path} is in use by another process (another agent with the same id?)"
            ) from None
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            create_private(self.path)  # SQLite gives its -wal and -shm files this mode
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # FULL: a report the agent counted as queued survives a power cut, not only
                # a crash
                db.execute("PRAGMA synchronous=FULL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS outbox ("
                    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " topic TEXT NOT NULL,"
                    " payload BLOB NOT NULL,"
                    " queued REAL NOT NULL)"
                )
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    @property
    def opened(self) -> bool:
        """The database could be opened (in this process)."""
        return self._db is not None

    def append(self, topic: str, payload: bytes) -> int:
        return self.extend([(topic, payload)])[-1]

    def extend(self, rows: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append ``rows`` (topic, payload) in order, all or none; their row ids."""
        db = self._conn()
        queued = time.time()
        ids = []
        db.execute("BEGIN IMMEDIATE")  # one transaction: one fsync, and never half of them
        try:
            for topic, payload in rows:
                cur = db.execute(
                    "INSERT INTO outbox (topic, payload, queued) VALUES (?, ?, ?)",
                    (topic, payload, queued),
                )
                ids.append(int(cur.lastrowid or 0))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls some failures (SQLITE_FULL) back itself
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        return ids

    def after(self, row_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` rows after ``row_id``, oldest first."""
        db = self._conn()
        return db.execute(
            "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (row_id, limit),
        ).fetchall()

    def delete(self, row_id: int) -> None:
        self._conn().execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):  # its last checkpoint may find no room
                self._db.close()
            self._db = None
        os.close(self._lockfd)


class ReportPublisher:
    """Publishes one agent's occupancy reports, availability and health to the broker.

    Use::

        pub = ReportPublisher(BrokerConfig.from_url(url), site_id, agent_id, source_id)
        pub.start()
        while running:
            ...
            pub.report("delta", changed_observations)     # when changes settle
            if pub.snapshot_due():
                pub.report("snapshot", all_observations)  # after a (re)connect, and every 60 s
            pub.publish_health(health_report)
        pub.stop()

    Call ``report`` from one thread, so a snapshot and the deltas around it keep
    their order. ``report`` never blocks on the network.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        site: str,
        agent: str,
        source: str,
        *,
        spool_dir: Path | str | None = None,
        snapshot_interval_s: float = DEFAULT_SNAPSHOT_INTERVAL_S,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        max_unspooled: int = DEFAULT_MAX_UNSPOOLED,
        clock: Callable[[], float] = time.time,
    ):
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if max_unspooled < 1:
            raise ValueError("max_unspooled must be at least 1")
        check_agent_id(agent)
        self.broker = broker
        self.site = site
        self.agent = agent
        self.source = source
        self.boot = secrets.token_hex(6)
        self.client_base = f"parkguide-{site}-{agent}"
        self.client_id = self.client_base  # its suffix is read in start(), under the lock
        self.snapshot_interval_s = snapshot_interval_s
        self.max_inflight = max_inflight
        self.keepalive_s = keepalive_s
        self.max_unspooled = max_unspooled
        self._clock = clock
        self.topic_occupancy = topics.edge_occupancy(site, agent)
        self.topic_availability = topics.edge_availability(site, agent)
        self.topic_health = topics.edge_health(site, agent)
        self.spool_path = Path(spool_dir or default_spool_dir()) / f"{site}.{agent}.sqlite3"
        self.client_id_path = self.spool_path.with_name(f"{site}.{agent}.clientid")

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._spool: ReportSpool | None = None
        self._seq = 0
        # per connection, network thread only
        self._connected = False
        self._sent_upto = 0
        self._inflight: dict[int, int] = {}  # mid -> spool row id
        self._unspooled_sent_upto = 0
        self._inflight_unspooled: dict[int, int] = {}  # mid -> key in _unspooled
        # reports the spool could not take, by key, in order; every one newer than every
        # report in the spool (they go out after those, and into it before a newer one)
        self._unspooled: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
        # why each is in memory: "volatile" (a snapshot: the next one replaces it, so it is
        # written to the card only with a delta that follows it), "failed" (the spool
        # refused it: health degraded)
        self._kept_why: dict[int, str] = {}
        self._unspooled_key = 0
        self._unspooled_dropped = 0
        self._undeleted: set[int] = set()  # acknowledged rows the spool could not delete
        self._spool_error: str | None = None  # the last spool failure, until a write works
        self._spool_log = RateLimitedLog(log, _SPOOL_ERROR_EVERY_S)
        # written by paho callbacks, read by the network thread
        self._acks: deque[int] = deque()
        self._accepted = threading.Event()
        self._refused: str | None = None
        # agent side
        self._snapshot_requested = False
        self._last_snapshot = 0.0
        self._flush_timeout_s = DEFAULT_FLUSH_TIMEOUT_S
        self._health: HealthReport | None = None
        self._health_dirty = False
        self._health_seq = 0
        self._warnings = RateLimitedLog(log, _WARN_EVERY_S)
        self._drops: deque[float] = deque()  # when the broker closed accepted connections
        # the own-availability check (network thread): until when to wait for the echo of
        # this connection's ``online``, None when not waiting; set by on_message
        self._echo_due: float | None = None
        self._echo_mid: int | None = None  # the ``online`` whose PUBACK starts the wait
        self._echoed = False
        self.stats: dict[str, int] = dict.fromkeys(
            ("reports", "acked", "connects", "refused", "connection_failures", "disconnects"), 0
        )

    # --- agent API ------------------------------------------------------------

    def start(self) -> None:
        """Open the spool (raises SpoolBusy, or OSError when its folder is unusable) and
        start connecting in the background."""
        self._spool = ReportSpool(self.spool_path)
        if self.broker.username and self.broker.username != self.agent:
            log.warning(
                "MQTT username %r is not this agent's id %r: under the shipped ACL "
                "(deploy/mosquitto/parkguide.acl) the broker silently drops this agent's "
                "reports; use --username %s (PARKGUIDE_MQTT_USERNAME=%s) and that user's "
                "password",
                self.broker.username,
                self.agent,
                self.agent,
                self.agent,
            )
        try:
            self.client_id = self._session_id()
        except OSError:
            self._spool.close()
            self._spool = None
            raise
        with self._lock:
            try:
                left = self._spool.count()
            except SPOOL_ERRORS as exc:  # a full disk at start: run on, reports in memory
                self._spool_failed("open", exc)
                left = 0
        if left:
            log.info("spool %s: %d report(s) from before, sent first", self.spool_path, left)
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.agent}", daemon=True)
        self._thread.start()

    def report(self, kind: ReportKind, spaces: Sequence[SpaceObservation]) -> OccupancyReport:
        """Number, spool and (when connected) send a report; returns it. A report the spool
        cannot take is kept in memory and sent from there (see ``spool_ok``)."""
        with self._lock:
            if self._spool is None:
                raise RuntimeError("ReportPublisher.start() was not called")
            # ts is the wall clock now: right from a step of it on. A report already
            # spooled keeps the times it was built with (history; the snapshot an agent
            # asks for after a step puts the spaces right, edge.clocks)
            rep = OccupancyReport(
                agent=self.agent,
                source=self.source,
                boot=self.boot,
                seq=self._seq,
                ts=self._clock(),
                kind=kind,
                spaces=list(spaces),
            )
            # numbered whether the spool takes it or not: one lost later is a gap the
            # gateway counts, and no seq is ever used twice
            self._seq += 1
            payload = rep.model_dump_json().encode()
            if kind == "snapshot":
                # a snapshot repeats what the spool's deltas already said and is replaced
                # by the next one: kept in memory, it costs an SD card no writes (it was
                # two synced writes every few seconds on a quiet site); it is spooled only
                # when a delta follows before the broker took it
                self._keep(self.topic_occupancy, payload, "volatile")
            else:
                self._queue(self.topic_occupancy, payload)
            self.stats["reports"] += 1
            if kind == "snapshot":
                self._snapshot_requested = False
                self._last_snapshot = time.monotonic()
        self._wake()
        return rep

    def snapshot_due(self) -> bool:
        """True after a (re)connect and every ``snapshot_interval_s`` while connected."""
        with self._lock:
            if self._snapshot_requested:
                return True
            return (
                self._connected
                and time.monotonic() - self._last_snapshot >= self.snapshot_interval_s
            )

    def request_snapshot(self) -> None:
        """Make ``snapshot_due()`` true now (the agent's times changed: a wall-clock step)."""
        with self._lock:
            self._snapshot_requested = True

    def publish_health(self, report: HealthReport) -> None:
        """Retained, QoS 0: sent now if connected, else the latest is sent on connect."""
        report = fit_health(report)  # a bus of thousands of detectors: only what is not ok
        with self._lock:
            self._health_seq += 1
            self._health = report.model_copy(update={"boot": self.boot, "seq": self._health_seq})
            self._health_dirty = True
        self._wake()

    @property
    def connected(self) -> bool:
        """The broker accepted our connection (CONNACK success) and it is up."""
        return self._connected

    @property
    def pending(self) -> int:
        """Reports not yet acknowledged by the broker: in the spool and kept in memory."""
        with self._lock:
            if self._spool is None:
                return 0
            try:
                spooled = self._spool.count() - len(self._undeleted)
            except SPOOL_ERRORS as exc:
                self._spool_failed("read", exc)
                spooled = len(self._inflight)  # at least those
            return spooled + len(self._unspooled)

    @property
    def spool_ok(self) -> bool:
        """False while the spool fails (until a write works again) or reports it could not
        take wait in memory: an agent's health is then ``degraded``."""
        with self._lock:
            return self._spool_error is None and not self._failed_in_memory()

    def spool_health(self) -> dict[str, int]:
        """Health counters: ``spool_full`` 1 while not ``spool_ok``, ``unspooled`` the
        reports in memory because the spool refused them, ``unspooled_dropped`` those lost
        beyond ``max_unspooled``."""
        with self._lock:
            return {
                "spool_full": int(not self.spool_ok),
                "unspooled": self._failed_in_memory(),
                "unspooled_dropped": self._unspooled_dropped,
            }

    def _failed_in_memory(self) -> int:
        return sum(1 for why in self._kept_why.values() if why == "failed")

    def wait_until_drained(self, timeout: float) -> bool:
        """Block until every spooled report was acknowledged (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending == 0:
                return True
            time.sleep(0.02)
        return self.pending == 0

    def stop(self, flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Send what is spooled (up to the timeout), publish ``offline``, disconnect."""
        self._flush_timeout_s = flush_timeout_s
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(flush_timeout_s + 10.0)
        with self._lock:
            if self._spool is not None:
                self._inflight_unspooled.clear()  # the network thread is gone
                self._unspooled_sent_upto = 0
                while self._kept_why and self._kept_why[next(reversed(self._kept_why))] == (
                    "volatile"
                ):
                    # a stopped agent's newest report, a snapshot, says nothing its next run
                    # will not (one with a report after it goes with that one: no seq gap)
                    key = next(reversed(self._kept_why))
                    del self._unspooled[key], self._kept_why[key]
                if self._unspooled:
                    self._spool_unspooled()  # the disk may have room again: one more try
                try:
                    left = self._spool.count() - len(self._undeleted)
                except SPOOL_ERRORS as exc:
                    self._spool_failed("read", exc)
                    left = 0
                if left:
                    log.warning(
                        "stopping with %d report(s) unsent; they stay in %s for the next start",
                        left,
                        self.spool_path,
                    )
                if self._unspooled:
                    log.error(
                        "stopping with %d report(s) the spool %s could not take: they are lost",
                        len(self._unspooled),
                        self.spool_path,
                    )
                self._spool.close()
                self._spool = None
        if self._wake_r >= 0:  # close once: a reused descriptor number is someone else's file
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # --- spool, or memory when it fails (under the lock) ---------------------------

    def _queue(self, topic: str, payload: bytes) -> None:
        """Spool a report, after those kept in memory (a snapshot, or what the spool refused
        before); keep it in memory too if that fails."""
        if not self._spool_unspooled((topic, payload)):
            self._keep(topic, payload, "failed")

    def _spool_unspooled(self, *more: tuple[str, bytes]) -> bool:
        """Move the reports kept in memory, then ``more``, into the spool; False if it
        failed (they all stay where they were)."""
        assert self._spool is not None
        moved = len(self._unspooled)
        try:
            rows = self._spool.extend([*self._unspooled.values(), *more])
        except SPOOL_ERRORS as exc:
            self._spool_failed("write to", exc)
            return False
        # those in flight go on being so as their rows: the broker's acknowledgement deletes
        # the row, and a reconnect sends them again from the spool, in order
        row_of = dict(zip(self._unspooled, rows, strict=False))
        for mid, key in self._inflight_unspooled.items():
            self._inflight[mid] = row_of[key]  # _pump skips a row already in flight
        self._inflight_unspooled.clear()
        self._unspooled_sent_upto = 0
        self._unspooled.clear()
        self._kept_why.clear()
        if self._spool_error is not None:
            self._spool_error = None
            self._spool_log(
                "spool-ok",
                logging.INFO,
                "report spool %s takes reports again%s",
                self.spool_path,
                f" ({moved} kept in memory moved into it)" if moved else "",
            )
        for row in list(self._undeleted):  # there is room for that again too
            self._delete(row)
        return True

    def _keep(self, topic: str, payload: bytes, why: str) -> None:
        self._unspooled_key += 1
        self._unspooled[self._unspooled_key] = (topic, payload)
        self._kept_why[self._unspooled_key] = why
        # bounded: those not sent yet (those in flight are max_inflight at most); the oldest
        # go, the newest say more about the spaces now
        if len(self._unspooled) - len(self._inflight_unspooled) > self.max_unspooled:
            oldest = next(k for k in self._unspooled if k > self._unspooled_sent_upto)
            del self._unspooled[oldest], self._kept_why[oldest]
            self._unspooled_dropped += 1
            self._spool_log(
                "unspooled-dropped",
                logging.WARNING,
                "%d report(s) in memory, none spooled: dropping the oldest (%d so far)",
                self.max_unspooled,
                self._unspooled_dropped,
            )

    def _spool_failed(self, action: str, exc: BaseException) -> None:
        self._spool_error = f"{action}: {exc}"
        full = "full" in str(exc).lower() or getattr(exc, "errno", None) == errno.ENOSPC
        self._spool_log(
            "spool",
            logging.ERROR,
            "cannot %s the report spool %s (%s)%s; until it works again, reports are sent "
            "from memory while the broker is reachable and kept in memory otherwise (at "
            "most %d, lost if the agent stops)",
            action,
            self.spool_path,
            exc,
            ": free space on that disk" if full else "",
            self.max_unspooled,
        )

    def _session_id(self) -> str:
        """This agent's client id, its suffix kept in ``client_id_path``. A full disk gets
        a suffix for this run only (the agent never dies of a full disk); any other
        failure is the operator's to fix: OSError, naming the file."""
        path = self.client_id_path
        try:
            return self.broker.session_id(self.client_base, lambda: kept_client_suffix(path))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(
                    exc.errno,
                    f"cannot keep the MQTT client id in {path} ({exc.strerror}): the agent's "
                    f"user must be able to write {path.parent}",
                ) from None
            log.error(
                "cannot keep the MQTT client id in %s (%s): free space on that disk; this "
                "run uses a new one",
                path,
                exc,
            )
            return self.broker.session_id(self.client_base, new_client_suffix)

    # --- network thread ---------------------------------------------------------

    def _wake(self) -> None:
        # a full pipe means the thread is awake anyway; a closed one, that it has stopped
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.broker.apply(client)
        client.will_set(
            self.topic_availability,
            topics.OFFLINE,
            qos=topics.QOS_AVAILABILITY,
            retain=topics.RETAIN_AVAILABILITY,
        )
        # we never hand paho more than this: the window keeps the spool's order
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # paho callbacks: only record what happened; the loop acts on it (no locks here)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._refused = str(reason_code)
            else:
                self._accepted.set()
        except Exception:  # a callback must never take the network thread down
            log.exception("on_connect")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            log.debug("disconnected from %s: %s", self.broker.url, reason_code)
        except Exception:
            log.exception("on_disconnect")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        try:
            self._acks.append(mid)
        except Exception:
            log.exception("on_publish")

    def _on_message(self, client, userdata, message) -> None:
        try:
            # a retained copy is the past (another run's, or another login's); only a copy
            # forwarded live (retain flag cleared) is this connection's ``online`` coming back
            if (
                message.topic == self.topic_availability
                and not message.retain
                and message.payload == topics.ONLINE.encode()
            ):
                self._echoed = True
        except Exception:
            log.exception("on_message")

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._new_client()
            self._accepted.clear()
            self._refused = None
            try:
                client.connect(self.broker.host, self.broker.port, self.keepalive_s)
                self._session(client)
            except (OSError, ValueError, mqtt.WebsocketConnectionError) as exc:
                self.stats["connection_failures"] += 1
                # a broker that is away (restarting) is an outage: a takeover never refuses
                # the connection, so the closes counted so far were not one
                self._drops.clear()
                why = self.broker.why_unreachable(exc)
                self._warn("cannot reach MQTT broker %s: %s", self.broker.url, why)
            except Exception:
                log.exception("MQTT session with %s failed", self.broker.url)
            finally:
                with self._lock:
                    was = self._connected
                    self._connected = False
                    self._inflight.clear()
                    self._inflight_unspooled.clear()
                    self._unspooled_sent_upto = 0
                    self._acks.clear()
                if was:
                    self.stats["disconnects"] += 1
                    if not self._stop.is_set():
                        self._lost_connection()
                try:
                    client.disconnect()
                    client.loop_write()
                except Exception:  # the socket may already be gone
                    pass
                sock = client.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            if self._stop.is_set():
                break
            if self._accepted.is_set():
                attempt = 0  # the connection worked: start the backoff over
            delay = backoff_delay(attempt, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S)
            attempt += 1
            log.debug("reconnecting to %s in %.2f s", self.broker.url, delay)
            self._stop.wait(delay)

    def _session(self, client: mqtt.Client) -> None:
        """Run one connection until it ends or we are stopped."""
        while not self._stop.is_set():
            if not self._step(client, 1.0):
                return
        if self._connected:
            self._shutdown(client)

    def _step(self, client: mqtt.Client, timeout: float) -> bool:
        """One round of socket I/O and housekeeping; False when the connection is over."""
        sock = client.socket()
        if sock is None:
            return False
        wlist = [sock] if client.want_write() else []
        readable, writable, _ = select.select([sock, self._wake_r], wlist, [], timeout)
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        ok = not (sock in readable and client.loop_read() != mqtt.MQTT_ERR_SUCCESS)
        ok = ok and not (sock in writable and client.loop_write() != mqtt.MQTT_ERR_SUCCESS)
        ok = ok and client.loop_misc() == mqtt.MQTT_ERR_SUCCESS
        if self._refused is not None:
            # the broker answers CONNACK with a failure and hangs up in one go
            self._log_refused(self._refused)
            return False
        if not ok:
            if not self._accepted.is_set():  # hung up without a CONNACK: a setup error
                self._warn("MQTT broker %s: %s", self.broker.url, self.broker.why_closed_early())
            return False
        self._service(client)
        return True

    def _service(self, client: mqtt.Client) -> None:
        with self._lock:
            if not self._connected and self._accepted.is_set():
                self._connected = True
                self._sent_upto = 0
                self._unspooled_sent_upto = 0
                self._inflight.clear()
                self._inflight_unspooled.clear()
                self.stats["connects"] += 1
                log.info(
                    "connected to MQTT broker %s as %s",
                    self.broker.url,
                    shown_client_id(self.client_id),
                )
                # a broker drops what an ACL refuses without a word (MQTT 3.1.1 has no
                # refusal for a publish): subscribed first, this agent hears its own
                # ``online`` back only if the broker took it
                client.subscribe(self.topic_availability, qos=0)
                self._echo_due = None  # the wait starts at the broker's PUBACK (_acked)
                self._echoed = False
                self._echo_mid = client.publish(
                    self.topic_availability,
                    topics.ONLINE,
                    qos=topics.QOS_AVAILABILITY,
                    retain=topics.RETAIN_AVAILABILITY,
                ).mid
                self._snapshot_requested = True
                self._health_dirty = self._health is not None
            if not self._connected:
                return
            self._check_echo(client)
            while self._acks:
                self._acked(self._acks.popleft())
            if self._health_dirty and self._health is not None:
                client.publish(
                    self.topic_health,
                    self._health.model_dump_json(),
                    qos=topics.QOS_HEALTH,
                    retain=topics.RETAIN_HEALTH,
                )
                self._health_dirty = False
            self._pump(client)

    def _check_echo(self, client: mqtt.Client) -> None:
        """Once per connection, ECHO_WAIT_S after the broker acknowledged this agent's
        ``online``: whether it passed it on."""
        if self._echo_due is None or (not self._echoed and time.monotonic() < self._echo_due):
            return
        self._echo_due = None
        client.unsubscribe(self.topic_availability)
        if self._echoed:
            return
        self._warnings(
            "echo",
            logging.ERROR,
            "the MQTT broker %s never passed this agent's own 'online' (%s) back within %.0f s "
            "of acknowledging it. Most likely it drops this agent's messages: under the shipped "
            "ACL its login %r may publish only under its own agent id, so none of its reports "
            "reach the gateway; check PARKGUIDE_MQTT_USERNAME (--username: the agent id %s under "
            "the shipped ACL). With an ACL of your own, it must let this login write and read "
            "%s (read only for this check)",
            self.broker.url,
            self.topic_availability,
            ECHO_WAIT_S,
            self.broker.username or "(anonymous)",
            self.agent,
            self.topic_availability,
        )

    def _acked(self, mid: int) -> None:
        if mid == self._echo_mid:
            # the broker took the ``online`` (it acknowledges even what its ACL drops, having
            # passed on what it allows first): a slow link or broker is no reason to wait on
            self._echo_mid = None
            self._echo_due = time.monotonic() + ECHO_WAIT_S
        row = self._inflight.pop(mid, None)
        if row is not None and self._spool is not None:
            self.stats["acked"] += 1
            self._delete(row)
        key = self._inflight_unspooled.pop(mid, None)
        if key is not None:
            self.stats["acked"] += 1
            self._unspooled.pop(key, None)
            self._kept_why.pop(key, None)

    def _delete(self, row: int) -> None:
        """Delete an acknowledged row; one the spool refuses is deleted again after the next
        write that works, and never sent again meanwhile."""
        assert self._spool is not None
        try:
            self._spool.delete(row)
        except SPOOL_ERRORS as exc:
            self._undeleted.add(row)
            self._spool_failed("delete from", exc)
        else:
            self._undeleted.discard(row)

    def _pump(self, client: mqtt.Client) -> None:
        """Send the next spool rows, then the reports kept in memory, keeping at most
        ``max_inflight`` unacknowledged."""
        room = self.max_inflight - len(self._inflight) - len(self._inflight_unspooled)
        if room <= 0 or self._spool is None:
            return
        try:
            rows = self._spool.after(self._sent_upto, room)
        except SPOOL_ERRORS as exc:
            self._spool_failed("read", exc)
            if self._spool.opened:
                return  # those in memory are newer than what it holds: they wait their turn
            # never opened in this run (a full disk at start): it holds no report of this
            # boot, and a previous run's are older than anything the gateway now needs
            rows = []
        in_flight = set(self._inflight.values())
        for row_id, topic, payload in rows:
            if row_id in self._undeleted or row_id in in_flight:  # acknowledged, or on its way
                self._sent_upto = row_id
                continue
            info = client.publish(topic, payload, qos=topics.QOS_OCCUPANCY, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # the connection is going; the next one starts from the spool again
            self._inflight[info.mid] = row_id
            self._sent_upto = row_id
        room -= len(rows)  # none left means the spool may hold more: memory waits
        for key, (topic, payload) in self._unspooled.items():
            if room <= 0:
                return
            if key <= self._unspooled_sent_upto:
                continue
            info = client.publish(topic, payload, qos=topics.QOS_OCCUPANCY, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            self._inflight_unspooled[info.mid] = key
            self._unspooled_sent_upto = key
            room -= 1

    def _shutdown(self, client: mqtt.Client) -> None:
        deadline = time.monotonic() + self._flush_timeout_s
        while time.monotonic() < deadline and (self._inflight or self.pending):
            if not self._step(client, 0.05):
                return
        info = client.publish(
            self.topic_availability,
            topics.OFFLINE,
            qos=topics.QOS_AVAILABILITY,
            retain=topics.RETAIN_AVAILABILITY,
        )
        while time.monotonic() < deadline + 1.0 and not info.is_published():
            if not self._step(client, 0.05):
                return
        client.disconnect()

    def _lost_connection(self) -> None:
        """The broker closed a connection it had accepted: an outage, or, when that keeps
        happening while it accepts us again at once, a second agent with our id."""
        now = time.monotonic()
        self._drops.append(now)
        while now - self._drops[0] > TAKEOVER_WINDOW_S:
            self._drops.popleft()
        if len(self._drops) < TAKEOVER_DROPS:
            log.warning("lost the MQTT broker %s; spooling reports", self.broker.url)
            return
        self._warnings(
            "takeover",
            logging.ERROR,
            "another client with the same client id (agent %s) keeps taking over this "
            "session: is a second agent with id %s running, e.g. under systemd? (MQTT broker "
            "%s closed this connection %d times in %.0f s, accepting it again each time; "
            "a second agent is refused at start only when it shares this one's spool folder "
            "%s); meanwhile the spaces of both flip between unknown and live",
            self.agent,
            self.agent,
            self.broker.url,
            len(self._drops),
            now - self._drops[0],
            self.spool_path.parent,
        )

    def _log_refused(self, reason: str) -> None:
        self.stats["refused"] += 1
        hint = refusal_hint(reason, self.broker)
        log.error("MQTT broker %s refused the connection: %s%s", self.broker.url, reason, hint)

    def _warn(self, msg: str, *args: object) -> None:
        self._warnings("broker", logging.WARNING, msg + " (retrying with backoff)", *args)


def check_agent_id(agent: str) -> None:
    """ValueError unless ``agent`` can be an agent id (it names MQTT topics)."""
    if not is_identifier(agent):
        raise ValueError(
            f"agent id {agent!r}: 1-64 letters, digits and _ . : - (it names MQTT topics)"
        )


def choose_agent_id(requested: str | None, source: str, bound: str) -> str:
    """The agent id to run as: ``--agent`` or the one the site file binds ``source`` to (a
    warning when they differ: the gateway accepts the source's reports from that one only)."""
    agent_id = requested or bound
    check_agent_id(agent_id)  # refused before any warning about it
    if agent_id != bound:
        log.warning(
            "--agent %s: the site file accepts %s's reports from %r only; the gateway will "
            "refuse these unless the site says 'agent: %s' for it",
            agent_id,
            source,
            bound,
            agent_id,
        )
    return agent_id
