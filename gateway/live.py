"""The gateway's engine and its in-process read side (``gateway.readside.LiveView``).

:class:`LiveGateway` turns incoming MQTT messages into journaled state changes,
allocation core updates, and the zone counts, sign contents and assignments to
publish. It does no network I/O itself: the service hands it a ``publish``
function and calls :meth:`LiveGateway.handle` from the MQTT thread and
:meth:`LiveGateway.tick` from a timer. One lock serialises all of it, so the
API thread can read consistent snapshots.

Order per message: validate -> apply to the state arrays -> update the core ->
commit the changes (``events`` and the agent's sequence) -> publish the signs,
then the zone counts. Nothing derived from a change leaves before its commit.
The checkpoint (current state per space, sign contents, InfluxDB outbox) is
written after publishing: at once, or, with ``defer_checkpoint``, when the
service is idle (:meth:`LiveGateway.flush_checkpoint`); a restart replays the
events after the last checkpoint.

This module has the start, the entry points, the clocks and that pipeline; its other parts
are mixins in modules of their own, sharing its state (set up here) and its lock:
``gateway.live_agents`` (reports missed or refused, boot conflicts, availability,
health), ``gateway.live_arrivals`` (drivers' arrivals and cancels, gate clocks),
``gateway.live_controls`` (managers' closes and opens of spaces and zones),
``gateway.live_signs`` (signs and zone counts published), ``gateway.live_journal``
(change rows, quiet reports, the checkpoint) and ``gateway.live_read`` (the read side);
``gateway.live_types`` has what they share. All of them log as ``gateway.live``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from gateway.allocation import AllocationCore, CoreLayout, lane_distances
from gateway.arrivals import ArrivalDesk
from gateway.displays import RenderedLine, SignRenderer
from gateway.gate_clock import GateClocks
from gateway.ingest import AcceptedReport, Rejection, RejectionLog, ReportGate, how_long
from gateway.journal import (
    ALIVE_JOURNAL_S,
    ALIVE_KEY,
    BACKUP_TAKEN_KEY,
    CLEAN_STOP_KEY,
    History,
    Journal,
)
from gateway.lag import ReportLag
from gateway.live_agents import AVAILABILITY_LOG_INTERVAL_S as AVAILABILITY_LOG_INTERVAL_S
from gateway.live_agents import CONTESTED_GAP_S as CONTESTED_GAP_S
from gateway.live_agents import LiveAgents
from gateway.live_arrivals import LiveArrivals
from gateway.live_controls import LiveControls
from gateway.live_journal import EXPAND_STEP_ROWS as EXPAND_STEP_ROWS
from gateway.live_journal import QUIET_JOURNAL_S as QUIET_JOURNAL_S
from gateway.live_journal import LiveJournaling
from gateway.live_read import LiveRead
from gateway.live_signs import LiveSigns
from gateway.live_types import GAP_LOG_INTERVAL_S as GAP_LOG_INTERVAL_S
from gateway.live_types import _Segment, _Sign
from gateway.readside import BootConflictLog, LiveEvent, RefusalLog
from gateway.service import MAX_HOLDS_PER_ENTRANCE
from gateway.site_changes import (
    DIGEST_KEY,
    OUTLINE_KEY,
    SITE_FILE_BY,
    SITE_ID_KEY,
    compare,
    outline,
    parse_outline,
)
from gateway.state import OCCUPIED, LiveState
from parking import closures, topics
from parking.closures import ZONE_CLOSURES_KEY, ZoneClosure
from parking.payloads import FUTURE_TOLERANCE_S, HealthReport
from parking.site import Site, lane_warnings
from parking.states import STATE_NAMES

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]
"""publish(topic, payload, qos, retain)"""

REHEARSAL_MAX_OBSERVATIONS = 64  # larger reports are not rehearsed (see _stage_report)
GATE_OFFSETS_KEY = "gate_clock_offsets"
"""Journal meta: {entrance: [offset s, wall time learnt]}, so a restarted gateway holds the
spaces of a skewed gate's first arrivals too (its offset learnt again only after them)."""
HOST_CLOCK_STEP_S = 2.0
"""A change of this host's wall clock against its monotonic one past this is a step (NTP):
said once in the log. Slewing never comes near it between two ticks."""
CORE_STEP_SLACK_S = 0.1  # a forward jump of the wall clock beyond the monotonic one: a step
ZONE_HISTORY_S = 10.0
# the InfluxDB points of an outage's unknown counts are this long after its start: not on
# the same nanosecond as the last run's own last point, which they would overwrite
OUTAGE_POINT_AFTER_S = 0.001
LATENCY_KEEP = 1000


def _cached_lane_distances(
    tables: dict[str, Any], journal: Journal
) -> tuple[np.ndarray, np.ndarray]:
    """The lane graph's driving distances (of a site's ``CoreLayout.site_tables``), kept in
    the journal under a hash of the graph: a restart of the same site skips Dijkstra and
    scipy's import (most of its start-up)."""
    graph = [tables["n_nodes"], tables["edges"], tables["entrance_nodes"]]
    key = "lanes:" + hashlib.sha256(json.dumps(graph).encode()).hexdigest()
    blob = journal.cached(key)
    if blob is not None:
        with np.load(io.BytesIO(blob)) as f:
            return f["dist"], f["pred"]
    dist, pred = lane_distances(*graph)
    buf = io.BytesIO()
    np.savez(buf, dist=dist, pred=pred)
    journal.put_cache(key, buf.getvalue())
    return dist, pred


def _unknown_but_closed(counts: dict[str, int]) -> dict[str, int]:
    """A zone's counts with nothing known: all but the closed spaces unknown."""
    return {
        "free": 0,
        "occupied": 0,
        "unknown": counts["free"] + counts["occupied"] + counts["unknown"],
        "closed": counts["closed"],
        "total": counts["total"],
    }


def minute_of_day(wall: float, tz: ZoneInfo) -> int:
    """Local minute of the day at UNIX time ``wall`` in the site's timezone."""
    t = datetime.fromtimestamp(wall, tz)
    return t.hour * 60 + t.minute


@dataclass
class _Staged:
    """Reports applied to the state but not yet journaled and published."""

    segments: list[_Segment] = field(default_factory=list)
    reports: list[AcceptedReport] = field(default_factory=list)
    started: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.segments.clear()
        self.reports.clear()
        self.started.clear()


class LiveGateway(LiveAgents, LiveArrivals, LiveControls, LiveSigns, LiveJournaling, LiveRead):
    """State, journal, allocation core and sign contents of one site."""

    def __init__(
        self,
        site: Site,
        journal: Journal,
        publish: Publish,
        *,
        hold_s: float = 180.0,
        max_holds_per_entrance: int = MAX_HOLDS_PER_ENTRANCE,
        core_options: dict[str, float] | None = None,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        policy_clock: Callable[[], float] | None = None,
        defer_checkpoint: bool = False,
        journal_plates: bool = True,
        defer_start_verdicts: bool = False,
    ):
        self.site = site
        # True: the outage's TTL verdicts wait for start_verdicts(), which the service calls
        # once the broker's backlog is in (agents heard meanwhile were not silent)
        self.defer_start_verdicts = defer_start_verdicts
        self.start_verdicts_due = False
        # False (--plate-keep-hours 0): an arrival's plate is echoed to its gate, never stored
        self.journal_plates = journal_plates
        # False: the checkpoint follows every publication; True: the caller flushes it
        self.defer_checkpoint = defer_checkpoint
        self.journal = journal
        self._publish = publish
        self.history = history
        self._clock = clock
        self._mono = mono
        # the time policy windows are judged by: wall time, or a simulated day (demo)
        self._policy_clock = policy_clock or clock
        self._core_offset = 0.0  # what steps of the wall clock took off (or added) so far
        self._core_last = -math.inf
        # events are stamped no earlier than the last one (``_event_time``), and a step of
        # this host's clock is said (``_watch_host_clock``)
        self._event_last = -math.inf  # the journal's last, once resume() expanded it
        self._host_clock_offset: float | None = None
        self._core_last_mono = -math.inf
        self.lock = threading.RLock()
        self.tz = ZoneInfo(site.timezone)
        self.state = LiveState(site)
        self.gate = ReportGate(site)
        self.rejections = RejectionLog(mono)
        # the site file's closures reach the core as CLOSED states from LiveState, like a
        # manager's, so a manager can open such a space (a layout closure is permanent)
        tables = CoreLayout.site_tables(site)
        self.layout = CoreLayout.from_arrays(
            **{**tables, "closed": None}, distances=_cached_lane_distances(tables, journal)
        )
        self.minute = minute_of_day(self._policy_clock(), self.tz)
        self.core = AllocationCore(self.layout, self.minute, **(core_options or {}))
        for warning in lane_warnings(site):  # site check says so too; here the log does
            log.warning("site %s: %s", site.id, warning)
        # signs need only the counts: the best-space minima move when a car arrives or
        # the service is idle (flush_checkpoint), off the report-to-sign path
        self.core.lazy_minima = True
        self.renderer = SignRenderer(site)
        self.desk = ArrivalDesk(
            site,
            self.core,
            hold_s=hold_s,
            max_holds_per_entrance=max_holds_per_entrance,
            blind_fraction=self.renderer.fraction,
            mono=mono,
        )
        self.hold_s = self.desk.hold_s
        self.lines = self.renderer.layout
        site_lines = tuple((d.id, i) for d in site.displays for i in range(len(d.lines)))
        if tuple(self.layout.line_keys) != site_lines:  # the signs index the core's line arrays
            raise ValueError("the allocation core's display lines are not in site order")
        self._display_topics = [topics.display_content(site.id, d.id) for d in site.displays]
        self._zone_topics = [topics.zone(site.id, z.id) for z in site.zones]
        self._zone_json = [json.dumps(z.id) for z in site.zones]
        self._space_json = [json.dumps(sp.id) for sp in site.spaces]  # quoted once, for _journal
        self._zone_index = {z.id: i for i, z in enumerate(site.zones)}
        self._zone_spaces: dict[str, list[str]] = {z.id: [] for z in site.zones}
        for sp in site.spaces:
            self._zone_spaces[sp.zone].append(sp.id)
        self._zone_closures: dict[str, ZoneClosure] = {}  # read from the journal by resume
        self._state_json = [json.dumps(name) for name in STATE_NAMES]
        self._entrance = {e: i for i, e in enumerate(self.layout.entrances)}
        # the site's classes (the classes of their tiers after them are the core's own)
        self._class = {
            c: i for i, c in enumerate(self.layout.classes[: self.layout.public_classes])
        }
        self._zone_name = {z.id: z.name for z in site.zones}
        # (free, unknown, total) of every display line as last rendered, and its display
        self._line_seen = [(-1, -1, -1)] * len(self.lines.line_display)
        self._line_owner: list[int] = self.lines.line_display.tolist()
        self._shown: dict[int, tuple[RenderedLine, ...]] = {}
        self._shown_ts: dict[int, float] = {}  # wall time of each sign's content
        self._shown_mono: dict[int, float] = {}  # and when it was published, monotonic
        self._zone_published: dict[int, tuple[int, ...]] = {}
        self._zone_told: dict[int, tuple[tuple[int, ...], int]] = {}  # the views', with held
        self._zone_ts: dict[int, float] = {}  # when each zone's counts were last published
        self._online: dict[str, bool] = {}
        self._agent_seen: dict[str, float] = {}
        self._zone_recorded: dict[int, dict[str, int]] = {}  # last on-change history row
        self._health: dict[str, HealthReport] = {}
        self._subscribers: list[Callable[[LiveEvent], None]] = []
        self._latency: deque[float] = deque(maxlen=LATENCY_KEEP)
        self.accepted = 0
        self.state_changes = 0
        self.sign_updates = 0
        self.repeated_arrivals = 0
        # arrivals sent under a request_id answered for another car (a gate's counter
        # restarted): answered anew
        self.reused_request_ids = 0
        self._reused_logged = -math.inf  # monotonic time of its last warning
        # (entrance, or "?" for one the site lacks; reason) -> arrivals refused
        self.refused_arrivals: dict[tuple[str, str], int] = {}
        # (entrance, or "?"; "released" or why not) -> cancels of arrivals (entrances/{e}/cancel)
        self.arrival_cancels: dict[tuple[str, str], int] = {}
        self.refusals = RefusalLog()  # recent ones, for the managers' alert
        # agents whose replaced boot's live reports keep being refused (agent_boot_conflict);
        # journaled for a stand-alone API at most every BOOT_CONFLICTS_SAVE_S (monotonic)
        self.boot_conflicts = BootConflictLog()
        self._boot_conflicts_saved = -math.inf
        # per agent, reports its seq numbers skipped: they never arrived (_note_gap)
        self.reports_missed = dict.fromkeys(
            sorted(x.agent for x in (*site.buses, *site.cameras)), 0
        )
        self._gap_logged: dict[str, float] = {}  # agent -> monotonic time of its last warning
        self.seq_jumps: dict[str, int] = {}  # agent -> gaps too wide to be lost reports
        # monotonic time the service last saw another client take this gateway's session
        # (its client id); gaps near it are that client's doing
        self.session_contested_at: float | None = None
        # agent -> (boot, seqs) of its reports refused whole since its last one taken: in the
        # gap the next one leaves, they arrived (a gap counts only what never did)
        self._refused_seqs: dict[str, tuple[str, set[int]]] = {}
        self._restored_backup = False  # started on a journal backup (BACKUP_TAKEN_KEY)
        self._after_crash = False  # the last run did not stop cleanly (CLEAN_STOP_KEY)
        self._reported: set[str] = set()  # agents heard since this start
        # agent -> how long after its sending the gateway handled its last report, less the
        # same when the gateway last read it with nothing else waiting (clock offset and
        # transit): what it is behind by, as reports queue at the broker
        self.lag = ReportLag()
        self._caught_up = True  # the batch being handled was all that was waiting
        # agent -> (monotonic time of its last availability line, changes not logged since,
        # the state that line said)
        self._availability_logged: dict[str, tuple[float, int, bool | None]] = {}
        self.answered = 0  # assignments published, repeated ones included
        self.gate_clocks = GateClocks()  # each entrance's clock offset (_arrival_age)
        self.outbox_stats: Callable[[], dict[str, Any]] | None = None
        self._next_zone_history = 0.0
        # wall time of the last sign of life journaled (ALIVE_KEY is written after
        # ALIVE_JOURNAL_S without one: a quiet site's agents' rows are signs enough)
        self._alive_wall = -math.inf
        # the gateway's own downtime is recorded (record_outage) when longer than the
        # shortest TTL of a source: a shorter one left nothing the record knew go stale
        self.outage_min_s = site.shortest_ttl_s()
        self._live = False  # nothing is sent before the first publish_all (connected)
        self._broker_up = True  # the service says when it loses (and regains) the broker
        self._broker_up_at: float | None = None  # wall time it was (re)gained (None: never)
        # checkpoint not written yet: spaces whose row moved, signs, history points
        self._dirty = np.zeros(len(site.spaces), dtype=bool)
        self._dirty_signs: dict[int, _Sign] = {}
        self._dirty_history: list[tuple[str, str, str, float]] = []
        self._zone_history_rows: list[tuple[str, dict[str, int], float]] = []
        self._dirty_since: float | None = None  # monotonic time of the oldest unflushed item
        self._unexpanded = False  # pending change rows written since the last expansion
        # agent -> (boot, seq, ts) of its newest quiet report not journaled (QUIET_JOURNAL_S)
        self._quiet_held: dict[str, tuple[str, int, float]] = {}
        # agent -> (boot, monotonic time) of its last quiet report journaled
        self._quiet_noted: dict[str, tuple[str, float]] = {}
        self._last_report: tuple[str, bytes] | None = None  # (agent, payload) for rehearse()
        self._retired_topics: list[str] = []  # retained topics to clear once connected
        self.last_report_ts: float | None = None  # the ts of the last report taken
        self.resume()

    # -- startup -----------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the journal's current state, sequences and open holds."""
        now, mono = self._clock(), self._mono()
        # pending changes of the last run are expanded under the zones they were reported
        # in; events from now on carry this site file's zones (the history by zone of the time)
        self.journal.put_space_zones({sp.id: sp.zone for sp in self.site.spaces})
        with self.journal.transaction():
            self.journal.expand_pending()  # committed before a crash: now events
        self._event_last = self.journal.last_event_ts()
        self._zone_closures = self._true_closures(
            closures.load(self.journal.meta(ZONE_CLOSURES_KEY))
        )
        self._restore_gate_offsets(now, mono)
        # after a crash, a quiet agent's newest seq may not be journaled (QUIET_JOURNAL_S)
        down_since, clean = self.journal.down_since(now)
        self._after_crash = not clean
        why = "a clean stop" if clean else "its last sign of life in the journal: a crash"
        if not self._after_crash:  # this run may crash: the mark goes with the start
            with self.journal.transaction() as conn:
                conn.execute("DELETE FROM meta WHERE key = ?", (CLEAN_STOP_KEY,))
        ahead = self.journal.clamp_heard_ahead(now)  # after down_since, which leaves them out
        if ahead:
            log.warning(
                "%d agent(s) were last heard later than this host's clock reads now (a clock"
                " that ran ahead, since corrected): taken as heard now",
                ahead,
            )
        taken = self.journal.meta(BACKUP_TAKEN_KEY)
        if taken is not None:  # said once: the key goes with this start
            self._restored_backup = True
            # its record ends when the copy was taken at the latest
            down_since = min(float(taken), now, down_since if down_since is not None else now)
            why = "a restored backup"
            log.warning(
                "this journal is a backup taken %s: reports, holds and dashboard users changed "
                "since then are not in it (deploy/README.md, Backups)",
                time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(float(taken))),
            )
            with self.journal.transaction() as conn:
                conn.execute("DELETE FROM meta WHERE key = ?", (BACKUP_TAKEN_KEY,))
        stored_agents = {a.agent: a for a in self.journal.agents()}
        retired = self.journal.retired_boots()
        for a in stored_agents.values():
            if a.boot is not None and a.seq is not None:
                self.gate.restore(a.agent, a.boot, a.seq, retired.get(a.agent, ()))
            self._online[a.agent] = a.online
            self._agent_seen[a.agent] = a.last_seen
        index = self.site.space_index
        codes = {name: i for i, name in enumerate(STATE_NAMES)}
        rows = {row[0]: row for row in self.journal.spaces()}
        mark = self.journal.checkpoint_event()
        replayed = self._replay(rows, self.journal.events_after(mark)) if mark is not None else []
        loaded = 0
        for (
            space,
            _state,
            sensed,
            closed,
            since,
            obs_since,
            last_seen,
            agent,
        ) in rows.values():
            s = index.get(space)
            if s is None:  # the site file dropped this space
                continue
            heard = stored_agents[agent].last_seen if agent in stored_agents else 0.0
            self.state.restore(
                s,
                codes[sensed],
                bool(closed),
                since,
                obs_since,
                max(last_seen, heard),
                agent,
                now,
                mono,
            )
            loaded += 1
        self.state.finish_restore()
        self.core.update_many(
            np.arange(len(self.site.spaces), dtype=np.int64),
            self.state.state.copy(),
            self._core_time(now),
        )
        restored = 0
        seen: list[str] = []  # holds whose car the journal's state shows seen: ended here
        core_now = self._core_time(now)
        for sp, until, entrance in self.journal.open_holds(now):
            # a car assigned before the restart is still on its way: keep its space, also
            # while the space is unknown or closed (as a running core does); a car seen in
            # it (occupied for the core's hold_seen_s, by the time its state began) ended
            # the hold. A closed space's sensed state has no time of its own: occupied, its
            # hold ends here
            s = index.get(sp)
            if s is None:
                continue
            seen_since = None
            if self.state.sensed[s] == OCCUPIED:
                occupied_for = max(0.0, now - float(self.state.since[s]))
                if self.state.closed[s] or occupied_for >= self.core.hold_seen_s:
                    seen.append(sp)
                    continue
                seen_since = core_now - occupied_for
            # never longer than a hold given now: an expiry stamped before the wall
            # clock stepped back would otherwise keep the space off the signs for
            # as long as the step (the running core ended it on time)
            until = min(until, now + self.hold_s)
            self.core.hold(s, until, core_now, seen_since=seen_since)
            self.desk.note_hold(entrance, s)
            restored += 1
        if seen:
            # journaled as a running gateway does: not journaled, the hold came back at the
            # next start once its car had left (its space off the signs, a cancel "cancelled")
            with self.journal.transaction():
                self.journal.release_holds(seen, now)
            log.info("ended %d holds whose car was seen in its space while stopped", len(seen))
        if restored:
            log.info("restored %d holds of cars on their way", restored)
        log.info(
            "resumed %d spaces and %d agents from %s", loaded, len(stored_agents), self.journal.path
        )
        if replayed:
            log.info("replayed %d events committed after the last checkpoint", len(replayed))
            self._dirty[[index[sp] for sp in replayed if sp in index]] = True
        with self.lock:
            self._record_outage(down_since, now, clean=not self._after_crash, why=why)
            self._snapshot_lines()
            for d in range(len(self.site.displays)):
                self._shown[d] = self._render(d)
            # silence is never free: sources not heard within their TTL are unknown as of
            # now; with defer_start_verdicts, once the broker's backlog is in
            # (start_verdicts), so that an agent it kept reports of does not blink unknown
            if self.defer_start_verdicts:
                self.start_verdicts_due = True
            else:
                self._expire_at_start(now, mono)
            # the signs as of now, so a restart can show them before it has loaded everything
            signs = [self._sign(d, self._shown[d], now) for d in range(len(self.site.displays))]
            for sign in signs:
                self._shown_ts[sign.display] = sign.ts
                self._shown_mono[sign.display] = mono
                self._dirty_signs[sign.display] = sign
            self._dirty_since = self._mono()
            self.flush_checkpoint()
            self._reconcile_site(self._event_time(now), had_state=bool(rows))

    def _journal_alive(self, now: float) -> None:
        """The journal's sign that this gateway runs (where a crash's downtime begins)."""
        self._alive_wall = now
        self.journal.set_meta(ALIVE_KEY, repr(now))

    def _record_outage(self, since: float | None, now: float, clean: bool, why: str) -> None:
        """Journal this gateway's own downtime, from ``since`` (its clean stop, its last
        sign of life in the journal, or a backup's: ``why``) to ``now``, when longer than
        :attr:`outage_min_s`. History renders it unknown, since nothing was recorded then,
        whatever the broker kept for later; with InfluxDB, every zone's counts turn
        unknown at its start."""
        if since is None or now - since < self.outage_min_s:
            return  # a new journal, a short restart, or a wall clock stepped back
        blind = [
            (zone, _unknown_but_closed(self.state.zone_row(z)), since + OUTAGE_POINT_AFTER_S)
            for z, zone in enumerate(self.state.zone_ids)
        ]
        with self.journal.transaction() as conn:
            self.journal.record_outage(since, now, clean)
            if self.history is not None:
                self.history.zone_occupancies(conn, blind)
        log.info(
            "this gateway was down for %.0f s since %s (%s): its history shows that time as"
            " unknown",
            now - since,
            time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(since)),
            why,
        )

    def _reconcile_site(self, now: float, had_state: bool) -> None:
        """Compare the site file with the one the journal last ran with: log what changed,
        apply the closures the file added or removed, forget removed spaces and signs, and
        note the retained topics nobody keeps any more (cleared by :meth:`publish_all`)."""
        old = parse_outline(self.journal.meta(OUTLINE_KEY))
        shape = outline(self.site)  # ~10 ms at 20,000 spaces: once
        changes = compare(old, self.site, shape)
        for line in changes.lines():
            log.warning("the site file changed since the last start: %s", line)
        if old is None and had_state:
            log.info(
                "the journal does not say which site file it last ran with (an older"
                " release); changes of the file are compared from the next start on"
            )
        index = self.site.space_index
        closed = self.state.closed
        close = [s for s in changes.closed_by_file if not closed[index[s]]]
        reopen = changes.opened_by_file
        if reopen:
            # a manager's own closure stands: the file only takes back what it closed (a
            # space closed since the first start has no row: it reads open by the file now)
            managers = self.journal.closed_by_manager(reopen, besides=SITE_FILE_BY)
            for s in managers:
                log.warning(
                    "space %s: the site file no longer closes it, but a manager closed it;"
                    " it stays closed until a manager opens it",
                    s,
                )
                if not closed[index[s]]:
                    close.append(s)
            reopen = [s for s in reopen if s not in managers and closed[index[s]]]
        with self.lock:
            segments = [
                _Segment(
                    self.state.control(index[s], action == "close", now),
                    now,
                    "manager",
                    SITE_FILE_BY,
                    note=f"the site file {'closes' if action == 'close' else 'no longer closes'} it",
                )
                for action, spaces in (("close", close), ("open", reopen))
                for s in spaces
            ]
            if segments:
                self._commit_and_propagate(segments, now)
                self.flush_checkpoint()
            with self.journal.transaction():
                dropped = self.journal.drop_signs(d.id for d in self.site.displays)
                self.journal.drop_spaces(index)
                self.journal.set_meta(DIGEST_KEY, self.site.digest)
                self.journal.set_meta(SITE_ID_KEY, self.site.id)
                if not changes.retired_topics and shape != old:  # ~1 MB at 20,000 spaces
                    self.journal.set_meta(OUTLINE_KEY, json.dumps(shape))
        if dropped:
            log.info("forgot the signs of removed displays: %s", ", ".join(dropped))
        # cleared once connected; the outline is journaled then, so a stop before that
        # clears them at the next start
        self._retired_topics = changes.retired_topics

    def _replay(self, rows: dict[str, tuple[Any, ...]], events: list[tuple[Any, ...]]) -> list[str]:
        """Apply events committed after the checkpoint to its rows (in place); the spaces
        they touched, in order. A manager's event opens or closes; any other is the new
        sensed state (sensor reports carry a seq and vouch for last_seen)."""
        touched = []
        for _id, ts, space, _old, new, source, agent, seq in events:
            sp = self.site.space_index.get(space)
            if sp is None:
                continue
            row = rows.get(space)
            if row is None:
                closed = int(self.site.spaces[sp].closed)
                row = (space, "unknown", "unknown", closed, 0.0, 0.0, 0.0, None)
            _, _state, sensed, closed, _since, obs_since, last_seen, who = row
            if source == "manager":
                closed = int(new == "closed")
                sensed = sensed if closed else new
            else:
                closed, sensed = 0, new
                if seq is not None:
                    last_seen, who = max(last_seen, ts), agent
            rows[space] = (space, new, sensed, closed, ts, obs_since, last_seen, who)
            touched.append(space)
            if self.history is not None:
                self._dirty_history.append((self.site.spaces[sp].zone, space, new, ts))
        return touched

    # -- entry points ------------------------------------------------------------------------
    def handle_batch(self, messages: list[tuple[str, bytes, float]]) -> None:
        """Messages that queued up meanwhile, (topic, payload, perf_counter at receipt), in
        order. Consecutive occupancy reports share one journal transaction, one core update
        and one publication of what changed, so a backlog drains fast; anything else is
        handled on its own, in order. Never raises for bad input."""
        staged = _Staged()
        with self.lock:
            # one message: the socket had nothing else (the service reads all there is)
            self._caught_up = len(messages) <= 1
            for topic, payload, t0 in messages:
                parsed = topics.parse(topic)
                if (
                    parsed is not None
                    and parsed.kind == "edge/occupancy"
                    and parsed.site == self.site.id
                ):
                    self._stage_report(topic, parsed.ident, payload, t0, staged)
                    continue
                self._flush(staged)
                self.handle(topic, payload, t0)
            self._flush(staged)

    def refuse_retained(self, topic: str, payload: bytes) -> bool:
        """A retained message of a kind the contract never retains (a report, an arrival,
        a manager's control): refused and counted (True), not taken as news at every
        connect. Retained availability and health are the contract's (False)."""
        parsed = topics.parse(topic)
        if parsed is None or parsed.kind in topics.RETAINED_KINDS:
            return False
        why = (
            f"a retained {parsed.kind} message (the broker kept it; it is not news): the "
            "sender must publish without the retain flag; clear it with `mosquitto_pub -r -n "
            "-t TOPIC` as the sender's broker user"
        )
        self._reject(Rejection("retained", why), topic, payload)
        return True

    def handle(self, topic: str, payload: bytes, t0: float | None = None) -> None:
        """One MQTT message; never raises for bad input (rejected and counted instead)."""
        t0 = time.perf_counter() if t0 is None else t0
        parsed = topics.parse(topic)
        if parsed is None or parsed.site != self.site.id:
            self._reject(Rejection("unknown_topic", topic), topic, payload)
            return
        kind = parsed.kind
        if kind == "edge/occupancy":
            self._on_report(topic, parsed.ident, payload, t0)
        elif kind == "edge/availability":
            self._on_availability(topic, parsed.ident, payload)
        elif kind == "edge/health":
            self._on_health(topic, parsed.ident, payload)
        elif kind == "entrances/arrival":
            self._on_arrival(topic, parsed.ident, payload, t0)
        elif kind == "entrances/cancel":
            self._on_cancel(topic, parsed.ident, payload)
        elif kind == "control/spaces":
            self._on_control(topic, parsed.ident, payload)
        elif kind == "control/zones":
            self._on_control(topic, parsed.ident, payload, zone=True)

    def rehearse(self, interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Run the read-only steps of the report path on the last accepted report, as if it
        came again with the next sequence number: accept it (decode and check), render and
        encode every sign, read the journal. Nothing changes and nothing is sent. Between reports this
        keeps that code and its data in the CPU's caches, so the next report is not handled
        several times slower after a quiet spell (docs/architecture.md, "Keeping warm").
        ``interrupted`` is asked between the steps (a few tens of microseconds each): when
        it says a report is waiting, the rest is skipped, so a report never waits behind a
        whole rehearsal. False when there is no report to rehearse."""
        last = self._last_report
        if last is None:
            return False
        with self.lock:
            self.gate.accept(*last, self.state.obs_since, as_next=True, now=self._clock())
            if interrupted():
                return True
            lf_l, lu_l, lt_l, cap_l = self._line_counts()
            now = self._clock()
            for d in range(len(self.site.displays)):
                if interrupted():
                    return True
                self.renderer.payload(d, self.renderer.lines(d, lf_l, lu_l, lt_l, cap_l), now)
            self.journal.last_event_id()
        return True

    def tick(self) -> None:
        """Timers: TTL expiry, hold expiry, sign refresh, policy minute, zone history."""
        if self.start_verdicts_due:  # a second or two: nothing derived before the verdicts
            return
        now, mono = self._clock(), self._mono()
        with self.lock:
            self._watch_host_clock(now, mono)
            self._expire(self._event_time(now), mono)
            ended = self.core.expire_holds(self._core_time(now))
            if ended:
                # journaled, so that a restart does not restore them by the wall clock
                # (which may have stepped back since they were given)
                with self.journal.transaction():
                    self.journal.release_holds([self.state.space_ids[s] for s in ended], now)
                self._refresh_displays(now)
                self._publish_zones(sorted({int(self.state.zone[s]) for s in ended}), now)
            if self._follow_policy_minute():
                self._refresh_displays(now)
            # republished at half the validity by either clock: by the wall clock alone, a
            # step back would hold the refresh back by the step (displays blank the sign),
            # and by the monotonic one alone, a step forward would leave content whose
            # expiry has passed up for half the validity; content stamped later than now
            # (a step back) is stamped afresh at once
            half = self.site.display_settings.expires_s / 2
            for d, ts in list(self._shown_ts.items()):
                if mono >= self._shown_mono[d] + half or not ts <= now < ts + half:
                    self._publish_display(d, self._shown[d], now)
            if self.history is not None and mono >= self._next_zone_history:
                self._next_zone_history = mono + ZONE_HISTORY_S
                with self.journal.transaction() as conn:
                    self.history.zone_occupancies(
                        conn,
                        [
                            (zone, self.state.zone_row(z), now)
                            for z, zone in enumerate(self.state.zone_ids)
                        ],
                    )
                    # in the same commit: after a crash, the outage's unknown points must
                    # come after every point this run wrote, or they would read as its end
                    self._journal_alive(now)
            if not 0.0 <= now - self._alive_wall < ALIVE_JOURNAL_S:
                self._journal_alive(now)
            if self.gate_clocks.unsaved:  # journaled here, off the answers' path
                self.journal.set_meta(GATE_OFFSETS_KEY, self.gate_clocks.to_save(now, mono))
            said = self.lag.to_say(mono)
            if said is not None:
                log.log(*said)
            self._log_availability_later()
            self.journal_quiet()
            if self._dirty_since is not None and not self.defer_checkpoint:
                self.flush_checkpoint(step=True)

    def _restore_gate_offsets(self, wall: float, mono: float) -> None:
        """The offsets journaled before a restart (one that does not parse is relearnt)."""
        try:
            self.gate_clocks.restore(
                self.journal.meta(GATE_OFFSETS_KEY) or "{}", self._entrance, wall, mono
            )
        except ValueError:
            log.warning(
                "journal meta %s does not parse: gate clock offsets are relearnt", GATE_OFFSETS_KEY
            )

    def _event_time(self, wall: float) -> float:
        """An event's time: the wall clock, but never earlier than the last event's, within
        ``FUTURE_TOLERANCE_S``. A step back of this host's clock (or a start with it behind)
        would otherwise put the journal out of time order, which history reads by time and a
        restart by id: events share the last time until the clock catches up. Further ahead
        (a clock that ran days ahead, a journal restored from such a host) they would share
        it for days: the clock's own time is taken, and the disorder said. Under the lock."""
        ahead = self._event_last - wall
        if ahead > FUTURE_TOLERANCE_S:
            log.warning(
                "the journal's newest event is %s ahead of this host's clock (a clock that"
                " ran ahead, since corrected?): events carry this clock's time from now on,"
                " earlier than those before them (history of that stretch reads out of order)",
                how_long(ahead),
            )
            self._event_last = wall
        t = max(wall, self._event_last)
        self._event_last = t
        return t

    def _watch_host_clock(self, wall: float, mono: float) -> None:
        """Say a step of this host's wall clock (NTP) once, with what it does here."""
        offset = wall - mono
        last, self._host_clock_offset = self._host_clock_offset, offset
        if last is None or abs(offset - last) <= HOST_CLOCK_STEP_S:
            return
        step = offset - last
        if step < 0:
            log.warning(
                "this host's clock stepped back by %.1f s (NTP correcting a clock that ran"
                " ahead?): %s; TTLs, holds and sign refreshes run on the monotonic clock",
                -step,
                "events are stamped no earlier than the last one until it catches up"
                if -step <= FUTURE_TOLERANCE_S
                else "events carry its time, earlier than the last ones",
            )
        else:
            log.warning(
                "this host's clock stepped forward by %.1f s (NTP setting a clock that was"
                " behind? check that it is synchronised at boot): events from now on carry"
                " the new time; TTLs, holds and sign refreshes run on the monotonic clock",
                step,
            )

    def _core_time(self, wall: float) -> float:
        """The allocation core's time: the wall clock, except that a step of it (NTP) is
        absorbed rather than replayed. Back: holds still end and congestion still decays
        on time (in the core an earlier time is no time at all). Forward: holds given
        before the step do not all end at once. Between two calls the core's time moves
        no further than the monotonic clock did, give or take CORE_STEP_SLACK_S."""
        mono = self._mono()
        t = wall + self._core_offset
        most = self._core_last + (mono - self._core_last_mono) + CORE_STEP_SLACK_S
        if t > most:
            self._core_offset -= t - most
            t = most
        if t < self._core_last:
            self._core_offset += self._core_last - t
            t = self._core_last
        self._core_last, self._core_last_mono = t, mono
        return t

    def _follow_policy_minute(self) -> bool:
        """Move the core to the policy clock's minute (every tick and before an arrival, so
        a window opens on its minute, not seconds late); True if eligibility changed."""
        minute = minute_of_day(self._policy_clock(), self.tz)
        if minute == self.minute:
            return False
        self.minute = minute
        return self.core.set_minute(minute)

    def _expire(self, now: float, mono: float, spaces: np.ndarray | None = None) -> None:
        changes = self.state.expire(now, mono, spaces)
        if len(changes.touched):
            self._commit_and_propagate([_Segment(changes, now, None, None)], now)

    def start_verdicts(self, heard: Collection[str] = ()) -> None:
        """The start's TTL verdicts, deferred (``defer_start_verdicts``) until the broker's
        backlog for this gateway is in: the agents in ``heard`` (a report or a health report
        of theirs in it) get none, since that backlog, handled next, brings their spaces up
        to date; the spaces of the others not heard within their TTL turn unknown now."""
        with self.lock:
            if not self.start_verdicts_due:
                return
            self.start_verdicts_due = False
            self._expire_at_start(self._clock(), self._mono(), heard)

    def _expire_at_start(self, wall: float, mono: float, heard: Collection[str] = ()) -> None:
        """At a start: the spaces not heard from within their source's TTL, except those of
        the agents in ``heard``, turn unknown as of now. Not dated when the TTL ran out while
        the gateway was stopped: whether an agent was silent then is known only from the
        broker's backlog, which cannot be seen whole before it is taken (docs/architecture.md,
        "Event times")."""
        stale = self.state.stale(mono)
        if len(stale) and heard:
            agents = self.state.agents
            quiet = [i for i, a in enumerate(self.state.agent[stale].tolist())
                     if a < 0 or agents[a] not in heard]  # fmt: skip
            stale = stale[quiet]
        if len(stale):
            self._expire(self._event_time(wall), mono, stale)

    def go_live(self) -> None:
        """Connected: what is handled from now on is sent (nothing is before this)."""
        with self.lock:
            self._live = True

    def publish_all(self) -> None:
        """(Re)connected: publish every zone and sign afresh (the broker may have lost them)."""
        now = self._clock()
        with self.lock:
            self._live = True
            if self._retired_topics:
                # an empty retained payload deletes the topic: a zone or sign the site file
                # no longer has must not show its last counts to anyone for good
                for topic in self._retired_topics:
                    self._publish(topic, b"", topics.QOS_ZONE, True)
                log.info(
                    "cleared %d retained topics the site file no longer has: %s",
                    len(self._retired_topics),
                    ", ".join(self._retired_topics),
                )
                self._retired_topics = []
                self.journal.set_meta(OUTLINE_KEY, json.dumps(outline(self.site)))
            self._zone_published.clear()
            self._publish_zones(range(len(self.state.zone_ids)), now)
            for d in range(len(self.site.displays)):
                self._publish_display(d, self._shown[d], now)

    # -- message kinds -----------------------------------------------------------------------
    def _on_report(self, topic: str, agent: str, payload: bytes, t0: float) -> None:
        with self.lock:
            staged = _Staged()
            self._stage_report(topic, agent, payload, t0, staged)
            self._flush(staged)

    def _stage_report(
        self, topic: str, agent: str, payload: bytes, t0: float, staged: _Staged
    ) -> None:
        """Validate a report and apply it to the state arrays; the caller flushes (journal,
        core, publish)."""
        acc = self.gate.accept(agent, payload, self.state.obs_since, now=self._clock())
        if isinstance(acc, Rejection):
            self._reject(acc, topic, payload)
            self._note_refused(agent, payload)
            if acc.conflict is not None:
                self._note_boot_conflict(agent, *acc.conflict)
            return
        for r in acc.rejected:
            self._reject(r, topic, payload)
        wall, mono = self._clock(), self._mono()
        now = self._event_time(wall)
        changes = self.state.observe(acc.spaces, acc.states, acc.since, agent, now, mono)
        refused = self._refused_seqs.pop(agent, None)
        if not acc.gap:
            vouched = self.gate.source_spaces(acc.source)
            if len(acc.stale):  # listed with a refused time: the agent disagrees with us
                vouched = vouched[~np.isin(vouched, acc.stale)]
            self.state.touch(vouched, now, mono)
        else:
            # before the commit (the gate has the last seq) and before _agent_seen moves
            self._note_gap(acc, now, mono, refused)
        known = self.gate.sequence(agent)
        self.gate.commit(acc)  # in memory now, so a duplicate later in the batch is refused
        self._reported.add(agent)
        delay = wall - max(0.0, time.perf_counter() - t0) - acc.ts
        self.lag.note(agent, delay, alone=self._caught_up, mono=self._mono())
        self._online[agent] = True
        self._agent_seen[agent] = now
        self.last_report_ts = acc.ts  # an agent's clock: the gateway's prune checks its own by it
        # the event's time is when the gateway took it: the journal's order is the order
        # things happened here (history and restarts read it that way), so a backlog an
        # agent spooled lands at its arrival (docs/architecture.md, "Event times")
        zone_rows = None
        if self.history is not None:
            zone_rows = tuple((z, self.state.zone_row(z)) for z in changes.zones.tolist())
        staged.segments.append(
            _Segment(
                changes,
                now,
                acc.source,
                acc.agent,
                acc.seq,
                acc.boot,
                zone_rows,
                same_boot=known is not None and known[0] == acc.boot,
            )
        )
        staged.reports.append(acc)
        staged.started.append(t0)
        if len(changes) and len(acc.spaces) <= REHEARSAL_MAX_OBSERVATIONS:
            # what rehearse() replays: a report like those drivers wait on (a snapshot of
            # thousands of spaces would make each rehearsal milliseconds long)
            self._last_report = (agent, payload)

    def _flush(self, staged: _Staged) -> None:
        if not staged.reports:
            return
        self._commit_and_propagate(staged.segments, self._clock())
        self.accepted += len(staged.reports)
        done = time.perf_counter()
        self._latency.extend(done - t0 for t0 in staged.started)
        staged.clear()

    # -- the pipeline ------------------------------------------------------------------------
    def _commit_and_propagate(
        self,
        segments: list[_Segment],
        now: float,
        *,
        agent_state: tuple[str, bool] | None = None,
        meta: tuple[str, str] | None = None,
    ) -> None:
        """Update the core, commit the changes (events, agent sequence) and ``meta`` (a
        key and value committed with them), publish the signs and zone counts they change,
        then note (or write) the checkpoint. Segments are applied in order."""
        journaled = [g for g in segments if len(g.changes) or g.seq is not None or g.again]
        segments = [g for g in segments if len(g.changes.touched) or len(g.changes)]
        if (
            journaled
            and not segments
            and not self._unexpanded
            and all(g.same_boot for g in journaled)
        ):
            # reports that changed nothing (a quiet site's periodic snapshots): only their
            # sequence and time, one row updated in place, not a change row to expand and a
            # checkpoint (~28 KB of writes each, 40 MB an hour on an edge box's SD card)
            journaled = self._note_quiet(journaled)
        n = sum(len(g.changes) for g in segments)
        if n:
            if len(segments) == 1:
                spaces, new = segments[0].changes.spaces, segments[0].changes.new
            else:
                spaces = np.concatenate([g.changes.spaces for g in segments])
                new = np.concatenate([g.changes.new for g in segments])
            # a held space occupied starts its car's confirmation; the hold ends (and is
            # journaled) at a tick once the space stayed occupied for the core's hold_seen_s
            self.core.update_many(spaces, new, self._core_time(now))
        if segments and self.core.has_holds:
            self._sense_closed_holds()
        if journaled or agent_state is not None or meta is not None:
            self._journal(journaled, now, agent_state, meta)
        signs: list[_Sign] = []
        if n:
            self.state_changes += n
            # signs first, each as soon as it is rendered: drivers are waiting on them
            for sign in self._iter_changed_signs(now):
                self._publish_sign(sign, now)
                signs.append(sign)
            if len(segments) == 1:
                zones = segments[0].changes.zones
            else:
                zones = np.unique(np.concatenate([g.changes.zones for g in segments]))
            self._publish_zones(zones.tolist(), now)
        if journaled or segments or signs:  # a report without changes still moves its seq
            self._note_checkpoint(segments, signs)
            if not self.defer_checkpoint:
                self.flush_checkpoint()
        if n and self._subscribers:
            ids = self.state.space_ids
            for g in segments:
                for sp, st in zip(g.changes.spaces.tolist(), g.changes.new.tolist(), strict=True):
                    self._emit("space", {"space": ids[sp], "state": STATE_NAMES[st]}, g.ts)

    def _sense_closed_holds(self) -> None:
        """Tell the core which held spaces that are closed are sensed occupied: the car
        the hold waits for came, closure or not, and its hold ends as in an open space once
        the space stays occupied for the confirmation time. The core follows the public
        state, which stays ``closed`` whatever the sensor says, so it never sees that car."""
        closed, sensed = self.state.closed, self.state.sensed
        now = self.core.now
        for s in [s for s in self.core.held_spaces() if closed[s]]:
            self.core.sense_held(s, sensed[s] == OCCUPIED, now)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._live:
            self._publish(topic, payload, qos, retain)

    # -- rejections and events ---------------------------------------------------------------
    def _reject(self, rejection: Rejection, topic: str, payload: bytes | None) -> None:
        with self.lock:
            self.rejections.reject(rejection, topic, payload)

    def _emit(self, kind: str, data: dict[str, Any], ts: float) -> None:
        if not self._subscribers:
            return
        event = LiveEvent(kind, data, ts)
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:  # a subscriber's bug must not stop the gateway
                log.exception("live event subscriber failed")
