"""Durable MQTT publisher of occupancy reports, shared by every edge agent.

``ReportPublisher`` gives an agent four calls (see its docstring):

* ``report(kind, spaces)`` -- number a delta or snapshot ``OccupancyReport``
  (random ``boot`` per process, ``seq`` counting up) and queue it;
* ``snapshot_due()`` -- whether the agent should report a snapshot now (after
  every (re)connect, and periodically while connected);
* ``publish_health(report)`` -- retained QoS 0 health, latest one wins;
* ``stop()`` -- publish ``offline``, flush, disconnect.

Durability: a report is appended to an on-disk spool (SQLite in WAL mode, one
file per agent) before anything else, and leaves it only when the broker has
acknowledged it (PUBACK, QoS 1). While the broker is unreachable, reports
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

Two agents with one id but different spool folders both run: with MQTT 3.1.1 the
broker just closes the older connection when the other connects with the same
client id (no reason is sent), so each takes the other's session over within a
second, again and again. The publisher tells that apart from an outage by its
pattern, accepted connections closed by the broker ``TAKEOVER_DROPS`` times within
``TAKEOVER_WINDOW_S``, and says so in an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import select
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt

from parking import topics
from parking.broker import BrokerConfig, backoff_delay
from parking.payloads import (
    HealthReport,
    OccupancyReport,
    SpaceObservation,
    fit_health,
    is_identifier,
)
from parking.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_INTERVAL_S = 60.0
DEFAULT_MAX_INFLIGHT = 20
DEFAULT_KEEPALIVE_S = 30
DEFAULT_FLUSH_TIMEOUT_S = 5.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
_WARN_EVERY_S = 60.0  # connection failures: a warning at most this often, debug otherwise
TAKEOVER_DROPS = 3
TAKEOVER_WINDOW_S = 30.0
"""this many accepted connections closed by the broker within this many seconds: not an
outage (the broker keeps accepting us) but another client with our client id"""

ReportKind = Literal["delta", "snapshot"]


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/parkguide`` or ``~/.local/state/parkguide``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "parkguide"


class SpoolBusy(RuntimeError):
    """Another process already uses this agent's spool (two agents with one id)."""


class ReportSpool:
    """Reports not yet acknowledged by the broker, in order, on disk (SQLite, WAL)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lockfile = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise SpoolBusy(
                f"spool {path} is in use by another process (another agent with the same id?)"
            ) from None
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a report the agent counted as queued survives a power cut, not only a crash
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL,"
            " payload BLOB NOT NULL,"
            " queued REAL NOT NULL)"
        )

    def append(self, topic: str, payload: bytes) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (topic, payload, queued) VALUES (?, ?, ?)",
            (topic, payload, time.time()),
        )
        return int(cur.lastrowid or 0)

    def after(self, row_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` rows after ``row_id``, oldest first."""
        return self._db.execute(
            "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (row_id, limit),
        ).fetchall()

    def delete(self, row_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self._db.close()
        self._lockfile.close()


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
        clock: Callable[[], float] = time.time,
    ):
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if not is_identifier(agent):
            raise ValueError(
                f"agent id {agent!r}: 1-64 letters, digits and _ . : - (it names MQTT topics)"
            )
        self.broker = broker
        self.site = site
        self.agent = agent
        self.source = source
        self.boot = secrets.token_hex(6)
        self.client_id = broker.session_id(f"parkguide-{site}-{agent}")
        self.snapshot_interval_s = snapshot_interval_s
        self.max_inflight = max_inflight
        self.keepalive_s = keepalive_s
        self._clock = clock
        self.topic_occupancy = topics.edge_occupancy(site, agent)
        self.topic_availability = topics.edge_availability(site, agent)
        self.topic_health = topics.edge_health(site, agent)
        self.spool_path = Path(spool_dir or default_spool_dir()) / f"{site}.{agent}.sqlite3"

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
        self._warnings = RateLimitedLog(log, _WARN_EVERY_S)
        self._drops: deque[float] = deque()  # when the broker closed accepted connections
        self.stats: dict[str, int] = dict.fromkeys(
            ("reports", "acked", "connects", "refused", "connection_failures", "disconnects"), 0
        )

    # --- agent API ------------------------------------------------------------

    def start(self) -> None:
        """Open the spool (raises SpoolBusy) and start connecting in the background."""
        self._spool = ReportSpool(self.spool_path)
        left = self._spool.count()
        if left:
            log.info("spool %s: %d report(s) from before, sent first", self.spool_path, left)
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.agent}", daemon=True)
        self._thread.start()

    def report(self, kind: ReportKind, spaces: Sequence[SpaceObservation]) -> OccupancyReport:
        """Number, spool and (when connected) send a report; returns it."""
        if self._spool is None:
            raise RuntimeError("ReportPublisher.start() was not called")
        with self._lock:
            rep = OccupancyReport(
                agent=self.agent,
                source=self.source,
                boot=self.boot,
                seq=self._seq,
                ts=self._clock(),
                kind=kind,
                spaces=list(spaces),
            )
            self._spool.append(self.topic_occupancy, rep.model_dump_json().encode())
            self._seq += 1
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

    def publish_health(self, report: HealthReport) -> None:
        """Retained, QoS 0: sent now if connected, else the latest is sent on connect."""
        report = fit_health(report)  # a bus of thousands of detectors: only what is not ok
        with self._lock:
            self._health = report
            self._health_dirty = True
        self._wake()

    @property
    def connected(self) -> bool:
        """The broker accepted our connection (CONNACK success) and it is up."""
        return self._connected

    @property
    def pending(self) -> int:
        """Reports in the spool, not yet acknowledged by the broker."""
        with self._lock:
            return self._spool.count() if self._spool else 0

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
                left = self._spool.count()
                if left:
                    log.warning(
                        "stopping with %d report(s) unsent; they stay in %s for the next start",
                        left,
                        self.spool_path,
                    )
                self._spool.close()
                self._spool = None
        if self._wake_r >= 0:  # close once: a reused descriptor number is someone else's file
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

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
                self._warn("cannot reach MQTT broker %s: %s", self.broker.url, exc)
            except Exception:
                log.exception("MQTT session with %s failed", self.broker.url)
            finally:
                with self._lock:
                    was = self._connected
                    self._connected = False
                    self._inflight.clear()
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
            return False
        self._service(client)
        return True

    def _service(self, client: mqtt.Client) -> None:
        with self._lock:
            if not self._connected and self._accepted.is_set():
                self._connected = True
                self._sent_upto = 0
                self._inflight.clear()
                self.stats["connects"] += 1
                log.info("connected to MQTT broker %s as %s", self.broker.url, self.client_id)
                client.publish(
                    self.topic_availability,
                    topics.ONLINE,
                    qos=topics.QOS_AVAILABILITY,
                    retain=topics.RETAIN_AVAILABILITY,
                )
                self._snapshot_requested = True
                self._health_dirty = self._health is not None
            if not self._connected:
                return
            while self._acks:
                row = self._inflight.pop(self._acks.popleft(), None)
                if row is not None and self._spool is not None:
                    self._spool.delete(row)
                    self.stats["acked"] += 1
            if self._health_dirty and self._health is not None:
                client.publish(
                    self.topic_health,
                    self._health.model_dump_json(),
                    qos=topics.QOS_HEALTH,
                    retain=topics.RETAIN_HEALTH,
                )
                self._health_dirty = False
            self._pump(client)

    def _pump(self, client: mqtt.Client) -> None:
        """Send the next spool rows, keeping at most ``max_inflight`` unacknowledged."""
        room = self.max_inflight - len(self._inflight)
        if room <= 0 or self._spool is None:
            return
        for row_id, topic, payload in self._spool.after(self._sent_upto, room):
            info = client.publish(topic, payload, qos=topics.QOS_OCCUPANCY, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # the connection is going; the next one starts from the spool again
            self._inflight[info.mid] = row_id
            self._sent_upto = row_id

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
        hint = ""
        low = reason.lower()
        if "password" in low or "authori" in low:
            hint = (
                " -- check the credentials (--username, --password-env, "
                "PARKGUIDE_MQTT_USERNAME/PARKGUIDE_MQTT_PASSWORD)"
            )
        log.error("MQTT broker %s refused the connection: %s%s", self.broker.url, reason, hint)

    def _warn(self, msg: str, *args: object) -> None:
        self._warnings("broker", logging.WARNING, msg + " (retrying with backoff)", *args)


def choose_agent_id(requested: str | None, source: str, bound: str) -> str:
    """The agent id to run as: ``--agent`` or the one the site file binds ``source`` to (a
    warning when they differ: the gateway accepts the source's reports from that one only)."""
    agent_id = requested or bound
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
