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
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from gateway.allocation import AllocationCore, CoreLayout, lane_distances
from gateway.arrivals import (
    ARRIVAL_LIVE_AFTER_S,
    HOLD_CANCELLED,
    HOLD_ENDED,
    ArrivalDesk,
    cancel_refused,
    readable_request_id,
    same_car,
)
from gateway.displays import RenderedLine, SignRenderer
from gateway.gate_clock import GateClocks
from gateway.ingest import (
    AcceptedReport,
    Rejection,
    RejectionLog,
    ReportGate,
    decode,
    how_long,
)
from gateway.journal import (
    ALIVE_JOURNAL_S,
    ALIVE_KEY,
    BACKUP_TAKEN_KEY,
    CLEAN_STOP_KEY,
    History,
    Journal,
)
from gateway.lag import BEHIND_S, ReportLag
from gateway.readside import (
    BOOT_CONFLICTS_KEY,
    BOOT_CONFLICTS_SAVE_S,
    AgentStatus,
    BootConflictLog,
    Closer,
    Counters,
    EntranceRefusals,
    Expect,
    LiveEvent,
    RefusalLog,
    Refused,
    SpaceBefore,
    SpaceStatus,
    ZoneBefore,
    expectation_fails,
    nothing_changes,
)
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
from gateway.state import FREE, NO_CHANGES, OCCUPIED, Changes, LiveState
from parking import closures, topics
from parking.closures import ZONE_CLOSURES_KEY, ZoneClosure
from parking.payloads import (
    CONTROL_MAX_AGE_S,
    FUTURE_TOLERANCE_S,
    MAX_PAYLOAD_BYTES,
    Arrival,
    ArrivalCancel,
    ArrivalRefusal,
    Assignment,
    DisplayContent,
    HealthReport,
    SpaceControl,
    ZoneCounts,
)
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
EXPAND_STEP_ROWS = 2  # pending change rows (reports) expanded per checkpoint step
ZONE_HISTORY_S = 10.0
# the InfluxDB points of an outage's unknown counts are this long after its start: not on
# the same nanosecond as the last run's own last point, which they would overwrite
OUTAGE_POINT_AFTER_S = 0.001
LATENCY_KEEP = 1000
GAP_LOG_INTERVAL_S = 60.0  # at most one warning about missed reports per agent per minute
CONTESTED_GAP_S = 600.0
"""A gap within this long of a session taken over (``session_contested_at``) is said to be
the other client's doing, not the broker's."""
MAX_REPORT_RATE = 1000.0
"""Reports a second an agent could have sent: a seq gap wider than this over the time since
its last report is a jump of the agent's numbering, not reports the broker dropped."""
SEQ_JUMP_SLACK_S = 60.0  # ... allowing this much time besides (clocks, a backlog)
REFUSED_SEQS_KEPT = 10_000  # per agent: a flood of refusals does not grow memory without end
AVAILABILITY_LOG_INTERVAL_S = 60.0
"""At most one line per agent this often about its going offline (its last will) or coming
back: a flapping agent's further changes are counted and said with its next line."""
AVAILABILITY_FLAPS = 3  # changes not logged within one interval that make it "flap"
QUIET_JOURNAL_S = 30.0
"""An agent's reports that change nothing (a quiet site's snapshots, every few seconds) move
its seq and last_seen in the journal at most this often; the newest waits in memory
meanwhile and a clean stop writes it. Each commit cost a WAL write, a WAL checkpoint and
three fsyncs: ~555 MB a day of writes on an edge box's SD card for a site where nothing
changed. A crash loses at most this much of a quiet agent's last_seen and seq: its spaces
then turn unknown up to this much sooner after the restart (never free), and a replay of
those reports changes nothing (docs/architecture.md, "A report that changes nothing")."""


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


@dataclass(frozen=True)
class _Sign:
    """A sign's new content, serialised once (the pydantic model only when asked for)."""

    display: int
    lines: tuple[RenderedLine, ...]
    ts: float
    payload: bytes


@dataclass(frozen=True)
class _Segment:
    """Changes with who made them, for the journal's events."""

    changes: Changes
    ts: float
    source: str | None  # None: the gateway's own verdict; the bound source is journaled
    agent: str | None
    seq: int | None = None
    boot: str | None = None
    # (zone, counts) right after this segment, for the history: a batch applies all its
    # reports before any is journaled (None: take them at journaling, a lone segment)
    zone_rows: tuple[tuple[int, dict[str, int]], ...] | None = None
    note: str | None = None  # a manager's reason, journaled with the change
    same_boot: bool = False  # the agent's boot the journal already has (a report's)
    closure: str | None = None  # the zone whose closure (or opening) made the change
    # spaces journaled again with the state they keep (a closure's new reason)
    again: tuple[int, ...] = ()


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


class LiveGateway:
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
    def _true_closures(self, stored: dict[str, ZoneClosure]) -> dict[str, ZoneClosure]:
        """The journal's zone closures, less the spaces the site file moved out of their
        zone (:meth:`_closures_in_site`) and those a manager acted on since without them
        (an earlier release run on this journal, a rollback: it journals the action but
        not the closure), rewritten when that took any out."""
        if not stored:
            return stored
        fitted = self._closures_in_site(stored)
        spaces = [s for c in fitted.values() for s in c.spaces]
        last = (
            self.journal.manager_events_since(min(c.ts for c in fitted.values()), spaces)
            if fitted
            else {}
        )
        true = closures.reconcile(fitted, last)
        if true != fitted:
            for zone, c in fitted.items():
                left = len(c.spaces) - len(true[zone].spaces) if zone in true else len(c.spaces)
                if left:
                    log.warning(
                        "zone %s's closure: %d of its %d spaces were opened or closed on their"
                        " own since it was made, without it (an earlier release ran on this"
                        " journal); they are no longer part of it%s",
                        zone,
                        left,
                        len(c.spaces),
                        "" if zone in true else ": the zone is no longer closed",
                    )
        if true != stored:
            with self.journal.transaction():
                self.journal.set_meta(ZONE_CLOSURES_KEY, closures.dump(true))
        return true

    def _closures_in_site(self, stored: dict[str, ZoneClosure]) -> dict[str, ZoneClosure]:
        """The closures as the site file has the zones now (parking.closures.in_site), each
        change logged (once: the caller journals the result)."""
        fitted = closures.in_site(stored, {sp.id: sp.zone for sp in self.site.spaces})
        for zone, c in stored.items():
            if zone not in self._zone_index:
                log.warning(
                    "zone %s's closure (by %s) is dropped: the site file no longer has zone"
                    " %s; the spaces it closed stay closed, each on its own, until a manager"
                    " opens them",
                    zone,
                    c.by,
                    zone,
                )
                continue
            gone = sorted(c.spaces - fitted[zone].spaces if zone in fitted else c.spaces)
            if gone:
                log.warning(
                    "zone %s's closure: %d of its %d spaces are in another zone of the site"
                    " file now, or no longer in it (%s); they stay closed, each on its own,"
                    " and opening zone %s leaves them%s",
                    zone,
                    len(gone),
                    len(c.spaces),
                    ", ".join(gone[:8]) + (f" and {len(gone) - 8} more" if len(gone) > 8 else ""),
                    zone,
                    "" if zone in fitted else ": the zone is no longer closed",
                )
        return fitted

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

    def journal_clean_stop(self) -> None:
        """At a clean stop: every agent's newest quiet report journaled, and the journal told
        so (CLEAN_STOP_KEY), so that the next start blames no gap in their seqs on a crash."""
        self.journal_quiet(force=True)
        with self.journal.transaction():
            self.journal.set_meta(CLEAN_STOP_KEY, repr(self._clock()))  # where downtime begins

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

    def note_session_contested(self) -> None:
        """The service saw another client take this gateway's session (its client id): the
        reports missed meanwhile are said to be that client's, not the broker's."""
        self.session_contested_at = self._mono()

    def current_lags(self) -> dict[str, float]:
        """Each agent's lag behind its reports now (gateway.lag.ReportLag.current)."""
        return self.lag.current(self._mono())

    def behind_s(self) -> float:
        """How far the gateway is behind its agents' reports now (0: keeping up)."""
        return self.lag.behind(self._mono())

    def _note_boot_conflict(self, agent: str, refused_boot: str, boot: str) -> None:
        """A live report of a replaced boot was refused (under the lock): counted towards the
        agent's boot conflict, journaled at once when one begins, else now and then."""
        now, mono = self._clock(), self._mono()
        changed = self.boot_conflicts.note(agent, refused_boot, boot, now)
        if changed or mono - self._boot_conflicts_saved >= BOOT_CONFLICTS_SAVE_S:
            self._boot_conflicts_saved = mono
            self.journal.set_meta(BOOT_CONFLICTS_KEY, self.boot_conflicts.to_save(now))
        if changed:
            log.error(
                "edge agent %s: reports of its boot %s keep being refused since boot %s"
                " replaced it, and that boot still reports: restart the real agent (its new"
                " boot is then taken); if nobody restarted it, its broker login may be"
                " stolen: change its password",
                agent,
                refused_boot,
                boot,
            )

    def _note_refused(self, agent: str, payload: bytes) -> None:
        """Remember the seq of a report refused whole (``from_the_future``, say): it
        arrived, and the gap it leaves is not the broker's loss. One over the size cap is
        not read (it was refused unread)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return
        try:
            d = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(d, dict):
            return
        boot, seq = d.get("boot"), d.get("seq")
        if type(boot) is not str or type(seq) is not int or d.get("agent") != agent:
            return
        known_boot, seqs = self._refused_seqs.get(agent, (boot, set()))
        if known_boot != boot or len(seqs) >= REFUSED_SEQS_KEPT:
            seqs = set()
        seqs.add(seq)
        self._refused_seqs[agent] = (boot, seqs)

    def _note_gap(
        self, acc: AcceptedReport, now: float, mono: float, refused: tuple[str, set[int]] | None
    ) -> None:
        """Count the reports an agent's seq numbers skipped (they never reached the
        gateway; ``refused``: those that did and were refused whole) and say so, at most
        once a minute per agent. A gap wider than the agent could have sent since it was
        last heard (``now``, event time) is a jump of its numbering: counted apart."""
        known = self.gate.sequence(acc.agent)
        if known is None or known[0] != acc.boot:
            return
        first, last = known[1] + 1, acc.seq - 1
        came = 0
        if refused is not None and refused[0] == acc.boot:
            came = sum(1 for seq in refused[1] if first <= seq <= last)
        if came:
            log.info(
                "agent %s boot %s: %d of reports %d..%d arrived and were refused (see the"
                " 'rejected' lines); the next snapshot reconciles the state",
                acc.agent,
                acc.boot,
                came,
                first,
                last,
            )
            if came == last - first + 1:
                return
        if self._restored_backup and acc.agent not in self._reported:
            # they came, into the journal this backup replaced: not the broker's loss
            log.info(
                "agent %s boot %s: reports %d..%d came after the backup this journal was"
                " restored from; the next snapshot reconciles the state",
                acc.agent,
                acc.boot,
                first,
                last,
            )
            return
        if self._after_crash and acc.agent not in self._reported:
            # a quiet agent's seq is journaled every QUIET_JOURNAL_S: the run before the
            # crash may have taken them; not blamed on the broker, nor counted
            log.info(
                "agent %s boot %s: reports %d..%d are not in the journal: taken by the run"
                " before it ended without a clean stop (a quiet agent's seq is journaled"
                " every %.0f s), or lost; the next snapshot reconciles the state",
                acc.agent,
                acc.boot,
                first,
                last,
                QUIET_JOURNAL_S,
            )
            return
        lost = last - first + 1 - came
        seen = self._agent_seen.get(acc.agent)
        if seen is not None and lost > (max(0.0, now - seen) + SEQ_JUMP_SLACK_S) * MAX_REPORT_RATE:
            # one report numbered 2**62 must not read as that many reports lost (a counter
            # no rate or alert survives): an agent's bug, or its seq restarted under one boot
            self.seq_jumps[acc.agent] = self.seq_jumps.get(acc.agent, 0) + 1
            if mono >= self._gap_logged.get(acc.agent, -math.inf) + GAP_LOG_INTERVAL_S:
                self._gap_logged[acc.agent] = mono
                log.warning(
                    "agent %s boot %s: its report numbers jumped from %d to %d, far more than"
                    " it could have sent since it was last heard %.0f s ago: not counted as"
                    " lost reports (an agent bug, or one restarted without a new boot?); the"
                    " next snapshot reconciles the state",
                    acc.agent,
                    acc.boot,
                    first - 1,
                    acc.seq,
                    max(0.0, now - seen),
                )
            return
        self.reports_missed[acc.agent] = self.reports_missed.get(acc.agent, 0) + lost
        if mono < self._gap_logged.get(acc.agent, -math.inf) + GAP_LOG_INTERVAL_S:
            return
        self._gap_logged[acc.agent] = mono
        contested = self.session_contested_at
        why = (
            "another client using this gateway's client id took them (said above)"
            if contested is not None and mono - contested <= CONTESTED_GAP_S
            else "the broker dropped them: a broker restart, or its queue limits "
            "max_queued_messages / max_queued_bytes, the gateway away or not keeping up"
        )
        log.warning(
            "agent %s boot %s: %d of reports %d..%d never arrived (%s); "
            "the next snapshot reconciles the state (%d missed from this agent so far)",
            acc.agent,
            acc.boot,
            lost,
            first,
            last,
            why,
            self.reports_missed[acc.agent],
        )

    def _flush(self, staged: _Staged) -> None:
        if not staged.reports:
            return
        self._commit_and_propagate(staged.segments, self._clock())
        self.accepted += len(staged.reports)
        done = time.perf_counter()
        self._latency.extend(done - t0 for t0 in staged.started)
        staged.clear()

    def _unknown_agent(self, topic: str, agent: str, payload: bytes) -> bool:
        """Availability and health only from the agents the site's sources name."""
        if self.gate.is_site_agent(agent):
            return False
        why = f"agent {agent!r} is no source's agent in the site file"
        self._reject(Rejection("unknown_agent", why), topic, payload)
        return True

    def _on_availability(self, topic: str, agent: str, payload: bytes) -> None:
        if self._unknown_agent(topic, agent, payload):
            return
        if len(payload) > MAX_PAYLOAD_BYTES:  # the cap of every payload, before reading it
            why = f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}"
            self._reject(Rejection("oversized", why), topic, payload)
            return
        # exactly the contract's words: an "offline" padded with anything is not the will
        text = payload.decode("utf-8", "replace")
        if text not in (topics.ONLINE, topics.OFFLINE):
            why = f"availability must be exactly {topics.ONLINE!r} or {topics.OFFLINE!r}"
            self._reject(Rejection("invalid", f"{why}, not {text[:40]!r}"), topic, payload)
            return
        online = text == topics.ONLINE
        now = self._clock()
        with self.lock:
            was = self._online.get(agent)
            self._online[agent] = online
            # heard from: not "never seen". An "online" is the agent now; an "offline" is its
            # last will, retained since it went: it does not make a long dead agent recent
            if online:
                self._agent_seen[agent] = max(self._agent_seen.get(agent, now), now)
            else:
                self._agent_seen.setdefault(agent, now)
            self.lag.forget(agent)  # gone, or back: its next report read alone sets it
            if was != online:
                self._log_availability(agent, online)
            now = self._event_time(now)
            changes = NO_CHANGES if online else self.state.agent_offline(agent, now)
            self._commit_and_propagate(
                [_Segment(changes, now, None, agent)], now, agent_state=(agent, online)
            )
        self._emit("agent", {"agent": agent, "online": online}, now)

    def _log_availability(self, agent: str, online: bool) -> None:
        """Say that an agent went offline (WARNING: its last will) or came back (INFO), at
        most once per agent per AVAILABILITY_LOG_INTERVAL_S; the changes in between go to
        DEBUG and are counted in its next line (or in ``tick``'s, once the interval is over).
        A return to online right after a logged offline is said at once: the log must not
        leave an agent offline that is back (a broker's restart)."""
        mono = self._mono()
        last, skipped, was_online = self._availability_logged.get(agent, (-math.inf, 0, None))
        if mono < last + AVAILABILITY_LOG_INTERVAL_S and not (
            online and was_online is False and not skipped
        ):
            self._availability_logged[agent] = (last, skipped + 1, was_online)
            log.debug("edge agent %s is %s", agent, "online" if online else "offline")
            return
        self._say_availability(agent, online, mono, last, skipped)

    def _say_availability(
        self, agent: str, online: bool, mono: float, last: float, skipped: int
    ) -> None:
        self._availability_logged[agent] = (mono, 0, online)
        more = ""
        if skipped:
            flaps = ": it flaps" if skipped >= AVAILABILITY_FLAPS else ""
            changes = "change" if skipped == 1 else "changes"
            more = f" ({skipped} more {changes} in the last {mono - last:.0f} s not logged{flaps})"
        if online:
            log.info("edge agent %s is online%s", agent, more)
        else:
            log.warning(
                "edge agent %s is offline (its last will: stopped, crashed, or cut off from "
                "the broker); its spaces are unknown until it is back%s",
                agent,
                more,
            )

    def _log_availability_later(self) -> None:
        """An agent whose last changes were not logged (it flapped): its state now, with the
        count, once its interval is over, so the log does not end on a state long gone."""
        mono = self._mono()
        for agent, (last, skipped, _) in list(self._availability_logged.items()):
            if skipped and mono >= last + AVAILABILITY_LOG_INTERVAL_S:
                self._say_availability(agent, self._online.get(agent, False), mono, last, skipped)

    def _on_health(self, topic: str, agent: str, payload: bytes) -> None:
        if self._unknown_agent(topic, agent, payload):
            return
        health = decode(HealthReport, payload)
        if isinstance(health, Rejection):
            self._reject(health, topic, payload)
            return
        now = self._clock()
        taken, left_out = self.gate.take_health(agent, health, now)
        for why in left_out:  # parts naming what is not its source's: false alerts
            self._reject(why, topic, payload)
        if taken is None:
            return
        health = taken
        with self.lock:
            problem = self.gate.health_problem(self._health.get(agent), health, now)
            if problem is not None:
                self._reject(problem, topic, payload)
                return
            self._health[agent] = health
        self._emit("agent", {"agent": agent, "health": health.model_dump(mode="json")}, health.ts)

    def _on_control(self, topic: str, ident: str, payload: bytes, zone: bool = False) -> None:
        """A manager's close or open of a space, or of a whole zone (``zone``)."""
        control = decode(SpaceControl, payload)
        if isinstance(control, Rejection):
            self._reject(control, topic, payload)
            return
        if zone and ident not in self._zone_index:
            why = f"no zone {ident!r} in site {self.site.id!r}"
            self._reject(Rejection("unknown_zone", why), topic, payload)
            return
        if not zone and ident not in self.site.space_index:
            why = f"no space {ident!r} in site {self.site.id!r}"
            self._reject(Rejection("unknown_space", why), topic, payload)
            return
        age = self._clock() - control.ts
        if age > CONTROL_MAX_AGE_S:
            # queued while the gateway or the broker was away: the manager was told nothing
            # happened, and may have decided otherwise since
            what = f"zone {ident}" if zone else ident
            why = f"{control.action} of {what} by {control.by} sent {age:.0f} s ago"
            self._reject(Rejection("stale_control", why), topic, payload)
            return
        apply = self.control_zone if zone else self.control_space
        try:
            apply(ident, control.action, control.by, control.reason)
        except ValueError as exc:
            self._reject(Rejection("nothing_to_do", str(exc)), topic, payload)

    def _on_arrival(
        self, topic: str, entrance: str, payload: bytes, t0: float | None = None
    ) -> None:
        arrival = decode(Arrival, payload)
        if isinstance(arrival, Rejection):
            self._refuse_arrival(arrival, topic, entrance, payload)
            return
        e = self._entrance.get(entrance)
        if e is None:
            why = Rejection("unknown_entrance", f"entrance {entrance!r}")
            self._refuse_arrival(why, topic, entrance, payload, arrival.request_id)
            return
        c = self._class.get(arrival.vehicle_class)
        if c is None:
            known = ", ".join(self._class)
            why = Rejection(
                "unknown_class",
                f"vehicle class {arrival.vehicle_class!r} is not one of the site's: {known}",
            )
            self._refuse_arrival(why, topic, entrance, payload, arrival.request_id)
            return
        with self.lock:
            now = self._clock()
            if arrival.request_id is not None:
                # sent again (a QoS 1 redelivery, the gate's retry): the same answer, no
                # second space held for the same car; another car under an id the gate
                # used before (its counter restarted) is answered anew
                body = self._answered_before(entrance, arrival, now)
                if body is not None and arrival.plate is not None and not self.journal_plates:
                    # journaled without it (--plate-keep-hours 0): the gate still gets its echo
                    again = Assignment.model_validate_json(body)
                    body = again.model_copy(update={"plate": arrival.plate}).model_dump_json(
                        by_alias=True
                    )
                if body is not None:
                    self.repeated_arrivals += 1
                    self.answered += 1
                    self._send_assignment(entrance, body)
                    return
            # judged (and its gate's clock learned from) once per car, not per retry
            age = self._arrival_age(entrance, arrival.ts, t0)
            self._follow_policy_minute()  # the signs published below include what it moved
            answer = self.desk.answer(
                entrance, e, c, arrival, age=age, now=now, core_now=self._core_time(now)
            )
            assignment = answer.assignment
            body = assignment.model_dump_json(by_alias=True)
            kept = assignment  # what the journal, and so the API and its stream, have
            if not self.journal_plates and assignment.plate is not None:
                kept = assignment.model_copy(update={"plate": None})
            kept_body = body if kept is assignment else kept.model_dump_json(by_alias=True)
            signs = self._changed_signs(now)  # the hold takes the space off the signs
            with self.journal.transaction():
                self._put_signs_now(signs)
                self.journal.add_assignment(
                    now,
                    entrance,
                    arrival.vehicle_class,
                    assignment.space,
                    assignment.zone,
                    assignment.hold_expires,
                    kept.plate,
                    arrival.request_id,
                    kept_body,
                )
            self._send_assignment(entrance, body)
            for sign in signs:
                self._publish_sign(sign, now)
            if answer.held:  # its zone has one more held
                self.desk.note_hold(entrance, answer.space)
                self._publish_zones([int(self.state.zone[answer.space])], now)
        self.answered += 1
        self._emit("assignment", json.loads(kept_body), now)

    def _answered_before(self, entrance: str, arrival: Arrival, now: float) -> str | None:
        """The answer given to this arrival's request_id within a hold, if it was for the
        same car (same class, and same plate where plates are kept); None otherwise."""
        assert arrival.request_id is not None
        body = self.journal.answered(entrance, arrival.request_id, now - self.hold_s)
        if body is None:
            return None
        given = Assignment.model_validate_json(body)
        if same_car(given, arrival, plates_kept=self.journal_plates):
            return body
        self.reused_request_ids += 1
        mono = self._mono()
        if mono >= self._reused_logged + GAP_LOG_INTERVAL_S:
            self._reused_logged = mono
            log.warning(
                "entrance %s sent request_id %r for another car than the one it was answered"
                " for %.0f s ago (%d so far): answered anew; a gate's request ids must not"
                " repeat within --hold-s, across its restarts too",
                entrance,
                arrival.request_id,
                now - given.ts,
                self.reused_request_ids,
            )
        return None

    def _refuse_arrival(
        self,
        rejection: Rejection,
        topic: str,
        entrance: str,
        payload: bytes,
        request_id: str | None = None,
    ) -> None:
        """Count and log a refused arrival, and tell its gate why (``entrances/{e}/refusal``):
        a gate waiting for an answer that never comes cannot tell a refusal from a
        gateway that is down."""
        self._reject(rejection, topic, payload)
        refusal = ArrivalRefusal(
            entrance=entrance[:256],
            request_id=request_id if request_id is not None else readable_request_id(payload),
            reason=rejection.reason,
            detail=rejection.detail[:300],
            ts=self._clock(),
        )
        with self.lock:
            key = (entrance if entrance in self._entrance else "?", rejection.reason)
            self.refused_arrivals[key] = self.refused_arrivals.get(key, 0) + 1
            self.refusals.note(key[0], rejection.reason, refusal.detail, refusal.ts)
            self._send(
                topics.arrival_refusal(self.site.id, entrance),
                refusal.model_dump_json().encode(),
                topics.QOS_REFUSAL,
                topics.RETAIN_REFUSAL,
            )

    def _on_cancel(self, topic: str, entrance: str, payload: bytes) -> None:
        """A gate takes back an arrival (the car left without coming in): the hold given to
        its request_id at that entrance ends now, journaled, and the gate is answered on
        the assignment topic (``cancelled``); a cancel that changes nothing (unknown id,
        no hold, ended, cancelled before: a QoS 1 redelivery) is answered with why on the
        refusal topic."""
        cancel = decode(ArrivalCancel, payload)
        if isinstance(cancel, Rejection):
            self._refuse_cancel(cancel, topic, entrance, payload)
            return
        if entrance not in self._entrance:
            why = Rejection("unknown_entrance", f"entrance {entrance!r}")
            self._refuse_cancel(why, topic, entrance, payload, cancel.request_id)
            return
        with self.lock:
            now = self._clock()
            given = self.journal.given(entrance, cancel.request_id)
            s = (
                -1
                if given is None or given.space is None
                else self.site.space_index.get(given.space, -1)
            )
            holding = s >= 0 and self.desk.holding(entrance, s, self._core_time(now))
            occupied = s >= 0 and self.state.state[s] == OCCUPIED
            why = cancel_refused(
                given, cancel.request_id, now=now, holding=holding, occupied=occupied
            )
            if why is not None:
                self._refuse_cancel(why, topic, entrance, payload, cancel.request_id)
                return
            assert given is not None
            was = Assignment.model_validate_json(given.payload)
            answer = was.model_copy(
                update={
                    "route": [],
                    "hint": HOLD_ENDED,
                    "hold_expires": None,
                    "cancelled": True,
                    "ts": now,
                }
            )
            body = answer.model_dump_json(by_alias=True)
            self.desk.release(entrance, s)
            signs = self._changed_signs(now)  # the space is back on the signs
            with self.journal.transaction():
                self._put_signs_now(signs)
                self.journal.cancel_hold(given.id, now)
                self.journal.add_assignment(
                    now,
                    entrance,
                    answer.vehicle_class,
                    answer.space,
                    answer.zone,
                    None,
                    answer.plate,
                    answer.request_id,
                    body,
                    cancelled=now,
                )
            self._send_assignment(entrance, body)
            for sign in signs:
                self._publish_sign(sign, now)
            self._publish_zones([int(self.state.zone[s])], now)  # one held fewer
            key = (entrance, HOLD_CANCELLED)
            self.arrival_cancels[key] = self.arrival_cancels.get(key, 0) + 1
        log.info(
            "entrance %s cancelled its arrival %s: space %s is no longer held",
            entrance,
            cancel.request_id,
            answer.space,
        )
        self._emit("assignment", json.loads(body), now)

    def _refuse_cancel(
        self,
        rejection: Rejection,
        topic: str,
        entrance: str,
        payload: bytes,
        request_id: str | None = None,
    ) -> None:
        """Count a cancel that changes nothing and tell its gate why
        (``entrances/{e}/refusal`` with ``cancel`` true). A malformed one, or one for an
        entrance the site lacks, is also rejected (logged and counted) like any message."""
        if rejection.reason in {"invalid", "bad_json", "oversized", "unknown_entrance"}:
            self._reject(rejection, topic, payload)
        else:
            log.debug("cancel on %s refused (%s): %s", topic, rejection.reason, rejection.detail)
        refusal = ArrivalRefusal(
            entrance=entrance[:256],
            request_id=request_id if request_id is not None else readable_request_id(payload),
            reason=rejection.reason,
            detail=rejection.detail[:300],
            cancel=True,
            ts=self._clock(),
        )
        with self.lock:
            key = (entrance if entrance in self._entrance else "?", rejection.reason)
            self.arrival_cancels[key] = self.arrival_cancels.get(key, 0) + 1
            self._send(
                topics.arrival_refusal(self.site.id, entrance),
                refusal.model_dump_json().encode(),
                topics.QOS_REFUSAL,
                topics.RETAIN_REFUSAL,
            )

    def _arrival_age(self, entrance: str, ts: float | None, t0: float | None) -> float:
        """How long before its receipt the gate saw the car, by the gate's own clock: the
        arrival's delay (receipt by the gateway's wall clock, less ``ts``) less the gate's
        clock offset. The offset is learned per entrance as the least delay of its recent
        live arrivals: those received after the gateway had been connected for
        ARRIVAL_LIVE_AFTER_S (the broker's backlog comes right after a connect), whose
        delay is mostly the offset. So a gate whose clock runs minutes behind still gets
        holds, while an arrival the broker kept while the gateway was away (no offset
        known yet: judged by the gateway's clock) or one the gate sent late (older than
        its usual offset) is still old. Without ``ts``: 0 (the car is at the gate now)."""
        if ts is None:
            return 0.0
        # how long it waited in the service's queue (t0: perf_counter at its receipt)
        lag = max(0.0, time.perf_counter() - t0) if t0 is not None else 0.0
        wall, mono = self._clock() - lag, self._mono() - lag
        since = self.broker_back_since()  # None: not connected, or never told of it
        # while behind, an arrival's delay is mostly the backlog: learned as the gate's
        # offset it would make a minute-old arrival look fresh and hold a space for it
        live = since is not None and wall - since > ARRIVAL_LIVE_AFTER_S
        age, warning = self.gate_clocks.age(
            entrance, wall - ts, mono, learn=live and self.behind_s() < BEHIND_S
        )
        if warning is not None:
            log.warning("%s", warning)
        return age

    def gate_clock_offset(self, entrance: str) -> float | None:
        """How far the entrance's clock runs behind the gateway's (negative: ahead), as
        learned from its recent live arrivals; None while nothing is learned."""
        with self.lock:
            return self.gate_clocks.offset(entrance, self._mono())

    @property
    def gate_clock_warnings(self) -> int:
        """Warnings that a gate's clock is over a minute off."""
        return self.gate_clocks.warnings

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

    def _note_quiet(self, segments: list[_Segment]) -> list[_Segment]:
        """Quiet reports: journal an agent's seq and last_seen when its last quiet one was
        journaled QUIET_JOURNAL_S ago (or never, or under another boot), else keep it in
        memory for :meth:`journal_quiet`. Returns the segments to journal as change rows."""
        mono = self._mono()
        due = []
        for g in segments:
            assert g.agent is not None and g.boot is not None and g.seq is not None
            noted = self._quiet_noted.get(g.agent)
            if noted is not None and noted[0] == g.boot and mono < noted[1] + QUIET_JOURNAL_S:
                self._quiet_held[g.agent] = (g.boot, g.seq, g.ts)
            else:
                due.append(g)
        if not due:
            return []
        left = self.journal.note_quiet_reports(due, [(g.agent, g.boot, g.seq, g.ts) for g in due])
        self._alive_wall = max(self._alive_wall, max(g.ts for g in due))  # their last_seen
        for g in due:
            assert g.agent is not None and g.boot is not None
            self._quiet_held.pop(g.agent, None)  # this one is newer
            if all(g is not x for x in left):
                self._quiet_noted[g.agent] = (g.boot, mono)
        return left

    def journal_quiet(self, force: bool = False) -> None:
        """Journal the held quiet reports whose agent's last one was journaled
        QUIET_JOURNAL_S ago (``force``: all of them, at a clean stop), in one transaction.
        One whose row has moved on meanwhile (a newer seq or boot journaled by a report
        that changed something) is dropped: the journal already has better."""
        if not self._quiet_held:
            return
        mono = self._mono()
        due = [
            (agent, held)
            for agent, held in self._quiet_held.items()
            if force or mono >= self._quiet_noted[agent][1] + QUIET_JOURNAL_S
        ]
        if not due:
            return
        self.journal.note_quiet_reports(due, [(agent, *held) for agent, held in due])
        self._alive_wall = max(self._alive_wall, max(ts for _, (_b, _s, ts) in due))
        for agent, (boot, _seq, _ts) in due:
            del self._quiet_held[agent]
            self._quiet_noted[agent] = (boot, mono)

    def _sense_closed_holds(self) -> None:
        """Tell the core which held spaces that are closed are sensed occupied: the car
        the hold waits for came, closure or not, and its hold ends as in an open space once
        the space stays occupied for the confirmation time. The core follows the public
        state, which stays ``closed`` whatever the sensor says, so it never sees that car."""
        closed, sensed = self.state.closed, self.state.sensed
        now = self.core.now
        for s in [s for s in self.core.held_spaces() if closed[s]]:
            self.core.sense_held(s, sensed[s] == OCCUPIED, now)

    def _journal(
        self,
        segments: list[_Segment],
        now: float,
        agent_state: tuple[str, bool] | None,
        meta: tuple[str, str] | None = None,
    ) -> None:
        """The commit that must precede publishing: one packed row of changes per report (its
        sequence with it, even without changes) or verdict, an agent's availability, and a
        meta key that must move with the changes (the zone closures)."""
        st = self.state
        ids, names = st.space_ids, STATE_NAMES
        self._alive_wall = now  # a sign of life (down_since): no ALIVE_KEY needed meanwhile
        rows = []
        for g in segments:
            ch = g.changes
            spaces = ch.spaces.tolist()
            if (g.note is not None or g.closure is not None or g.again) and (spaces or g.again):
                # a manager's, with the reason (and the zone closure) for the audit
                items = [
                    [ids[x], names[o], names[n], None, g.note, g.closure]
                    for x, o, n in zip(spaces, ch.old.tolist(), ch.new.tolist(), strict=True)
                ]
                for x in g.again:
                    here = names[int(st.state[x])]
                    items.append([ids[x], here, here, None, g.note, g.closure])
                changes = json.dumps(items, ensure_ascii=False)
            elif g.source is None and spaces:  # the gateway's verdict: each space's source
                cols = [
                    [ids[x] for x in spaces],
                    [names[x] for x in ch.old.tolist()],
                    [names[x] for x in ch.new.tolist()],
                    [st.sources[i] if i >= 0 else None for i in st.bound_source[spaces].tolist()],
                ]
                changes = json.dumps(list(zip(*cols, strict=True)))
            else:
                # a report's: the JSON joined from strings quoted once (a third of
                # json.dumps' time, and a quarter after a quiet spell)
                sj, nj = self._space_json, self._state_json
                changes = (
                    "["
                    + ",".join(
                        [
                            f"[{sj[x]},{nj[o]},{nj[n]}]"
                            for x, o, n in zip(
                                spaces, ch.old.tolist(), ch.new.tolist(), strict=True
                            )
                        ]
                    )
                    + "]"
                )
            rows.append((g.ts, g.source, g.agent, g.boot, g.seq, changes))
        self._unexpanded = self._unexpanded or bool(rows)
        if len(rows) == 1 and agent_state is None and meta is None:
            self.journal.add_changes(*rows[0])  # one statement: its own transaction
            return
        with self.journal.transaction():
            for row in rows:
                self.journal.add_changes(*row)
            if meta is not None:
                self.journal.set_meta(*meta)
            if agent_state is not None:
                self.journal.put_agent(agent_state[0], None, None, agent_state[1], now)

    def _note_checkpoint(self, segments: list[_Segment], signs: list[_Sign]) -> None:
        """Remember what the next checkpoint writes: rows that moved, signs, history points."""
        if self._dirty_since is None:
            self._dirty_since = self._mono()
        for g in segments:
            if len(g.changes.touched):
                self._dirty[g.changes.touched] = True
        for sign in signs:
            self._dirty_signs[sign.display] = sign
        if self.history is None:
            return
        st = self.state
        ids, names, zone_ids = st.space_ids, STATE_NAMES, st.zone_ids
        for g in segments:
            sp = g.changes.spaces.tolist()
            if sp:
                self._dirty_history.extend(
                    zip(
                        [zone_ids[z] for z in st.zone[sp].tolist()],
                        [ids[x] for x in sp],
                        [names[x] for x in g.changes.new.tolist()],
                        [g.ts] * len(sp),
                        strict=True,
                    )
                )
            rows = g.zone_rows
            if rows is None:
                rows = tuple((z, st.zone_row(z)) for z in g.changes.zones.tolist())
            for z, row in rows:
                if self._zone_recorded.get(z) != row:  # on change: changes may cancel out
                    self._zone_recorded[z] = row
                    self._zone_history_rows.append((zone_ids[z], row, g.ts))

    def checkpoint_due(self, max_age_s: float) -> bool:
        """Unwritten checkpoint items older than ``max_age_s`` (or any, with 0)."""
        since = self._dirty_since
        return since is not None and self._mono() - since >= max_age_s

    def flush_checkpoint(
        self, step: bool = False, rows: int = 0, interrupted: Callable[[], bool] | None = None
    ) -> None:
        """Idle work: settle the core's best-space minima and write the checkpoint (current
        state of the spaces that moved, the signs shown, the InfluxDB outbox points, and
        the last event they include). With ``step``, one piece per call, each well under a
        millisecond so that a report arriving meanwhile hardly waits: expand a few pending
        change rows (``rows``, default EXPAND_STEP_ROWS), one report at a time, and stop
        early when ``interrupted`` says a report is waiting; or settle the minima; or,
        once both are done, write the rest."""
        with self.lock:
            if self._dirty_since is None:
                self.core.settle()
                return
            if step:
                if self._unexpanded:
                    with self.journal.transaction():
                        for _ in range(rows or EXPAND_STEP_ROWS):
                            done = self.journal.expand_pending(1)
                            if done or (interrupted is not None and interrupted()):
                                break
                        self._unexpanded = not done
                    return
                if self.core.unsettled:
                    self.core.settle()
                    return
            self.core.settle()
            st = self.state
            t = np.flatnonzero(self._dirty)
            ids, names, agents = st.space_ids, STATE_NAMES, st.agents
            with self.journal.transaction() as conn:
                self.journal.expand_pending()
                self._unexpanded = False
                if len(t):
                    self.journal.put_spaces(
                        zip(
                            [ids[x] for x in t.tolist()],
                            [names[x] for x in st.state[t].tolist()],
                            [names[x] for x in st.sensed[t].tolist()],
                            st.closed[t].astype(np.int64).tolist(),
                            st.since[t].tolist(),
                            st.obs_since[t].tolist(),
                            st.last_seen[t].tolist(),
                            [agents[a] if a >= 0 else None for a in st.agent[t].tolist()],
                            strict=True,
                        )
                    )
                if self._dirty_signs:
                    self.journal.put_signs(self._sign_rows(list(self._dirty_signs.values())))
                if self.history is not None:
                    if self._dirty_history:
                        self.history.space_states(conn, self._dirty_history)
                    if self._zone_history_rows:
                        self.history.zone_occupancies(conn, self._zone_history_rows)
                self.journal.mark_checkpoint(self.journal.last_event_id())
            self._dirty[t] = False
            self._dirty_signs.clear()
            self._dirty_history = []
            self._zone_history_rows = []
            self._dirty_since = None

    def changes_pending(self) -> bool:
        """Changes committed and not yet in a state checkpoint (read without the lock by
        the WAL checkpoint thread: a stale answer only moves its checkpoint by a second)."""
        return self._dirty_since is not None or self._unexpanded

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._live:
            self._publish(topic, payload, qos, retain)

    def _held_by_zone(self) -> dict[int, int]:
        """Free spaces held for arriving cars, per zone: for the views (the dashboard, in
        this process), not the wire (readers of zones/{zone} refuse keys they do not know)."""
        views = self.state.views
        zone, state = views.zone, views.state
        held: dict[int, int] = {}
        for s in self.core.held_spaces():
            if state[s] == FREE:
                z = zone[s]
                held[z] = held.get(z, 0) + 1
        return held

    def _publish_zones(self, zones: list[int] | range, now: float) -> None:
        zones = list(zones)
        if not zones:
            return
        # the views' events carry how many free spaces are held, so they also go when only
        # that moved (a hold began or ended); the retained topic goes when the counts do
        held = self._held_by_zone() if self._subscribers else {}
        for z, (u, f, o, c) in zip(zones, self.state.zone_counts[zones].tolist(), strict=True):
            key = (u, f, o, c)
            wire = self._zone_published.get(z) != key
            h = held.get(z, 0)
            told = self._subscribers and self._zone_told.get(z) != (key, h)
            if not (wire or told):
                continue
            if wire:
                self._zone_published[z] = key
                self._zone_ts[z] = now
            payload = (
                f'{{"zone":{self._zone_json[z]},"free":{f},"occupied":{o},"unknown":{u},'
                f'"closed":{c},"total":{u + f + o + c},"ts":{self._zone_ts[z]!r}}}'
            )
            if wire:
                self._send(
                    self._zone_topics[z], payload.encode(), topics.QOS_ZONE, topics.RETAIN_ZONE
                )
            if self._subscribers:
                self._zone_told[z] = (key, h)
                self._emit("zone", {**json.loads(payload), "held": h}, now)

    def _render(self, d: int) -> tuple[RenderedLine, ...]:
        core = self.core
        return self.renderer.lines(
            d, core.line_free, core.line_unknown, core.line_total, core.line_capacity
        )

    def _line_counts(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """Per sign line: free, unknown, total (not closed) and capacity (closed or not)."""
        core = self.core
        return (
            core.line_free.tolist(),
            core.line_unknown.tolist(),
            core.line_total.tolist(),
            core.line_capacity,
        )

    def _snapshot_lines(self) -> None:
        self._line_seen = list(zip(*self._line_counts(), strict=True))

    def _changed_signs(self, now: float) -> list[_Sign]:
        """Signs whose rendered lines differ from what they show."""
        return list(self._iter_changed_signs(now))

    def _iter_changed_signs(self, now: float) -> Iterator[_Sign]:
        """The same, one sign at a time (only lines that moved are looked at): the caller
        may publish each before the next is rendered."""
        lf_l, lu_l, lt_l, cap_l = self._line_counts()  # once for every display
        # compared as lists: a dozen numpy calls cost more than this on a cold CPU, and a
        # site has hundreds of lines, not millions
        now_seen = list(zip(lf_l, lu_l, lt_l, cap_l, strict=True))
        seen, self._line_seen = self._line_seen, now_seen
        if now_seen == seen:
            return
        owner = self._line_owner
        moved = {owner[i] for i, (a, b) in enumerate(zip(now_seen, seen, strict=True)) if a != b}
        for d in sorted(moved):
            lines = self.renderer.lines(d, lf_l, lu_l, lt_l, cap_l)
            if lines != self._shown.get(d):  # cached lines: compared by identity
                yield self._sign(d, lines, now)

    def _refresh_displays(self, now: float) -> None:
        """Holds or policy windows moved: journal and publish the signs that changed."""
        signs = self._changed_signs(now)
        if not signs:
            return
        with self.journal.transaction():
            self._put_signs_now(signs)
        for sign in signs:
            self._publish_sign(sign, now)

    def _put_signs_now(self, signs: list[_Sign]) -> None:
        """Store signs inside the caller's transaction (before they are published); an older
        content of the same sign still waiting for the checkpoint must not overwrite them."""
        self.journal.put_signs(self._sign_rows(signs))
        for sign in signs:
            self._dirty_signs.pop(sign.display, None)

    def _sign(self, d: int, lines: tuple[RenderedLine, ...], now: float) -> _Sign:
        return _Sign(d, lines, now, self.renderer.payload(d, lines, now))

    def _sign_rows(self, signs: list[_Sign]) -> list[tuple[str, str, str, float]]:
        expires_s = self.site.display_settings.expires_s
        return [
            (
                self.site.displays[s.display].id,
                self._display_topics[s.display],
                s.payload.decode(),
                expires_s,
            )
            for s in signs
        ]

    def _publish_display(self, d: int, lines: tuple[RenderedLine, ...], now: float) -> None:
        """Publish a sign afresh (new ts and expiry)."""
        self._publish_sign(self._sign(d, lines, now), now)

    def _send_assignment(self, entrance: str, body: str) -> None:
        """Answer a gate on ``entrances/{entrance}/assignment``."""
        self._send(
            topics.assignment(self.site.id, entrance),
            body.encode(),
            topics.QOS_ASSIGNMENT,
            topics.RETAIN_ASSIGNMENT,
        )

    def _publish_sign(self, sign: _Sign, now: float) -> None:
        self._shown[sign.display] = sign.lines
        self._shown_ts[sign.display] = sign.ts
        self._shown_mono[sign.display] = self._mono()
        self._send(
            self._display_topics[sign.display],
            sign.payload,
            topics.QOS_DISPLAY,
            topics.RETAIN_DISPLAY,
        )
        self.sign_updates += 1
        if self._subscribers:
            content = self.renderer.content(sign.display, sign.lines, sign.ts)
            self._emit("display", content.model_dump(mode="json"), now)

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

    # -- LiveView ----------------------------------------------------------------------------
    def zone_counts(self) -> list[ZoneCounts]:
        now = self._clock()
        with self.lock:
            held = self._held_by_zone()
            return [
                # the time of the counts as published (the stand-alone API's, from the topic)
                ZoneCounts(
                    zone=z,
                    ts=self._zone_ts.get(i, now),
                    held=held.get(i, 0),
                    **self.state.zone_row(i),
                )
                for i, z in enumerate(self.state.zone_ids)
            ]

    def _on_their_way(self) -> np.ndarray:
        """bool[S], under the lock: spaces held for a car that may still be on its way. By
        the core's own time (the wall clock may have stepped), and not while the car is
        being seen in it (occupied, the hold ending ``hold_seen_s`` later): the stand-alone
        API's view says the same (api.mqttview)."""
        out = self.core.held_until > self.core.now
        seen = self.core.seen_since
        if seen:
            out[list(seen)] = False
        return out

    def spaces(self) -> list[SpaceStatus]:
        # only the arrays are copied under the lock: building one object per space (20,000 on
        # a big site) while holding it would keep reports waiting
        with self.lock:
            st = self.state
            held = self._on_their_way().tolist()
            states = st.state.tolist()
            since = st.since.tolist()
            last_seen = st.last_seen.tolist()
            obs_since = st.obs_since.tolist()
            bound = st.bound_source.tolist()
            sources = st.sources
        return [
            SpaceStatus(
                space=sp.id,
                zone=sp.zone,
                state=STATE_NAMES[states[s]],
                since=since[s],
                last_seen=last_seen[s] if last_seen[s] > 0 else None,
                source=sources[bound[s]] if bound[s] >= 0 else None,
                held=held[s],
                observed_since=obs_since[s] if obs_since[s] > 0 else None,
            )
            for s, sp in enumerate(self.site.spaces)
        ]

    def displays(self) -> dict[str, DisplayContent]:
        with self.lock:
            return {
                self.site.displays[d].id: self.renderer.content(d, lines, self._shown_ts[d])
                for d, lines in self._shown.items()
                if d in self._shown_ts
            }

    @property
    def broker_up(self) -> bool:
        return self._broker_up

    @broker_up.setter
    def broker_up(self, up: bool) -> None:
        # regained, or reached for the first time (a box rebooted: broker and agents too)
        if up and (not self._broker_up or self._broker_up_at is None):
            self._broker_up_at = self._clock()
        self._broker_up = up

    def broker_connected(self) -> bool:
        """The service's word on its MQTT connection (True in-process without one)."""
        return self._broker_up

    def broker_back_since(self) -> float | None:
        """Wall time the broker connection was last (re)gained (None: never, in-process)."""
        return self._broker_up_at if self._broker_up else None

    def agents(self) -> list[AgentStatus]:
        """Every agent of the site file: one never heard from (not in the journal either) is
        offline, with no ``last_seen`` and no health (``agent_never_seen``)."""
        with self.lock:
            names = set(self._online) | set(self._health) | set(self.state.agents)
            # an agent the site file no longer names (renamed, removed) is none of the
            # site's: the journal still knows it, but it is not offline for good
            names = {a for a in names if self.gate.is_site_agent(a)}
            names |= {b.agent for b in self.site.buses} | {c.agent for c in self.site.cameras}
            conflicts = self.boot_conflicts.recent(self._clock())
            return [
                AgentStatus(
                    agent=a,
                    online=self._online.get(a, False),
                    last_seen=self._agent_seen.get(a),
                    health=self._health.get(a),
                    boot_conflict=conflicts.get(a),
                )
                for a in sorted(names)
            ]

    def assignments(self, limit: int = 100) -> list[Assignment]:
        with self.lock:
            bodies = self.journal.recent_assignments(limit)
        return [Assignment.model_validate_json(b) for b in bodies]

    def outputs(self) -> tuple[int, int, int]:
        """Counts of what handling messages produced (state changes, signs published,
        assignments answered): equal before and after a batch that moved nothing."""
        return self.state_changes, self.sign_updates, self.answered

    def counters(self) -> Counters:
        with self.lock:
            c = Counters(
                accepted=self.accepted,
                rejected=dict(self.rejections.counts),
                state_changes=self.state_changes,
                sign_updates=self.sign_updates,
                repeated_arrivals=self.repeated_arrivals,
                reused_request_ids=self.reused_request_ids,
                refused_arrivals=dict(self.refused_arrivals),
                arrival_cancels=dict(self.arrival_cancels),
                unheld_arrivals=dict(self.desk.unheld),
                reports_missed=dict(self.reports_missed),
                seq_jumps=dict(self.seq_jumps),
                report_lag_s=self.current_lags(),
                latency_s=list(self._latency),
            )
        if self.outbox_stats is not None:
            stats = self.outbox_stats()
            c.outbox_depth = int(stats.get("depth", 0) or 0)
            c.outbox_dropped_cap = int(stats.get("dropped_cap", 0) or 0)
            c.outbox_dropped_rejected = int(stats.get("dropped_rejected", 0) or 0)
            c.outbox_written = int(stats.get("written", 0) or 0)
            c.outbox_auth_failed = int(stats.get("auth_failed", 0) or 0)
            c.outbox_error = stats.get("error") or None
        return c

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> Callable[[], None]:
        with self.lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self.lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    judges_controls = True  # under the lock, with the action

    def control_unavailable(self) -> str | None:
        return None  # applied here, in the gateway itself

    def settle(
        self, spaces: Collection[str], zones: Collection[str] = (), within: float = 1.0
    ) -> bool:
        return True  # controls are applied here before they are answered

    def recent_refusals(self) -> dict[str, EntranceRefusals]:
        return self.refusals.recent(self._clock())

    def _closes(self, space: str) -> tuple[Closer, ...]:
        """The managers' closes of a closed ``space`` since it was last open, newest first
        (under the lock: every manager's action is journaled before it is released)."""
        return tuple(
            Closer(by, reason, ts, zone)
            for ts, by, reason, zone in self.journal.closes_since_open(space)
        )

    def control_space(
        self, space: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> SpaceBefore:
        """Close or open a space, judged under the lock: Refused when it would change nothing
        (an open with a reason would journal a made-up free -> free event) or the manager's
        ``expect`` fails; else the space as it was found."""
        s = self.site.space_index.get(space)
        if s is None:
            raise ValueError(f"no space {space!r} in site {self.site.id!r}")
        if action not in ("close", "open"):
            raise ValueError(f"action must be 'close' or 'open', not {action!r}")
        now = self._clock()
        with self.lock:
            held = bool(self._on_their_way()[s])
            now = self._event_time(now)
            was = STATE_NAMES[int(self.state.state[s])]
            closes = self._closes(space) if was == "closed" else ()
            closer = closes[0] if closes else None
            why = expectation_fails(expect, closer, was == "closed")
            if why is not None:
                raise Refused(f"{space}: {why}: nothing changed", closer, True, was == "closed")
            why = nothing_changes(space, action, was, reason, bool(self.site.spaces[s].closed))
            if why is not None:
                raise Refused(why, closer)
            changes = self.state.control(s, action == "close", now)
            again: tuple[int, ...] = ()
            if not len(changes) and (reason or self.site.spaces[s].closed):
                # closing a closed space again (or opening an open one) changes nothing, but
                # its reason belongs in the audit, and so does a closure the site file makes
                # too (it stays the manager's when the file stops making it): an event with
                # the state it leaves alone
                again = (s,)
            # a manager acting on one space of a closed zone takes it out of the zone's
            # closure: opening the zone leaves it as this manager left it
            meta, after = None, self._zone_closures
            if closures.holding(after, space) is not None and (len(changes) or again):
                after = closures.without_space(after, space)
                meta = (ZONE_CLOSURES_KEY, closures.dump(after))
            segment = _Segment(changes, now, "manager", by, note=reason or None, again=again)
            self._commit_and_propagate([segment], now, meta=meta)
            self._zone_closures = after  # committed with the change
            # a manager's action is rare and looked for at once in the history: no waiting
            # for the idle-time checkpoint
            self.flush_checkpoint()
        if reason:
            done = "closed" if action == "close" else "opened"
            log.info("space %s %s by %s: %s", space, done, by, reason)
        self._emit(
            "space",
            {
                "space": space,
                "state": STATE_NAMES[int(self.state.state[s])],
                "action": action,
                "by": by,
                "reason": reason,
            },
            now,
        )
        return SpaceBefore(was, held, closes)

    def zone_closures(self) -> dict[str, ZoneClosure]:
        """The zones managers closed, each with the spaces its closure keeps closed."""
        with self.lock:
            return dict(self._zone_closures)

    def control_zone(
        self, zone: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> ZoneBefore:
        """Close every space of ``zone`` that is not closed, or open those its closure
        closed (parking.closures): one journal transaction, the signs republished once
        after it. Refused when it would change nothing or the manager's ``expect`` fails;
        else the zone as it was found."""
        if zone not in self._zone_index:
            raise ValueError(f"no zone {zone!r} in site {self.site.id!r}")
        now = self._clock()
        index = self.site.space_index
        with self.lock:
            now = self._event_time(now)
            mine = self._zone_spaces[zone]
            closed = [sp for sp in mine if self.state.closed[index[sp]]]
            closure = self._zone_closures.get(zone)
            closer = None if closure is None else Closer(closure.by, closure.reason, closure.ts)
            why = expectation_fails(expect, closer, closure is not None)
            if why is not None:
                raise Refused(
                    f"zone {zone}: {why}: nothing changed", closer, True, closure is not None
                )
            p = closures.plan(action, mine, closed, closure, reason)
            if p.nothing:
                raise Refused(closures.nothing_to_do(zone, action, closure), closer)
            on_their_way = self._on_their_way()
            held = tuple(sp for sp in p.change if action == "close" and on_their_way[index[sp]])
            idx = np.array([index[sp] for sp in p.change], dtype=np.int64)
            changes = self.state.control_many(idx, action == "close", now)
            after = closures.after_zone(
                self._zone_closures, zone, action, by, reason or None, now, p
            )
            segment = _Segment(
                changes,
                now,
                "manager",
                by,
                note=reason or None,
                closure=zone,
                again=tuple(index[sp] for sp in p.again),
            )
            meta = (ZONE_CLOSURES_KEY, closures.dump(after))
            self._commit_and_propagate([segment], now, meta=meta)
            self._zone_closures = after  # committed with the changes
            self.flush_checkpoint()
        # the pages showing who closed the zone and why read it again (a new reason for a
        # closed zone moves no count, so no zone event would tell them)
        self._emit("closure", {"zone": zone}, now)
        log.info(
            "zone %s %s by %s (%d spaces%s)%s",
            zone,
            {"close": "closed", "open": "opened"}[action],
            by,
            len(p.change),
            f", {len(p.left)} closed on their own left closed" if p.left else "",
            f": {reason}" if reason else "",
        )
        return ZoneBefore(p, closer, held)
