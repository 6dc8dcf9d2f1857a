"""Request and response models of the REST API (kept apart: what comes in, what goes out)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from gateway.readside import Expect
from parking.payloads import Assignment, DisplayContent, HealthReport, LocalText
from parking.siteconfig import LocalName

StateName = Literal["free", "occupied", "unknown", "closed"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _one_line(text: str) -> str:
    # journaled, shown to other managers and exported: no control characters, line breaks
    # or bidi overrides (a tab or CR in front smuggles a formula past the CSV export's
    # guard; an override shows the text reversed). Every other space stays: a Chinese
    # input method's full-width space, a no-break space pasted from a chat
    for ch in text:
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            raise ValueError(f"no tabs, line breaks or control characters (U+{ord(ch):04X} found)")
    return text


def _blank_is_none(value: object) -> object:
    # a reason of only spaces says nothing: stored, it showed as a reason given. Checked
    # before the strip: a tab or CR in front is refused, not stripped into a bare formula
    if not isinstance(value, str):
        return value
    return _one_line(value).strip() or None


NOTE_CHARS = 200
# the length on the text itself: on the optional type it was "at most 200 items"
Note = Annotated[str, StringConstraints(max_length=NOTE_CHARS), AfterValidator(_one_line)]
OptionalNote = Annotated[Note | None, BeforeValidator(_blank_is_none)]
"""A manager's reason or note: without the spaces around it, and none when blank."""


# --- requests -------------------------------------------------------------


class LoginRequest(_Request):
    name: str = Field(min_length=1, max_length=64, description="user name")
    password: str = Field(min_length=1, max_length=256)


class SpaceControlRequest(_Request):
    reason: OptionalNote = Field(None, description="why, for the journal")
    expect_closed_by: str | None = Field(
        None,
        max_length=64,
        description="a precondition: the manager whose closure the page shows (null: it "
        "shows the space or zone not closed). When the current closer differs, 409 with the "
        "current closure and nothing changes. Left out: no precondition",
    )

    def expectation(self) -> Expect | None:
        """The precondition, when the request gave one (null counts: "not closed")."""
        if "expect_closed_by" not in self.model_fields_set:
            return None
        return Expect(self.expect_closed_by)


class AcknowledgeRequest(_Request):
    note: OptionalNote = Field(
        None,
        description="what is being done about it, for the other managers (e.g. who was sent)",
    )


# --- responses ------------------------------------------------------------


class ErrorOut(BaseModel):
    detail: str = Field(description="what is wrong")


class ClosureOut(BaseModel):
    """A manager's close that keeps (or kept) a space or zone closed."""

    closed_by: str | None = Field(description="who (None: the site file closes it)")
    closed_reason: str | None
    closed_at: float | None = Field(description="when (UNIX s)")


class NotAsExpectedOut(ErrorOut):
    """409 of a close or open whose ``expect_closed_by`` does not hold: the current closure
    (``closed_by`` None and ``closed`` false: not closed). Nothing changed."""

    closed: bool
    closed_by: str | None
    closed_reason: str | None
    closed_at: float | None


class AlreadyAcknowledgedOut(ErrorOut):
    """409 of an acknowledgement: another manager acknowledged the episode first (kept)."""

    acknowledged_by: str
    acknowledged_at: float
    note: str | None


class UserOut(BaseModel):
    name: str
    role: Literal["viewer", "manager", "technician"]
    can_change: bool
    can_read_raw: bool
    can_read_plates: bool = Field(description="sees the plates of arrivals (personal data)")


class LoginOut(UserOut):
    token: str = Field(description="bearer token; the same session is also set as a cookie")
    expires: float


class SessionOut(BaseModel):
    user: UserOut | None
    site: str
    site_name: LocalName
    timezone: str = Field(description="the site's IANA time zone: the dashboard shows times in it")
    public_read: bool = Field(description="zone counts and signs readable without login")


class LevelOut(BaseModel):
    id: str
    name: LocalName
    kind: str
    bounds: tuple[float, float, float, float] = Field(description="min x, min y, max x, max y (m)")


class ZoneInfo(BaseModel):
    id: str
    name: LocalName
    level: str


class SpaceGeometry(BaseModel):
    id: str
    zone: str
    level: str
    kinds: list[str]
    polygon: list[tuple[float, float]] = Field(description="metres on its level, y northwards")


class LaneNodeOut(BaseModel):
    id: str
    level: str
    at: tuple[float, float]


class SignInfo(BaseModel):
    id: str
    name: LocalName
    level: str
    at: tuple[float, float]
    entrance: str | None


class EntranceOut(BaseModel):
    id: str
    name: LocalName
    node: str


class VehicleClassOut(BaseModel):
    id: str
    name: LocalName
    kinds: list[str]
    prefer: list[str]
    avoid: list[str]


class PolicyOut(BaseModel):
    """A kind of space open to some classes only in time windows (local, the site's
    ``timezone``; a window may cross midnight)."""

    id: str
    kind: str
    classes: list[str]
    windows: list[str]


class SiteOut(BaseModel):
    id: str
    name: LocalName
    timezone: str
    levels: list[LevelOut]
    zones: list[ZoneInfo]
    spaces: list[SpaceGeometry]
    lane_nodes: list[LaneNodeOut]
    lane_edges: list[tuple[str, str]]
    entrances: list[EntranceOut]
    displays: list[SignInfo]
    vehicle_classes: list[VehicleClassOut]
    policies: list[PolicyOut]


class ZoneOut(BaseModel):
    zone: str
    name: LocalName
    level: str
    free: int
    occupied: int
    unknown: int
    closed: int
    total: int
    held: int = Field(
        0,
        description="of the free spaces, those held for a car the gateway sent there: "
        "the signs do not offer them",
    )
    offered: int | None = Field(
        description="what a sign line over the zone would show: free - held, or null ('--') "
        "when more than the site's fallback_unknown_fraction of its spaces (closed ones "
        "aside) is unknown, or at zero when more than its full_unknown_fraction is"
    )
    ts: float | None


class SpaceOut(BaseModel):
    space: str
    zone: str
    level: str
    kinds: list[str]
    state: StateName
    since: float
    last_seen: float | None
    source: str | None
    held: bool


class DisplayOut(BaseModel):
    display: str
    name: LocalName
    level: str
    entrance: str | None
    content: DisplayContent | None = Field(description="what the sign was last told to show")
    expired: bool = Field(description="the content is past its expiry: the sign shows its fallback")


class NodeSummary(BaseModel):
    address: int
    status: str
    detectors_ok: int
    detectors_bad: int


class BootConflictOut(BaseModel):
    boot: str = Field(description="the boot the gateway takes")
    refused_boot: str = Field(description="the replaced boot whose live reports are refused")
    refused: int = Field(description="its reports refused in this episode")
    since: float
    last: float = Field(description="wall time of the newest refusal")


class AgentOut(BaseModel):
    agent: str
    online: bool
    last_seen: float | None
    source: str | None
    status: str | None = Field(
        description="ok | degraded | blind | offline, from its health; never_seen for an "
        "agent of the site file never heard from (no availability, report or health); "
        "boot_conflict while the gateway refuses its live reports for another boot under "
        "its id (its health is then not believed: see boot_conflict)"
    )
    boot_conflict: BootConflictOut | None = Field(
        None,
        description="its reports of a replaced boot keep being refused (stale_boot) while "
        "that boot still reports: two agents with one id, or a forged report with a new boot "
        "(a stolen broker login); null when none",
    )
    health_ts: float | None
    nodes: list[NodeSummary]
    fps: float | None
    heard: bool = Field(
        True,
        description="false: an agent of the site file never heard from (then online is false, "
        "last_seen null, status never_seen)",
    )


class DetectorOut(BaseModel):
    agent: str
    source: str
    node: int
    index: int
    space: str | None
    status: str
    battery: int | None


class DetectorRawOut(DetectorOut):
    raw: int | None
    node_status: str
    node_errors: dict[str, int]
    firmware: str | None
    uptime_s: int | None


class EventOut(BaseModel):
    id: int
    ts: float
    space: str
    zone: str | None
    old: str | None
    new: str
    source: str | None
    agent: str | None
    seq: int | None
    reason: str | None = Field(None, description="a manager's reason for a close or open")
    zone_closure: str | None = Field(
        None, description="closed or opened with this zone (a manager's close or open of a zone)"
    )


class EventPage(BaseModel):
    items: list[EventOut]
    next_before: int | None = Field(description="pass as `before` for the next (older) page")


class HistoryPoint(BaseModel):
    ts: float
    free: int
    occupied: int
    unknown: int
    closed: int
    total: int


class HistorySeries(BaseModel):
    zone: str
    name: LocalName
    points: list[HistoryPoint]


class HistoryOutage(BaseModel):
    """The gateway's own downtime: nothing was recorded, so every point in it is unknown."""

    start: float  # its clean stop, or its last sign of life in the journal (a crash)
    end: float  # its restart
    clean: bool  # stopped cleanly (an upgrade, a reboot), not a crash or a power cut
    ongoing: bool = False  # down now (a stand-alone API's view): ``end`` is the answer's end


class HistoryOut(BaseModel):
    start: float
    end: float
    step: float
    series: list[HistorySeries]
    outages: list[HistoryOutage] = []  # the gateway's downtimes over [start, end]


class ArrivalSummary(BaseModel):
    entrance: str
    name: LocalName
    last_hour: int
    unassigned_last_hour: int
    cancelled_last_hour: int = 0  # of those cars, the ones whose gate cancelled its arrival
    last: Assignment | None


class ControlOut(BaseModel):
    space: str
    action: Literal["close", "open"]
    by: str
    reason: str | None
    ts: float
    was: StateName | None = Field(
        None, description="the space's state before (as this API saw it): what was changed"
    )
    held: bool = Field(
        False,
        description="it was held for a car sent to it from a gate (closing it: that car may be"
        " on its way; there is no calling it back)",
    )
    closed_by: str | None = Field(
        None, description="when it was closed: who closed it (the closure an open ends)"
    )
    closed_reason: str | None = Field(None, description="when it was closed: their reason")
    closed_at: float | None = Field(None, description="when it was closed: when (UNIX s)")
    closed_with_zone: str | None = Field(
        None, description="when it was closed by closing its zone: that zone"
    )
    earlier_closes: list[ClosureOut] = Field(
        [],
        description="when it was closed: the earlier closes since it was last open, newest "
        "first, that the one above took over (their reasons may still matter)",
    )


class ClosedSpaceOut(BaseModel):
    """A space a zone action left closed, and whose closure that is."""

    space: str
    closed_by: str | None = Field(
        description="who closed it (None: the site file closes it, or the journal no longer says)"
    )
    closed_reason: str | None
    closed_at: float | None
    closed_with_zone: str | None = Field(
        None, description="closed by closing this zone (another closure than this action's)"
    )


class ZoneClosureOut(BaseModel):
    """A zone a manager closed, as long as its closure keeps any space closed."""

    zone: str
    closed_by: str
    closed_reason: str | None
    closed_at: float = Field(description="when it was closed (or given its newest reason)")
    spaces: int = Field(description="the spaces its closure keeps closed (opening it opens these)")


class ZoneControlOut(BaseModel):
    """What closing or opening a zone changed (as this API saw the zone before)."""

    zone: str
    action: Literal["close", "open"]
    by: str
    reason: str | None
    ts: float
    spaces: list[str] = Field(description="the spaces it closes or opens")
    reasoned_again: list[str] = Field(
        [],
        description="closing a closed zone with a new reason: the spaces its closure holds, "
        "journalled again with it",
    )
    held: list[str] = Field(
        [],
        description="spaces it closes that were held for cars sent to them from a gate (those "
        "cars may be on their way)",
    )
    left_closed: list[ClosedSpaceOut] = Field(
        [],
        description="the zone's closed spaces it leaves closed (closed on their own, or by "
        "the site file), with who closed them",
    )
    closure_was: ClosureOut | None = Field(
        None,
        description="the zone's closure before: the one an open ended, or a close's new "
        "reason replaced (None: it was not closed)",
    )


class AlertOut(BaseModel):
    id: str
    kind: str
    subject: str
    severity: Literal["critical", "warning", "info"]
    since: float
    message: LocalText
    details: dict[str, str | None]
    acknowledged_by: str | None
    acknowledged_at: float | None
    note: str | None
    episodes: int = Field(
        description="this episode and those before it in a row, each beginning within 24 h "
        "of the last one's clear (`api.alerts.ACK_CARRY_S`): an acknowledgement carries over "
        "to them, and a count above 1 says the alert keeps coming back"
    )
    cleared: float | None = Field(
        None, description="when the episode cleared (UNIX s); None while it is open"
    )


class HealthOut(BaseModel):
    """One agent's full retained health report (technician)."""

    agent: str
    online: bool
    health: HealthReport | None
