"""``parkguide gateway``: MQTT in and out, timers, InfluxDB writer and the API, wired together.

The work is done by ``gateway.live.LiveGateway``; this module only connects it.
One thread runs the paho network loop, handles the messages (in batches when
they queue up) and drives the timers (TTLs, holds, sign refreshes, policy
windows); the InfluxDB writer drains the journal's outbox in its own thread;
uvicorn serves the API in another, so neither blocks the MQTT loop.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import os
import select
import signal
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

# Only light modules at the top: a restarted gateway republishes its journaled signs
# (republish_stored_signs) once the site file is validated (~0.3 s), before scipy, the
# allocation core and the journal's state are loaded.
from gateway.journal import PLATE_KEEP_KEY, Journal
from parking import topics
from parking.broker import (
    BrokerConfig,
    backoff_delay,
    is_client_suffix,
    new_client_suffix,
    refusal_hint,
    shown_client_id,
)
from parking.private import open_to_others

if TYPE_CHECKING:
    from gateway.live import LiveGateway
    from parking.site import Site

log = logging.getLogger(__name__)

TICK_S = 0.5
MAX_POLICY_SPEED = 3600.0  # --policy-clock: a simulated hour per real second at most
CHECKPOINT_S = 1.0  # SQLite WAL checkpoint (WAL -> database file), in a thread of its own
MAX_BATCH = 500  # messages handled together when they queue up
# The start's TTL verdicts wait until the broker's backlog for this gateway is in (subscribed
# and nothing left to read: it sends what it kept first), so that agents it kept reports of
# do not blink unknown; at most this long, or this many messages
START_VERDICTS_MAX_S = 2.0
START_VERDICTS_MAX_MESSAGES = 5000
_BACKLOG_KINDS = frozenset({"edge/occupancy"})  # a report: health refreshes no space
# The state checkpoint (LiveGateway.flush_checkpoint) gathers what reports changed for at
# least CHECKPOINT_MIN_S (its fixed cost is paid once for all of them, and a report
# arriving meanwhile rarely finds it running), then is written in steps at quiet moments;
# past CHECKPOINT_MAX_S in larger steps on every round, and whole past twice that, so a
# gateway never quiet keeps it bounded.
CHECKPOINT_MIN_S = 0.1
CHECKPOINT_MAX_S = 0.5
# Idle means no message for QUIET_S: right after a report the broker and the sign's
# subscribers need the CPU more than the checkpoint does.
QUIET_S = 0.002
OVERDUE_STEP_ROWS = 16  # per round once the checkpoint is overdue: at most, until a message waits
# reports expanded per quiet step at most: one at a time, until a message is waiting
QUIET_STEP_ROWS = 8
# Keeping warm (LiveGateway.rehearse): while changes come often (a batch that moved a space,
# a sign or an answer within KEEP_WARM_FOR_S), the idle loop rehearses the report path every
# --keep-warm-ms, so the next report does not find its code and data evicted from the CPU's
# caches (3-5x slower on shared VMs). It costs 13-21 % of a core meanwhile; with sparser
# changes it stops, and reports that change nothing (snapshots of a quiet site) cost nothing.
CLIENT_ID_KEY = "mqtt_client_id"
"""Journal meta: the MQTT client id whose broker session holds this gateway's reports."""
CLIENT_SUFFIX_KEY = "mqtt_client_suffix"
"""Journal meta: the random suffix of this gateway's client id (with a password), drawn
once: the id stays across restarts, and no other broker user can guess it."""
TAKE_OVER_WAIT_S = 5.0  # for the broker's answer when opening or deleting an old session
TAKE_OVER_QUIET_S = 0.5  # an old session's backlog is drained when it is quiet this long
TAKE_OVER_RETRY_S = 30.0  # after a failed attempt (the broker refused the old id, say)
TAKE_OVER_MAX_S = 120.0  # a backlog takes seconds; a session still fed has filters not ours
# Two gateways on one client id (a copy of the journal started elsewhere) knock each other
# off: connections that end within SHORT_SESSION_S of their CONNACK, SHORT_SESSIONS times
# within the window, are said to be that, at most once per TWIN_LOG_INTERVAL_S.
SHORT_SESSION_S = 5.0
SHORT_SESSIONS = 3
SHORT_SESSIONS_WINDOW_S = 60.0
TWIN_LOG_INTERVAL_S = 300.0
OTHER_OFFLINE_CONFIRM_S = 2.0
OWN_WILL_WINDOW_S = 120.0
# a connection's own "online" must come back this long after its last incoming message (a
# backlog is delivered before it): else the broker drops what this login publishes
ECHO_QUIET_S = 5.0

KEEP_WARM_MS = 3.0
KEEP_WARM_FOR_S = 0.25
# Busy-polling (as Linux's SO_BUSY_POLL does for sockets): for --busy-poll-ms after a batch
# that changed something the MQTT thread polls its socket instead of sleeping in select(),
# yielding the CPU to any other runnable task between polls. A report arriving meanwhile
# finds the CPU awake: a virtual CPU that halted comes back with its caches cold (see keeping
# warm). It costs CPU only while changes come closer together than that, and nothing on a
# quiet site, however many snapshots its agents repeat.
BUSY_POLL_MS = 20.0
# The journal keeps this much history (events, assignments with their plates) and forgets older rows a few hundred at a time in quiet moments: without it the
# file grows for ever (~80 bytes an event, ~400 an assignment). 0 keeps everything.
JOURNAL_KEEP_DAYS = 366.0
# An arrival's plate is only echoed to its gate; it is kept this long after the hold (for a
# manager answering "where did that car go"), then blanked in the journal. 0: never stored.
PLATE_KEEP_HOURS = 24.0
MAX_HOLDS_PER_ENTRANCE = 60
"""Holds outstanding at one entrance (a barrier lets a car through every few seconds: ~40 in
a 180 s hold). Beyond it an arrival is answered with no space, sending the car by the signs
(gateway.arrivals.NO_SPACE_BUSY): a gate controller flooding arrivals (broken, or its login stolen) would
otherwise hold every free space and the signs would read FULL; and a space given without a
hold would be given to every car after it too."""
PRUNE_BUSY_S = 1.0  # between prune steps while old rows are left
PRUNE_CLOCK_SLACK_S = 86400.0
"""How far the wall clock may be from the agents' (their last report's ts), or run ahead of
the journal's newest event at start plus the time elapsed since, before pruning stops
trusting it: one step of a clock a year ahead would otherwise forget all history for good."""
PRUNE_IDLE_S = 600.0  # between looks once none are
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux


def journal_disk_hint(exc: BaseException) -> str:
    """What to do when the journal's disk fails (empty for other errors): a card or disk
    remounted read-only after I/O errors will not take the journal again."""
    text = str(exc).lower()
    if getattr(exc, "errno", None) == errno.EROFS or "readonly" in text or "read-only" in text:
        cause = "its file system is read-only (a failing SD card or disk, remounted so)"
    elif "disk i/o error" in text or getattr(exc, "errno", None) == errno.EIO:
        cause = "its disk fails (I/O errors: an SD card or disk wearing out)"
    else:
        return ""
    return (
        f"\nthe journal cannot be written: {cause}; the signs show their fallback until the"
        " gateway runs again: move the journal to a healthy disk, or restore the newest"
        " backup there (deploy/README.md, A failing disk)"
    )


def policy_clock(spec: str, tz_name: str, start: float | None = None) -> Callable[[], float]:
    """A clock for policy windows: 'HH:MM@SPEED' -> UNIX time of a day that starts now at
    HH:MM in the site's time zone and runs SPEED times as fast as real time."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    try:
        hhmm, _, speed_s = spec.partition("@")
        h, _, m = hhmm.partition(":")
        speed = float(speed_s or 1)
        local = datetime.now(ZoneInfo(tz_name)).replace(
            hour=int(h), minute=int(m), second=0, microsecond=0
        )
    except ValueError:
        raise ValueError(f"--policy-clock {spec!r}: expected HH:MM@SPEED") from None
    if not (math.isfinite(speed) and 0 < speed <= MAX_POLICY_SPEED):
        raise ValueError(
            f"--policy-clock {spec!r}: SPEED must be more than 0 and at most"
            f" {MAX_POLICY_SPEED:g} (a simulated hour a second)"
        )
    t0 = time.time() if start is None else start
    base = local.timestamp()
    return lambda: base + (time.time() - t0) * speed


class _OutboxHistory:
    """``gateway.journal.History`` backed by the InfluxDB outbox (``gateway.outbox``)."""

    def __init__(self, site_id: str, max_rows: int | None):
        from gateway import outbox

        self._outbox = outbox
        self._site = site_id
        self._cap = outbox.OutboxCap(max_rows) if max_rows is not None else outbox.DEFAULT_CAP

    def space_states(
        self, conn: sqlite3.Connection, changes: list[tuple[str, str, str, float]]
    ) -> None:
        self._outbox.append_space_states(conn, self._site, changes, cap=self._cap)

    def zone_occupancies(
        self, conn: sqlite3.Connection, zones: list[tuple[str, dict[str, int], float]]
    ) -> None:
        self._outbox.append_zone_occupancies(conn, self._site, zones, cap=self._cap)

    def log_pending(self, force: bool = False) -> None:
        """Say the points the cap dropped since the last line (rate-limited, unless
        ``force``)."""
        self._cap.log_pending(force)


class GatewayService:
    """The running gateway: MQTT client, timer thread, optional InfluxDB writer and HTTP server."""

    def __init__(
        self,
        site_path: str | os.PathLike[str] | Site,
        broker: BrokerConfig,
        db: str,
        *,
        client_id: str | None = None,
        hold_s: float = 180.0,
        max_holds_per_entrance: int | None = None,
        core_options: dict[str, float] | None = None,
        influx: dict[str, Any] | None = None,
        outbox_max_rows: int | None = None,
        policy_clock_spec: str | None = None,
        keep_warm_ms: float = KEEP_WARM_MS,
        busy_poll_ms: float = BUSY_POLL_MS,
        journal_keep_days: float = JOURNAL_KEEP_DAYS,
        plate_keep_hours: float = PLATE_KEEP_HOURS,
    ):
        from gateway.live import LiveGateway
        from parking.site import load_site

        self.site = load_site(site_path) if isinstance(site_path, (str, os.PathLike)) else site_path
        self.broker = broker
        history = _OutboxHistory(self.site.id, outbox_max_rows) if influx else None
        self.history = history
        self.journal = Journal(db, history)
        if (mode := open_to_others(db)) is not None:
            # made so by an earlier release, or copied with cp: an existing file keeps its
            # mode (parking.private), so it is said rather than changed
            log.warning(
                "the journal %s may be read by every local user (mode %03o): it holds "
                "password hashes and licence plates; chmod 600 %s*",
                db,
                mode,
                db,
            )
        # what the clock may read, at most, by the journal: its newest change and the
        # monotonic time since (a fresh journal: the clock at start, nothing to forget).
        # Read before the gateway resumes: its start journals verdicts by the clock now
        newest = self.journal.conn.execute(
            "SELECT max(ts) FROM (SELECT max(ts) AS ts FROM events"
            " UNION ALL SELECT max(ts) FROM pending_changes)"
        ).fetchone()[0]
        self._prune_wall0 = time.time() if newest is None else min(time.time(), float(newest))
        self._prune_mono0 = time.monotonic()
        self._prune_clock_warned = False
        if history is not None:
            from gateway import outbox

            outbox.ensure_schema(self.journal.conn)
        self.writer = None
        if influx:
            from gateway.influx import InfluxWriter

            self.writer = InfluxWriter(db, **influx)
        base_id = f"parkguide-gateway-{self.site.id}"
        self.client_id = client_id or self.broker.session_id(base_id, self._client_suffix)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # the broker keeps QoS 1 reports for us while we restart
            # a report is acknowledged only once it is in the journal (one that changes
            # nothing: once held for the journal, gateway.live_journal.QUIET_JOURNAL_S)
            manual_ack=True,
        )
        # the session the broker kept under the id this journal's gateway used before (a
        # release whose ids carried a digest of the password, or none): its reports are taken and
        # it is deleted once this one is subscribed (see _take_over_previous_session)
        self._previous_client_id = self._client_id_before(base_id)
        self.taken_over = 0  # messages taken from that session
        self._take_over_at = 0.0  # monotonic time of the next attempt
        self._take_over_tick = 0.0  # monotonic time of the next timer round meanwhile
        self.gateway: LiveGateway = LiveGateway(
            self.site,
            self.journal,
            self._publish,
            hold_s=hold_s,
            max_holds_per_entrance=max_holds_per_entrance or MAX_HOLDS_PER_ENTRANCE,
            core_options=core_options,
            history=history,
            policy_clock=policy_clock(policy_clock_spec, self.site.timezone)
            if policy_clock_spec
            else None,
            # the checkpoint waits for an idle moment: off the report-to-sign path
            defer_checkpoint=True,
            journal_plates=plate_keep_hours > 0,
            defer_start_verdicts=True,
        )
        self._heard_in_backlog: set[str] = set()  # agents the broker kept messages of
        self._verdicts_by = math.inf  # the start verdicts' deadline, set when _run starts
        if self.writer is not None:
            self.gateway.outbox_stats = self._outbox_stats
        self._stop = threading.Event()
        self._availability_topic = topics.gateway_availability(self.site.id)
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._polled: object = None  # the socket self._poller watches
        self._poller = select.poll()
        self._pending: list[tuple[str, bytes, float, int, int]] = []
        self._draining = self._corked = False
        self._last_drain = 0.0  # monotonic time the last batch was handled
        # ... and the last one that moved a space, a sign or an answer: keeping warm and
        # busy-polling follow only those (a large quiet site's snapshots, every few
        # seconds from dozens of agents, changing nothing, would keep them on for good)
        self._last_change = 0.0
        self._keep_warm_s = max(0.0, keep_warm_ms) / 1000.0
        self._last_warm = 0.0  # monotonic time of the last rehearsal
        self.rehearsals = 0
        self._busy_poll_s = max(0.0, busy_poll_ms) / 1000.0
        self.busy_polled_s = 0.0  # time spent busy-polling, in total
        self._from_other_threads: deque[tuple[str, bytes, int, bool]] = deque()
        self._attempt = 0  # connection attempts since the last success
        self._answered = False  # the broker sent CONNACK on this connection
        self._disconnect_said = False  # this connection's end was logged
        self._accepted_at = -math.inf  # monotonic time of this connection's CONNACK
        self._short_sessions: deque[float] = deque(maxlen=SHORT_SESSIONS)  # their ends
        self._twin_said = -math.inf  # monotonic time "a second gateway?" was last said
        self.foreign_offline = 0  # another gateway's "offline" on our availability topic
        self._other_offline_at: float | None = None  # monotonic; not yet said
        self._echo_due: float | None = None  # monotonic; while this connection's own
        self._echoed = False  # "online" has not come back (see _check_echo)
        self._echo_said = False  # this connection's error was logged
        self._echo_checked_at = -math.inf  # monotonic time of the last look
        # OWN_WILL_WINDOW_S from each connection accepted after an unclean end (a previous
        # run that died, a lost connection): its last wills, one per connection the broker
        # saw end, come through this session's queue after it
        self._unclean_end = True
        self._own_will_due_until = -math.inf
        self._ever_connected = False
        self._internal_errors = 0
        self._last_error_log = -1e9
        self.fatal: str | None = None  # why the service stopped itself (main exits 1)
        self._checkpoint_failures = 0
        self._keep_s = max(0.0, journal_keep_days) * 86400.0
        self._plate_keep_s = max(0.0, plate_keep_hours) * 3600.0
        self.journal.set_meta(PLATE_KEEP_KEY, repr(self._plate_keep_s))  # for the API
        self.plates_forgotten = 0  # plates blanked after --plate-keep-hours so far
        self._next_prune = 0.0  # monotonic time of the next prune step
        self.pruned = 0  # journal rows forgotten so far
        self._pruning = 0  # rows forgotten in the run of prune steps under way
        self._blanking = 0  # plates blanked in the run of prune steps under way
        self._republish = False  # connected: publish every zone and sign (in the MQTT thread)
        self.retained_skipped = 0  # zone and sign publishes skipped while disconnected
        self._checkpoint_retry_at = 0.0  # monotonic; a failed checkpoint backs off
        self._checkpoint_log_at = -1e9
        self.connected = threading.Event()  # set once subscribed (ready for messages)
        self._setup_client()

    # -- MQTT --------------------------------------------------------------------------------
    def _client_suffix(self) -> str:
        """The random suffix of this gateway's client id, drawn and kept the first time."""
        suffix = self.journal.meta(CLIENT_SUFFIX_KEY)
        if suffix is None or not is_client_suffix(suffix):
            suffix = new_client_suffix()
            with self.journal.transaction():
                self.journal.set_meta(CLIENT_SUFFIX_KEY, suffix)
        return suffix

    def _client_id_before(self, base_id: str) -> str | None:
        """The client id whose broker session to take over, or None (and this one noted)."""
        known = self.journal.meta(CLIENT_ID_KEY)
        if known is None and self.journal.last_event_id():
            known = base_id  # a journal of a release that did not note its id: the bare one
        if known is not None and known != self.client_id:
            return known
        if known is None:
            with self.journal.transaction():
                self.journal.set_meta(CLIENT_ID_KEY, self.client_id)
        return None

    def _subscriptions(self) -> list[tuple[str, int]]:
        """What the gateway hears: (topic filter, QoS)."""
        site = self.site.id
        return [
            (topics.edge_all(site), topics.QOS_OCCUPANCY),
            (topics.arrivals_all(site), topics.QOS_ARRIVAL),
            (topics.cancels_all(site), topics.QOS_CANCEL),
            (topics.space_control_all(site), topics.QOS_CONTROL),
            (topics.zone_control_all(site), topics.QOS_CONTROL),
            # our own: another gateway of the site saying "offline" would blank every sign
            # and dashboard while this one runs (_on_own_availability)
            (topics.gateway_availability(site), topics.QOS_AVAILABILITY),
        ]

    def _session_answered(self, client: mqtt.Client, answer: dict[str, Any]) -> bool:
        """Connect ``client`` (its on_connect fills ``answer["rc"]``) and wait for the
        broker's answer; True when it accepted the connection."""
        client.connect(self.broker.host, self.broker.port, keepalive=15)
        deadline = time.monotonic() + TAKE_OVER_WAIT_S
        while "rc" not in answer and time.monotonic() < deadline:
            client.loop(0.05)
        return answer.get("rc") is not None and not answer["rc"].is_failure

    def _take_over_previous_session(self) -> None:
        """Take the reports the broker queued under the previous client id, then delete that
        session. Called once this client is subscribed and before anything it received is
        handled: the old session, unsubscribed first, holds what came from when the last
        gateway stopped until then, and is handled first. Without this an upgrade or a
        password change would lose the reports sent meanwhile, and the broker would queue
        every report for the old id for good."""
        prev = self._previous_client_id
        assert prev is not None
        old = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=prev,
            clean_session=False,
            manual_ack=True,
        )
        self.broker.apply(old)
        answer: dict[str, Any] = {}
        got: list[Any] = []
        old.on_connect = lambda c, u, flags, rc, p: answer.update(
            rc=rc, present=flags.session_present
        )
        old.on_message = lambda c, u, msg: got.append(msg)
        try:
            if not self._session_answered(old, answer):
                log.warning(
                    "could not open the broker session of the previous client id %s (%s); "
                    "trying again at the next connect",
                    shown_client_id(prev),
                    answer.get("rc", "no answer"),
                )
                return
            # first of all, the old session takes nothing new: what it holds is what came
            # before this session subscribed (and a few milliseconds more, which both
            # hold: reports are refused as duplicates by seq, arrivals answered once
            # by request_id); the broker still delivers what it had queued
            old.unsubscribe([f for f, _ in self._subscriptions()])
            quiet_since = started = time.monotonic()
            while answer["present"] and not self._stop.is_set():
                if old.loop(0.02) != mqtt.MQTT_ERR_SUCCESS or not old.is_connected():
                    # lost the broker mid-way: what is left stays queued for the next try
                    log.warning(
                        "lost the broker while taking over the session of %s after %d "
                        "message(s); trying again",
                        shown_client_id(prev),
                        self.taken_over,
                    )
                    return
                self._network(0.0)  # keeps this session alive; its messages wait their turn
                now = time.monotonic()
                if now >= self._take_over_tick:  # signs, TTLs and holds go on meanwhile
                    self._take_over_tick = now + TICK_S
                    self._tick()
                if got:
                    batch, got[:] = list(got), []
                    self.gateway.handle_batch(
                        [(m.topic, m.payload, time.perf_counter()) for m in batch if not m.retain]
                    )
                    for m in batch:
                        if m.qos > 0:
                            old.ack(m.mid, m.qos)
                    self.taken_over += len(batch)
                    quiet_since = time.monotonic()
                elif now - quiet_since >= TAKE_OVER_QUIET_S:
                    break
                elif now - started >= TAKE_OVER_MAX_S:  # never quiet: a filter not ours
                    log.warning(
                        "the session of %s never went quiet; deleting it", shown_client_id(prev)
                    )
                    break
            old.disconnect()
            old.loop(0.05)
            # connecting once more with a clean session deletes the old one on the broker
            old.reinitialise(client_id=prev, clean_session=True)
            self.broker.apply(old)
            answer.clear()
            old.on_connect = lambda c, u, flags, rc, p: answer.update(rc=rc)
            deleted = self._session_answered(old, answer)
            old.disconnect()
            if not deleted:
                log.warning(
                    "could not delete the broker session of %s; trying again",
                    shown_client_id(prev),
                )
                return
        except (OSError, ValueError) as exc:
            log.warning(
                "taking over the broker session of %s failed (%s); trying again",
                shown_client_id(prev),
                exc,
            )
            return
        finally:
            old.loop(0.01)
        with self.gateway.lock, self.journal.transaction():
            self.journal.set_meta(CLIENT_ID_KEY, self.client_id)
        self._previous_client_id = None
        log.info(
            "took %d message(s) over from the broker session of the previous client id %s "
            "(another release) and deleted it; what both sessions held is "
            "refused as duplicate",
            self.taken_over,
            shown_client_id(prev),
        )

    def _setup_client(self) -> None:
        c = self.client
        self.broker.apply(c)
        c.will_set(
            topics.gateway_availability(self.site.id),
            topics.OFFLINE,
            qos=topics.QOS_AVAILABILITY,
            retain=topics.RETAIN_AVAILABILITY,
        )
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message

    @staticmethod
    def _on_socket_open(client, userdata, sock) -> None:
        # One report publishes several small messages (zones, signs, acks) back to back:
        # without TCP_NODELAY, Nagle holds each behind the broker's ACK of the previous one.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            log.debug("TCP_NODELAY not available on this socket")

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain and not self.client.is_connected():
            # zone counts and signs while the broker is away: not queued (paho would send
            # every refresh of the outage after the fresh ones, most already expired);
            # the reconnect republishes them all as they are then
            self.retained_skipped += 1
            return
        if threading.current_thread() is self._thread:
            if self._draining and not self._corked and not topics.is_display_content(topic):
                # signs leave at once (drivers wait on them); what follows in the batch
                # (zone counts, acks) is held and leaves in one segment at its end
                self._corked = self._cork(True)
            self.client.publish(topic, payload, qos=qos, retain=retain)
        else:
            # e.g. a manager action from the API thread: only the MQTT thread writes to the
            # socket (paho without loop_start writes from the calling thread)
            self._from_other_threads.append((topic, payload, qos, retain))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            self._answered = True
            if reason_code.is_failure:
                log.error(
                    "MQTT broker %s refused the connection: %s%s",
                    self.broker.url,
                    reason_code,
                    refusal_hint(str(reason_code), self.broker),
                )
                return
            self._accepted_at = time.monotonic()
            self._echoed, self._echo_due = False, self._accepted_at + ECHO_QUIET_S
            self._echo_said = False
            if self._unclean_end:
                self._own_will_due_until = self._accepted_at + OWN_WILL_WINDOW_S
                self._unclean_end = False
            site = self.site.id
            client.subscribe(self._subscriptions())
            client.publish(
                topics.gateway_availability(site),
                topics.ONLINE,
                qos=topics.QOS_AVAILABILITY,
                retain=topics.RETAIN_AVAILABILITY,
            )
            # after this callback paho resends what was in flight when the connection
            # dropped: zones and signs go out after that (in _run), so the newest are last
            self._republish = True
            log.info("connected to %s; zones and signs follow", self.broker.url)
        except Exception:
            log.exception("on_connect failed")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        try:
            failed = [rc for rc in reason_codes if rc.is_failure]
            if failed:
                log.error("MQTT broker refused subscriptions: %s", failed)
            else:
                self._attempt = 0
                self.connected.set()  # ready: the broker now routes reports to us
                self.gateway.broker_up = True
        except Exception:
            log.exception("on_subscribe failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self._other_offline_at = None  # a broker shutting down sent this gateway's will too
        if not self._stop.is_set():  # the broker publishes this connection's will
            self._unclean_end = True
            self._own_will_due_until = time.monotonic() + OWN_WILL_WINDOW_S
        self.gateway.broker_up = False  # the dashboard says so, and nothing of the agents
        if self._stop.is_set() or self._disconnect_said:
            return  # paho reports a keepalive timeout twice: said once per connection
        self._disconnect_said = True
        if not self._answered:  # no CONNACK on this connection: not an outage, a setup error
            if self._attempt == 1 or self._attempt % 20 == 0:
                log.warning(
                    "MQTT broker %s: %s; retrying (attempt %d)",
                    self.broker.url,
                    self.broker.why_closed_early(reason_code),
                    self._attempt,
                )
            return
        log.warning("lost the MQTT broker %s (%s); reconnecting", self.broker.url, reason_code)
        now = time.monotonic()
        if now - self._accepted_at < SHORT_SESSION_S:
            self._short_sessions.append(now)
            recent = [t for t in self._short_sessions if now - t <= SHORT_SESSIONS_WINDOW_S]
            if len(recent) >= SHORT_SESSIONS:
                self.gateway.note_session_contested()
            if len(recent) >= SHORT_SESSIONS and now - self._twin_said >= TWIN_LOG_INTERVAL_S:
                self._twin_said = now
                log.error(
                    "the broker closed this gateway's connection %d times within %.0f s, each"
                    " right after accepting it: another client is using client id %s (a"
                    " second gateway started on a copy of this journal?). Stop it: two"
                    " gateways for one site take reports from each other",
                    len(recent),
                    SHORT_SESSIONS_WINDOW_S,
                    shown_client_id(self.client_id),
                )

    def _on_own_availability(self, msg: mqtt.MQTTMessage) -> None:
        """A live (not retained) "offline" on this site's gateway availability while this
        gateway runs: this one's "online" is published again at once. Said as another
        gateway's stop or last will once it holds OTHER_OFFLINE_CONFIRM_S with this
        connection up (a broker shutting down sends every client's will, this one's too),
        unless this gateway's own will is due (OWN_WILL_WINDOW_S from a connection accepted
        after an unclean end: the broker publishes one will per connection it saw end,
        queued in this session behind any backlog)."""
        if msg.retain or msg.payload != topics.OFFLINE.encode() or self._stop.is_set():
            return
        self.client.publish(
            msg.topic,
            topics.ONLINE,
            qos=topics.QOS_AVAILABILITY,
            retain=topics.RETAIN_AVAILABILITY,
        )
        now = time.monotonic()
        if now < self._own_will_due_until:  # there may be several: one per lost connection
            log.info("this gateway's last will from before came through: online again")
            return
        self._other_offline_at = now

    def _confirm_other_offline(self) -> None:
        """Say another gateway's "offline" once it has held (see _on_own_availability)."""
        heard = self._other_offline_at
        if heard is None or time.monotonic() - heard < OTHER_OFFLINE_CONFIRM_S:
            return
        self._other_offline_at = None
        if not self.connected.is_set():
            return
        self.foreign_offline += 1
        now = time.monotonic()
        if now - self._twin_said >= TWIN_LOG_INTERVAL_S:
            self._twin_said = now
            log.error(
                "another gateway of site %s on this broker said it is offline (it stopped, or"
                " its last will) while this one runs: two gateways for one site? This one's"
                " online is published again; stop the other for good (moving hosts:"
                " deploy/README.md)",
                self.site.id,
            )

    def _on_message(self, client, userdata, msg) -> None:
        if self._echo_due is not None:
            self._echo_due = time.monotonic() + ECHO_QUIET_S
        if msg.topic == self._availability_topic:
            if not msg.retain and msg.payload == topics.ONLINE.encode():
                if self._echo_said and not self._echoed:
                    log.warning(
                        "this gateway's own 'online' came back late after all: the error"
                        " above was a stall (the process paused, or a long batch), not the"
                        " broker dropping what it publishes"
                    )
                self._echoed, self._echo_due = True, None
            self._on_own_availability(msg)
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
            return
        if msg.retain and self.gateway.refuse_retained(msg.topic, msg.payload):
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)  # refused for good: not to be redelivered
            return
        if self.gateway.start_verdicts_due:
            self._note_backlog(msg)
        # collected here, handled in a batch once the socket has nothing more to read
        self._pending.append((msg.topic, msg.payload, time.perf_counter(), msg.mid, msg.qos))

    def _network(self, timeout: float) -> mqtt.MQTTErrorCode:
        """One round of paho's external-loop calls (loop_read, loop_write, loop_misc) on our
        own select. Unlike client.loop(), no wake-up socket pair is made, so every publish
        from this thread is written straight to the broker's socket, with no extra send."""
        c = self.client
        sock = c.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
        if pending is not None and pending():
            timeout = 0.0
        try:
            readable, writable, _ = select.select(
                [sock], [sock] if c.want_write() else [], [], timeout
            )
        except (OSError, ValueError):  # the socket was closed under us
            return mqtt.MQTT_ERR_CONN_LOST
        if readable or (pending is not None and pending()):
            rc = c.loop_read()
            if rc or c.socket() is None:
                return rc
        if writable:
            rc = c.loop_write()
            if rc or c.socket() is None:
                return rc
        return c.loop_misc()

    def _readable(self) -> bool:
        """Is a message waiting in the socket? Asked between the pieces of idle work, so it
        must be cheap: one poll() on a poller kept per socket (~1 us; select() ~2.5 us)."""
        sock = self.client.socket()
        if sock is None:
            return False
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():  # TLS: bytes already decrypted
            return True
        if sock is not self._polled:
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
            self._polled = sock
        return bool(self._poller.poll(0))

    def _busy_poll(self, timeout: float) -> float:
        """Poll the socket without sleeping until a message is waiting, the busy-polling
        window after the last batch closes, or ``timeout`` is up; what is left of
        ``timeout`` goes to the select() that follows."""
        start = time.monotonic()
        end = min(start + timeout, self._last_change + self._busy_poll_s)
        if end <= start or self.client.want_write():
            return timeout
        while not self._readable() and time.monotonic() < end:
            os.sched_yield()  # anything else runnable on this CPU goes first
        now = time.monotonic()
        self.busy_polled_s += now - start
        return max(0.0, start + timeout - now)

    def _drain(self) -> None:
        """Handle the collected messages as one batch; acknowledge them once journaled."""
        batch, self._pending = self._pending, []
        self._draining, self._corked = True, False
        try:
            self.gateway.handle_batch([(t, p, t0) for t, p, t0, _, _ in batch])
        except sqlite3.Error as exc:
            # the journal refused a write (disk full, I/O error): memory is now ahead of
            # the journal. Stop without acknowledging the batch: the broker redelivers it
            # to the restarted gateway, which resumes from the journal; nothing is lost.
            self._draining = False
            self._fail(
                f"the journal refused a write ({exc}); stopping without acknowledging "
                f"{len(batch)} message(s): the broker redelivers them after a restart"
                f"{journal_disk_hint(exc)}"
            )
            return
        except Exception:
            # a bug, not bad input (that is rejected inside): keep serving, log rate-limited
            self._internal_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= 60:
                self._last_error_log = now
                log.exception(
                    "handling %d messages failed (%d internal errors so far)",
                    len(batch),
                    self._internal_errors,
                )
        if not self._corked:
            self._corked = self._cork(True)
        for _, _, _, mid, qos in batch:
            if qos > 0:
                self.client.ack(mid, qos)
        if self._corked:
            self._cork(False)
        self._draining = self._corked = False

    def _cork(self, on: bool) -> bool:
        """Hold (TCP_CORK) or release what a batch sends after its signs: zone counts and
        acks leave in one TCP segment instead of one send each (paho writes every packet
        with its own send()). False where the platform has no TCP_CORK."""
        sock = self.client.socket()
        if _TCP_CORK is None or sock is None:
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, int(on))
        except (OSError, ValueError):
            return False
        return True

    def _flush_checkpoint(
        self, step: bool = False, rows: int = 0, interrupted: Callable[[], bool] | None = None
    ) -> None:
        try:
            self.gateway.flush_checkpoint(step, rows, interrupted)
        except Exception as exc:
            # the events are committed already; the checkpoint is retried, backing off
            # (a full disk must not become a busy loop writing tracebacks to the log)
            self._checkpoint_failures += 1
            delay = backoff_delay(self._checkpoint_failures - 1, base=0.5, cap=30.0)
            self._checkpoint_retry_at = time.monotonic() + delay
            now = time.monotonic()
            if now - self._checkpoint_log_at >= 60:
                self._checkpoint_log_at = now
                log.error(
                    "writing the journal checkpoint failed %d time(s) (%s: %s); events are "
                    "safe, retrying in %.1f s",
                    self._checkpoint_failures,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=self._checkpoint_failures == 1,
                )
        else:
            if self._checkpoint_failures:
                log.info("journal checkpoint written again")
            self._checkpoint_failures = 0

    def _note_backlog(self, msg: mqtt.MQTTMessage) -> None:
        """While the start's verdicts wait: an agent's report that the broker kept for this
        gateway brings its spaces up to date once handled (a retained copy does not: it may
        be as old as the agent's last message)."""
        parsed = None if msg.retain else topics.parse(msg.topic)
        if parsed is not None and parsed.kind in _BACKLOG_KINDS:
            self._heard_in_backlog.add(parsed.ident)

    def _start_verdicts(self) -> None:
        """The start's TTL verdicts, once the broker's backlog is in (or START_VERDICTS_MAX_S
        after the start): before it is handled, so the journal keeps its time order."""
        backlog_in = self.connected.is_set() and not self._readable()
        if not (
            backlog_in
            or time.monotonic() >= self._verdicts_by
            or len(self._pending) >= START_VERDICTS_MAX_MESSAGES
        ):
            return
        try:
            self.gateway.start_verdicts(self._heard_in_backlog)
        except sqlite3.Error as exc:  # not journaled: see _drain
            self._fail(f"the journal refused a write ({exc}); stopping{journal_disk_hint(exc)}")
        if self._heard_in_backlog:
            log.info(
                "the broker kept messages of %d agent(s) while this gateway was stopped",
                len(self._heard_in_backlog),
            )
        self._heard_in_backlog = set()

    def _check_echo(self) -> None:
        """Once per connection: the broker passed this gateway's own ``online`` back. MQTT
        3.1.1 has no refusal for a publish: under a login the ACL does not let write the
        gateway's topics (another service's), every zone, sign and answer was dropped
        while the gateway said it was connected."""
        now = time.monotonic()
        stalled = now - self._echo_checked_at > ECHO_QUIET_S / 2
        self._echo_checked_at = now
        if self._echo_due is None or self._echoed:
            return
        if stalled:
            # this thread did not run for a while (paused, a long batch): the echo may be
            # waiting in the socket behind a backlog it has not read yet
            self._echo_due = max(self._echo_due, now + ECHO_QUIET_S)
            return
        if now < self._echo_due or not self.connected.is_set():
            return  # (disconnected: the next connection checks again)
        self._echo_due = None
        self._echo_said = True
        log.error(
            "the MQTT broker %s never passed this gateway's own 'online' (%s) back: most"
            " likely its ACL drops what this login publishes, so no zone count, sign or"
            " assignment reaches anyone. Under the shipped ACL only the login 'gateway' may"
            " publish them; check PARKGUIDE_MQTT_USERNAME in the gateway's environment (it"
            " is %r). With an ACL of your own, it must let this login write and read %s",
            self.broker.url,
            self._availability_topic,
            self.broker.username or "(anonymous)",
            self._availability_topic,
        )

    def _tick(self) -> None:
        self._check_echo()
        self._confirm_other_offline()
        if self.gateway.start_verdicts_due:  # the broker away: the timers still run
            self._start_verdicts()
        try:
            self.gateway.tick()
            if self.history is not None:
                self.history.log_pending()
        except sqlite3.Error as exc:  # a TTL or hold verdict not journaled: see _drain
            self._fail(f"the journal refused a write ({exc}); stopping{journal_disk_hint(exc)}")
        except Exception:
            log.exception("gateway timer failed")

    def _fail(self, why: str) -> None:
        """Stop the service for good (main exits 1, the supervisor restarts it)."""
        if self.fatal is None:
            self.fatal = why
            log.critical(why)
        self._stop.set()

    def _checkpoint_due(self, max_age_s: float) -> bool:
        """A checkpoint is due and not backing off after a failure."""
        return (
            self.gateway.checkpoint_due(max_age_s) and time.monotonic() >= self._checkpoint_retry_at
        )

    def _run(self) -> None:
        """The MQTT thread: network I/O, message handling and timers, all in one thread.

        One thread means no hand-off (and no wait for the GIL) between receiving a report
        and publishing what it changed; what arrived while a batch was being handled is
        read in one go and handled as the next batch.
        """
        if self._busy_poll_s > 0 and _realtime_scheduling():
            # a real-time thread that never sleeps starves every normal task on its CPU
            # (until the kernel throttles it: a ~50 ms stall every second)
            log.info("real-time scheduling: busy-polling turned off")
            self._busy_poll_s = 0.0
        next_tick = time.monotonic() + TICK_S
        self._verdicts_by = time.monotonic() + START_VERDICTS_MAX_S
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._tick()
                next_tick = now + TICK_S
            if self.gateway.start_verdicts_due:  # also while the broker cannot be reached
                self._start_verdicts()
            if self.client.socket() is None and not self._connect():
                continue
            timeout = min(0.05, max(0.0, next_tick - time.monotonic()))
            if self._checkpoint_due(CHECKPOINT_MIN_S):
                timeout = min(timeout, max(0.0, self._last_drain + QUIET_S - time.monotonic()))
            warming = (
                self._keep_warm_s > 0 and time.monotonic() - self._last_change < KEEP_WARM_FOR_S
            )
            if warming:
                timeout = min(
                    timeout, max(0.0, self._last_warm + self._keep_warm_s - time.monotonic())
                )
            rc = self._network(self._busy_poll(timeout))
            if (
                self._previous_client_id is not None
                and self.connected.is_set()
                and time.monotonic() >= self._take_over_at
            ):
                self._take_over_at = time.monotonic() + TAKE_OVER_RETRY_S  # if it fails
                self._take_over_previous_session()
            while (
                rc == mqtt.MQTT_ERR_SUCCESS
                and self._pending
                and len(self._pending) < MAX_BATCH
                and self._readable()
            ):
                rc = self._network(0.0)
            if self._pending and not self.gateway.start_verdicts_due:
                if self._republish and self.client.is_connected():
                    self.gateway.go_live()  # the answers to the backlog's arrivals go out
                moved = self.gateway.outputs()
                self._drain()
                # handling the batch warmed the path: the next rehearsal is due a full
                # --keep-warm-ms later, not at once while the broker and the sign's
                # subscribers need the CPU for what was just published
                self._last_drain = self._last_warm = time.monotonic()
                if self.gateway.outputs() != moved:
                    self._last_change = self._last_drain
            if (
                self._republish
                and self.client.is_connected()
                and not self.gateway.start_verdicts_due
            ):
                # every zone and sign, after the reports the broker kept for this gateway
                # are in (the batch above): before them, a restart after a stop showed the
                # counts of before the stop for that long
                self._republish = False
                self.gateway.publish_all()
            if self._checkpoint_due(2 * CHECKPOINT_MAX_S):
                self._flush_checkpoint()  # steps do not keep up: all of it, bounded at ~1 s
            elif self._checkpoint_due(CHECKPOINT_MAX_S):
                # never quiet for long: a larger step on every round (at least one
                # report expanded, more until a message is waiting)
                self._flush_checkpoint(
                    step=True, rows=OVERDUE_STEP_ROWS, interrupted=self._readable
                )
            elif (
                self._checkpoint_due(CHECKPOINT_MIN_S)
                and time.monotonic() - self._last_drain >= QUIET_S
                and not self._readable()
            ):
                # quiet: a step, cut short when a report comes
                self._flush_checkpoint(step=True, rows=QUIET_STEP_ROWS, interrupted=self._readable)
            if (
                time.monotonic() >= self._next_prune
                and time.monotonic() - self._last_drain >= QUIET_S
                and not self._readable()
            ):
                self._prune()
            while self._from_other_threads:
                topic, payload, qos, retain = self._from_other_threads.popleft()
                self.client.publish(topic, payload, qos=qos, retain=retain)
            if warming and not self._pending:
                now = time.monotonic()
                # never ahead of a report already waiting in the socket
                if now - self._last_warm >= self._keep_warm_s and not self._readable():
                    self._last_warm = now
                    self._rehearse()
        self._disconnect()

    def prune_clock(self) -> float:
        """The wall time pruning goes by: the clock, when an agent's last report agrees
        with it within a day; else no later than a day beyond what the journal's newest
        event at start and the monotonic time since vouch for."""
        now = time.time()
        heard = self.gateway.last_report_ts
        if heard is not None and abs(now - heard) <= PRUNE_CLOCK_SLACK_S:
            return now
        vouched = self._prune_wall0 + (time.monotonic() - self._prune_mono0) + PRUNE_CLOCK_SLACK_S
        if now <= vouched:
            return now
        # said once no agent has vouched for the clock for a while (right after a start, the
        # first reports are on their way)
        if not self._prune_clock_warned and time.monotonic() - self._prune_mono0 > 600:
            self._prune_clock_warned = True
            log.warning(
                "the wall clock reads %s, %.1f days after the journal's newest event at start"
                " plus the time since, and no agent's report agrees with it: journal retention"
                " goes by the latter (a clock stepped ahead would forget history for good)",
                time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)),
                (now - vouched + PRUNE_CLOCK_SLACK_S) / 86400.0,
            )
        return vouched

    def _prune(self) -> None:
        """One step of forgetting history older than --journal-keep-days, and plates
        --plate-keep-hours after their hold."""
        now = self.prune_clock()
        cutoff = now - self._keep_s
        n = plates = 0
        try:
            with self.gateway.lock:
                if self._keep_s:
                    n = self.journal.prune(cutoff)
                plates = self.journal.forget_plates(now - self._plate_keep_s)
        except sqlite3.Error as exc:
            log.warning("pruning the journal failed (retried in %.0f s): %s", PRUNE_IDLE_S, exc)
        self.plates_forgotten += plates
        self.pruned += n
        self._next_prune = time.monotonic() + (PRUNE_BUSY_S if n or plates else PRUNE_IDLE_S)
        # forgetting history cannot be undone: said when it starts and when it ends (the
        # first start of a release with retention on a journal older than the window)
        days = self._keep_s / 86400.0
        if n and not self._pruning:
            log.log(
                logging.WARNING if self.pruned == n else logging.INFO,  # loud the first time
                "forgetting journal history (events, assignments and their plates) older "
                "than %g days, before %s: --journal-keep-days (0 keeps everything)",
                days,
                time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(cutoff)),
            )
        elif not n and self._pruning:
            log.info("forgot %d journal rows older than %g days", self._pruning, days)
        self._pruning = self._pruning + n if n else 0
        self._say_plates(plates)

    def _say_plates(self, plates: int) -> None:
        """Blanking plates cannot be undone either: loud the first time (the first start
        of a release with the keep, on a journal that kept plates for as long as its
        history), then when each run of steps starts and ends."""
        hours = self._plate_keep_s / 3600.0
        if plates and not self._blanking:
            log.log(
                logging.WARNING if self.plates_forgotten == plates else logging.INFO,
                "blanking the licence plates of holds that ended over %g h ago: "
                "--plate-keep-hours (docs/privacy.md)",
                hours,
            )
        elif not plates and self._blanking:
            log.info("blanked %d licence plates older than %g h", self._blanking, hours)
        self._blanking = self._blanking + plates if plates else 0

    def _rehearse(self) -> None:
        try:
            if self.gateway.rehearse(self._readable):
                self.rehearsals += 1
        except Exception:  # it only warms caches: never let it stop the loop
            log.exception("rehearsing the report path failed; keeping warm is turned off")
            self._keep_warm_s = 0.0

    def _connect(self) -> bool:
        """(Re)connect with capped, jittered backoff; keeps the timers running meanwhile."""
        if self._attempt:
            deadline = time.monotonic() + backoff_delay(self._attempt - 1)
            while time.monotonic() < deadline and not self._stop.is_set():
                self._stop.wait(min(TICK_S, max(0.0, deadline - time.monotonic())))
                self._tick()
                if self._checkpoint_due(CHECKPOINT_MAX_S):  # verdicts of the TTLs meanwhile
                    self._flush_checkpoint()
        self._attempt += 1
        self._answered = False  # until this connection's CONNACK
        self._accepted_at = -math.inf
        self._disconnect_said = False
        try:
            if self._ever_connected:
                self.client.reconnect()
            else:
                self.client.connect(self.broker.host, self.broker.port, keepalive=15)
                self._ever_connected = True
        except OSError as exc:
            self.gateway.broker_up = False  # also when it was never reached
            if self._attempt == 1 or self._attempt % 20 == 0:
                log.warning(
                    "MQTT broker %s unreachable (%s); retrying (attempt %d)",
                    self.broker.url,
                    self.broker.why_unreachable(exc),
                    self._attempt,
                )
            return False
        return True

    def _disconnect(self) -> None:
        try:
            if self.client.is_connected():
                info = self.client.publish(
                    topics.gateway_availability(self.site.id),
                    topics.OFFLINE,
                    qos=topics.QOS_AVAILABILITY,
                    retain=topics.RETAIN_AVAILABILITY,
                )
                deadline = time.monotonic() + 2
                while not info.is_published() and time.monotonic() < deadline:
                    self._network(0.05)
                self.client.disconnect()
        except Exception:
            log.exception("clean MQTT disconnect failed")

    def _outbox_stats(self) -> dict[str, Any]:
        assert self.writer is not None
        s = self.writer.stats()
        return {
            "depth": s.get("outbox_depth") or 0,
            "dropped_cap": s.get("dropped_cap") or 0,
            "dropped_rejected": s.get("dropped_4xx") or 0,
            "written": s.get("written") or 0,
            "auth_failed": s.get("auth_failed") or 0,
            "error": s.get("last_error"),
        }

    # -- lifecycle ---------------------------------------------------------------------------
    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(CHECKPOINT_S):
            try:
                self.journal.checkpoint()
            except sqlite3.Error as exc:
                log.warning("journal checkpoint failed: %s", exc)

    def start(self, collect: bool = True) -> None:
        """Run it. ``collect=False`` skips the collection before everything loaded is frozen:
        for a start that made next to no cyclic garbage (a site from its cache: ~300 objects
        at 20,000 spaces, against ~56,000 of a parse), it would cost ~0.06 s before the
        first signs and free next to nothing."""
        # everything loaded so far (site, core, pydantic schemas, numpy) lives as long as
        # the process: out of the collector's reach, a full collection no longer walks it
        # (tens of milliseconds in the middle of a report otherwise). The gateway's command
        # line keeps the collector off until here
        if collect:
            gc.collect()
        gc.freeze()
        if self.writer is not None:
            self.writer.start()
        self._thread = threading.Thread(target=self._run, name="gateway-mqtt", daemon=True)
        self._thread.start()
        self.journal.manual_checkpoints()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="journal-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._checkpointer is not None:
            self._checkpointer.join(10)
        with self.gateway.lock:
            try:
                self.gateway.journal_clean_stop()  # the newest seq and last_seen, and so
            except sqlite3.Error as exc:
                log.warning("journaling the agents' last quiet reports failed: %s", exc)
            self._flush_checkpoint()
        if self.history is not None:
            # the drops of the last minute are said now: the next process starts counting anew
            self.history.log_pending(force=True)
        if self.writer is not None:
            self.writer.stop()  # after the last checkpoint: it drains that one's points too
        with self.gateway.lock:
            self.journal.close()
        log.info("stopped")

    def wait(self) -> None:
        self._stop.wait()

    def request_stop(self, signum: int | None = None, *_: Any) -> None:
        if signum is not None:  # a clean stop, told from a crash in the log
            log.info("stopping (signal %s)", signal.Signals(signum).name)
        self._stop.set()


def _realtime_scheduling() -> bool:
    """Does this thread run under a real-time policy (SCHED_FIFO / SCHED_RR, e.g. chrt)?"""
    try:
        return os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR)
    except (AttributeError, OSError):  # not Linux
        return False
