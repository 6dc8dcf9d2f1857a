"""The gateway's read side: what the API (and the dashboard) may see and ask.

Two implementations: the gateway's own in-process live state
(``gateway.service``), and the API's stand-alone one built from the retained
MQTT topics and the journal (``api.mqttview``). The API imports only this
module of the gateway.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from parking.payloads import Assignment, DisplayContent, HealthReport, ZoneCounts
from parking.site import Site

REFUSALS_WINDOW_S = 600.0
"""Arrivals an entrance had refused within this long make the managers' alert; none for this
long ends it."""
REFUSALS_KEPT = 1000  # per entrance: a flood of bad arrivals does not grow memory


@dataclass(frozen=True)
class EntranceRefusals:
    """An entrance's refused arrivals within ``REFUSALS_WINDOW_S``: how many, and the newest."""

    count: int
    reason: str
    detail: str
    last: float  # wall time of the newest


class RefusalLog:
    """Arrivals refused per entrance, recently: a gate controller whose every arrival is refused
    (a field misspelt, a time in milliseconds) leaves its cars unguided, and only its gate
    hears why. Thread-safe: noted by the MQTT thread, read by the API's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, deque[tuple[float, str, str]]] = {}

    def note(self, entrance: str, reason: str, detail: str, now: float) -> None:
        with self._lock:
            kept = self._seen.setdefault(entrance, deque(maxlen=REFUSALS_KEPT))
            kept.append((now, reason, detail))

    def recent(self, now: float) -> dict[str, EntranceRefusals]:
        out = {}
        with self._lock:
            for entrance, kept in list(self._seen.items()):
                while kept and kept[0][0] < now - REFUSALS_WINDOW_S:
                    kept.popleft()
                if not kept:
                    del self._seen[entrance]
                    continue
                last, reason, detail = kept[-1]
                out[entrance] = EntranceRefusals(len(kept), reason, detail, last)
        return out


BOOT_CONFLICT_REFUSALS = 3
BOOT_CONFLICT_WINDOW_S = 60.0
"""This many reports of a replaced boot refused within this long, each stamped as live, make
an agent's boot conflict: a replay or a spool's late backlog is neither live nor repeated."""
BOOT_CONFLICT_CLEAR_S = 300.0
"""No such refusal for this long ends the conflict."""
BOOT_CONFLICTS_KEY = "boot_conflicts"
"""The journal ``meta`` key the gateway keeps its agents' boot conflicts under (JSON), for a
stand-alone API to read."""
BOOT_CONFLICTS_SAVE_S = 10.0
"""The gateway saves an ongoing conflict's newest refusal at most this often."""


@dataclass(frozen=True)
class BootConflict:
    """An agent whose reports of a replaced boot keep being refused (``stale_boot``) while
    that boot still reports live: two runs under one id, or a forged report with a new boot
    (a stolen broker login) that shut the real agent out."""

    boot: str  # the boot the gateway takes
    refused_boot: str  # the replaced boot that still reports
    refused: int  # its reports refused in this episode
    since: float  # wall time the conflict was confirmed
    last: float  # wall time of the newest refusal

    def to_json(self) -> dict[str, Any]:
        return {
            "boot": self.boot,
            "refused_boot": self.refused_boot,
            "refused": self.refused,
            "since": self.since,
            "last": self.last,
        }


def parse_boot_conflicts(text: str | None, now: float) -> dict[str, BootConflict]:
    """The conflicts a journal's ``BOOT_CONFLICTS_KEY`` holds that are not over by ``now``
    (the gateway's clock): a refusal within BOOT_CONFLICT_CLEAR_S, allowing for the
    gateway's save interval. Nothing is made up from a value that does not parse."""
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        return {}
    out: dict[str, BootConflict] = {}
    if not isinstance(raw, dict):
        return out
    for agent, c in raw.items():
        try:
            conflict = BootConflict(
                str(c["boot"]),
                str(c["refused_boot"]),
                int(c["refused"]),
                float(c["since"]),
                float(c["last"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(conflict.last) and (
            now - conflict.last < BOOT_CONFLICT_CLEAR_S + BOOT_CONFLICTS_SAVE_S
        ):
            out[str(agent)] = conflict
    return out


class BootConflictLog:
    """Live reports of replaced boots refused per agent: a conflict once
    BOOT_CONFLICT_REFUSALS came within BOOT_CONFLICT_WINDOW_S, over once none came for
    BOOT_CONFLICT_CLEAR_S. Thread-safe: noted by the MQTT thread, read by the API's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {}
        self._conflicts: dict[str, BootConflict] = {}

    def note(self, agent: str, refused_boot: str, boot: str, now: float) -> bool:
        """Note one refusal; True when it began or changed a conflict (worth saving now)."""
        with self._lock:
            self._expire(now)
            times = self._times.setdefault(agent, deque(maxlen=BOOT_CONFLICT_REFUSALS))
            times.append(now)
            known = self._conflicts.get(agent)
            if known is not None:
                changed = (known.boot, known.refused_boot) != (boot, refused_boot)
                since = now if changed else known.since
                self._conflicts[agent] = BootConflict(
                    boot, refused_boot, known.refused + 1, since, now
                )
                return changed
            if len(times) == times.maxlen and now - times[0] <= BOOT_CONFLICT_WINDOW_S:
                self._conflicts[agent] = BootConflict(boot, refused_boot, len(times), now, now)
                return True
            return False

    def _expire(self, now: float) -> None:
        for agent, c in list(self._conflicts.items()):
            if now - c.last >= BOOT_CONFLICT_CLEAR_S:
                del self._conflicts[agent]
                self._times.pop(agent, None)

    def recent(self, now: float) -> dict[str, BootConflict]:
        with self._lock:
            self._expire(now)
            return dict(self._conflicts)

    def to_save(self, now: float) -> str:
        """The ongoing conflicts as the journal keeps them (``parse_boot_conflicts``)."""
        return json.dumps({a: c.to_json() for a, c in sorted(self.recent(now).items())})


@dataclass(frozen=True)
class SpaceStatus:
    space: str
    zone: str
    state: str  # parking.states names: free | occupied | unknown | closed
    since: float  # wall time the state began
    last_seen: float | None  # wall time the source last reported it
    source: str | None  # bus or camera id
    held: bool = False  # held for an arriving car
    # when the sensor says its reported state began (None: never observed); unlike
    # ``since`` it does not start again after a short outage of the source
    observed_since: float | None = None


@dataclass(frozen=True)
class Closer:
    """A manager's close that keeps a space (or a zone) closed: who, why, when, and the
    zone whose closing made it (a space's)."""

    by: str | None  # None: the site file closes it (or the journal no longer says)
    reason: str | None
    at: float | None
    zone: str | None = None


@dataclass(frozen=True)
class Expect:
    """A manager's precondition on an action: the closer their page shows (``closed_by``
    None: they believe it is not closed). The action changes nothing when it differs."""

    closed_by: str | None


@dataclass(frozen=True)
class SpaceBefore:
    """A space as a manager's action found it, judged under the gateway's lock: its state,
    whether it was held for a car, and the closes since it was last open, newest first (the
    first keeps it closed)."""

    state: str
    held: bool
    closes: tuple[Closer, ...] = ()


@dataclass(frozen=True)
class ZoneBefore:
    """A zone as a manager's action found it, judged under the gateway's lock: what the
    action changed (parking.closures.ZonePlan), the zone's closure before it, and the
    spaces it closed that were held for cars."""

    plan: Any
    closure: Closer | None
    held: tuple[str, ...] = ()


class Refused(ValueError):
    """A manager's action that changes nothing (409): it would be a no-op, or the closer is
    not the one the manager expected (``closer``: the current closure, if any)."""

    def __init__(
        self,
        message: str,
        closer: Closer | None = None,
        expected: bool = False,
        closed: bool = False,
    ):
        super().__init__(message)
        self.closer = closer
        self.expected = expected  # refused by the manager's precondition (Expect)
        self.closed = closed  # the space (zone) is closed, by ``closer`` if known


def nothing_changes(
    space: str, action: str, state: str | None, reason: str | None, site_closed: bool
) -> str | None:
    """Why an action on ``space`` (now ``state``) would change nothing (None: it changes
    something): opening a space that is not closed, or closing a closed one without a new
    reason (a new one replaces its reason; a space the site file closes becomes the
    manager's). Answered 202, the page would say it was done."""
    if action == "open" and state != "closed":
        return f"{space} is not closed (it is {state}): nothing changed"
    if action == "close" and state == "closed" and not reason and not site_closed:
        return f"{space} is already closed: nothing changed (give a reason to replace its reason)"
    return None


def expectation_fails(expect: Expect | None, closer: Closer | None, closed: bool) -> str | None:
    """Why ``expect`` does not hold of a space or zone that is ``closed`` by ``closer``
    (None: it holds, or there is none)."""
    if expect is None:
        return None
    if expect.closed_by is None:
        if not closed:
            return None
        by = closer.by if closer is not None and closer.by else "the site file"
        return f"it is closed by {by}"
    if not closed:
        return "it is not closed"
    by = closer.by if closer is not None else None
    if by == expect.closed_by:
        return None
    return f"it is closed by {by or 'the site file'}, not {expect.closed_by}"


class ControlUnavailable(Exception):
    """A manager's close or open cannot reach the gateway now (it is offline, or the broker
    is unreachable): nothing was sent and nothing changed; the message says why."""


@dataclass(frozen=True)
class AgentStatus:
    agent: str
    online: bool
    last_seen: float | None
    health: HealthReport | None
    # its reports of a replaced boot keep being refused while that boot reports live
    boot_conflict: BootConflict | None = None


@dataclass(frozen=True)
class LiveEvent:
    """Pushed to subscribers: kind is 'space', 'zone', 'display', 'agent', 'assignment',
    'alert' or 'gateway' (the gateway went online or offline, seen by the stand-alone API)."""

    kind: str
    data: dict[str, Any]
    ts: float


@dataclass
class Counters:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    state_changes: int = 0
    sign_updates: int = 0
    repeated_arrivals: int = 0  # arrivals sent again (same request_id): answered as before
    reused_request_ids: int = 0  # a request_id answered for another car: answered anew
    # (entrance, or "?" for one the site lacks; reason) -> arrivals refused (told the gate)
    refused_arrivals: dict[tuple[str, str], int] = field(default_factory=dict)
    # (entrance, or "?"; "released" or why it changed nothing) -> cancels of arrivals
    arrival_cancels: dict[tuple[str, str], int] = field(default_factory=dict)
    # arrivals answered without holding a space, by why ("late", "entrance_cap")
    unheld_arrivals: dict[str, int] = field(default_factory=dict)
    # agent -> reports its seq numbers skipped (they never reached the gateway)
    reports_missed: dict[str, int] = field(default_factory=dict)
    # agent -> seq gaps too wide to be reports lost (its numbering jumped)
    seq_jumps: dict[str, int] = field(default_factory=dict)
    # agent -> how far behind its reports the gateway is (0: keeping up)
    report_lag_s: dict[str, float] = field(default_factory=dict)
    outbox_depth: int = 0
    outbox_dropped_cap: int = 0  # oldest points dropped at the disk cap (journal's life)
    outbox_dropped_rejected: int = 0  # points InfluxDB refused as bad data (4xx), since start
    outbox_written: int = 0
    outbox_auth_failed: int = 0  # writes InfluxDB refused for the token (401/403)
    outbox_error: str | None = None  # the writer's last error, if any
    latency_s: list[float] = field(default_factory=list)  # recent report-to-publish latencies
    # False in a stand-alone API: the gateway's own counts (accepted, written, latency, ...)
    # are in the gateway's /metrics, and are left out rather than shown as 0
    gateway_counts: bool = True


class LiveView(Protocol):
    site: Site

    def zone_counts(self) -> list[ZoneCounts]: ...

    def spaces(self) -> list[SpaceStatus]: ...

    def displays(self) -> dict[str, DisplayContent]: ...

    def agents(self) -> list[AgentStatus]: ...

    def assignments(self, limit: int = 100) -> list[Assignment]: ...

    def counters(self) -> Counters: ...

    def broker_connected(self) -> bool:
        """Whether the view hears the MQTT broker now (the gateway's connection, or the
        stand-alone API's own)."""
        ...

    def broker_back_since(self) -> float | None:
        """Wall time the broker connection was last regained; None when it is down (or,
        in-process, was never lost)."""
        ...

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) for every live event; returns an unsubscribe function."""
        ...

    def control_unavailable(self) -> str | None:
        """Why a manager's action cannot reach the gateway now (None: it can)."""
        ...

    def recent_refusals(self) -> dict[str, EntranceRefusals]:
        """Arrivals refused per entrance within ``REFUSALS_WINDOW_S`` ("?": an entrance the
        site file does not name)."""
        ...

    judges_controls: bool
    """True: :meth:`control_space` and :meth:`control_zone` judge the action where it is
    applied, with it (the gateway itself); False: they only send it."""

    def control_space(
        self, space: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> SpaceBefore | None:
        """Close or open a space (manager action); the gateway journals it like any change.
        In the gateway itself: judged under its lock (:class:`Refused` when it changes
        nothing or ``expect`` fails) and answered with the space as it found it; sent
        (stand-alone API): None, judged by the caller beforehand. Raises
        :class:`ControlUnavailable` when it cannot reach the gateway."""
        ...

    def settle(
        self,
        spaces: Collection[str],
        zones: Collection[str] = (),
        within: float = 1.0,
        by: str | None = None,
    ) -> bool:
        """Before judging a manager's action on ``spaces`` (or ``zones``): make the view show
        what the gateway has journaled for them, including an action this view sent within
        ``within`` s before (only ``by``'s, when given: its confirmation); False when such
        an action never showed."""
        ...

    def control_zone(
        self, zone: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> ZoneBefore | None:
        """Close or open a whole zone (parking.closures); answers and raises like
        :meth:`control_space`."""
        ...
