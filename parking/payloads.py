"""JSON payload schemas of the MQTT contract, version 1.

Every payload is JSON (debuggable with ``mosquitto_sub``) and decoded into one
of these models. What agents, gates and managers send the gateway rejects unknown
keys, so a typo is an error, not silence; what the gateway publishes (zone counts,
sign contents, assignments) its readers take with unknown keys ignored, so a later
gateway can add a key within v1 without blanking them. Timestamps are UNIX seconds
(float, UTC).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from parking.modbus_rtu import MAX_SLAVE_ADDRESS
from parking.states import STATE_NAMES

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
"""Larger MQTT payloads are rejected before parsing (a 3,000-space snapshot is ~150 kB)."""
FUTURE_TOLERANCE_S = 300.0
"""A report or observation time later than the gateway's clock by more than this is refused:
an edge with a wrong clock would otherwise lock its spaces (every true observation after it
would look older). Edge agents and sign controllers judge times by the same bound."""
CONTROL_MAX_AGE_S = 300.0
"""A manager's close or open stamped longer ago than this by the gateway's clock is refused
(``stale_control``): a request queued while the gateway or the broker was away is not what the
manager wants now, and the page that sent it was told nothing happened."""

ObservedState = Literal["free", "occupied", "unknown"]
"""What an edge may report of a space. ``closed`` is the manager's state, not an
observation: a report saying it would close a space no manager closed (and the manager's
``open`` could not undo it)."""
OBSERVED_STATES: tuple[str, ...] = get_args(ObservedState)
assert set(OBSERVED_STATES) == set(STATE_NAMES) - {"closed"}

IDENTIFIER_PATTERN = r"^[A-Za-z0-9_.:-]+$"
MAX_TIMESTAMP = 4102444800  # 2100-01-01: a later one is a unit error (ms for s)
MAX_OBSERVATIONS = 10000  # per occupancy report
MAX_SEQ = 2**63 - 1  # a report's seq is journaled as a 64-bit integer
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN)]
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)


def is_identifier(value: str) -> bool:
    """What ``Identifier`` accepts, without a model (ids that name MQTT topics)."""
    return 1 <= len(value) <= 64 and _IDENTIFIER_RE.fullmatch(value) is not None


Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, description="UNIX seconds, UTC")]


def _integer_version(value: object) -> object:
    # pydantic matches a Literal by equality, strict or not: true and 1.0 would pass as 1
    if type(value) is not int:
        raise ValueError(f"the contract version is the integer {SCHEMA_VERSION}")
    return value


Version = Annotated[Literal[1], BeforeValidator(_integer_version)]
"""``v`` of an edge payload: the JSON integer 1 (not ``true``, not ``1.0``)."""


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Published(BaseModel):
    """What the gateway publishes: a reader ignores keys a later gateway adds."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class SpaceObservation(_Payload):
    """One space in an occupancy report."""

    space: Identifier
    state: ObservedState
    since: Timestamp = Field(description="when the source saw this state begin")
    confidence: float = Field(1.0, ge=0.0, le=1.0)


class OccupancyReport(_Payload):
    """A batch of space observations from one source of one edge agent.

    ``kind="snapshot"`` lists every space of the source; ``"delta"`` only changes.
    (agent, boot, seq) identifies a report: the gateway drops duplicates and
    replays, and a new ``boot`` (agent restart) resets the sequence.
    """

    v: Version = 1
    agent: Identifier
    source: Identifier = Field(description="bus id or camera id")
    boot: Identifier = Field(description="random id chosen at agent start")
    seq: int = Field(ge=0, le=MAX_SEQ)
    ts: Timestamp
    kind: Literal["delta", "snapshot"]
    spaces: list[SpaceObservation] = Field(max_length=MAX_OBSERVATIONS)


class DetectorHealth(_Payload):
    index: int = Field(ge=0)
    space: Identifier | None = None
    status: Literal["ok", "stuck", "flapping", "dead", "fault", "unknown"]
    raw: int | None = None
    battery: int | None = Field(None, ge=0, le=100)


class NodeHealth(_Payload):
    address: int = Field(ge=1, le=MAX_SLAVE_ADDRESS)
    status: Literal["ok", "slow", "dead", "error", "unknown"]
    model: int | None = None
    firmware: str | None = None
    uptime_s: int | None = None
    errors: dict[str, int] = Field(default_factory=dict)
    detectors: list[DetectorHealth] = Field(default_factory=list)


class CameraSpaceHealth(_Payload):
    space: Identifier
    confidence: float = Field(ge=0.0, le=1.0)


class HealthReport(_Payload):
    """Retained health of one agent: per node and detector (bus) or per space (camera)."""

    v: Version = 1
    agent: Identifier
    source: Identifier
    ts: Timestamp
    boot: Identifier | None = None
    """the publishing run's boot id (its occupancy reports'); None from agents before it"""
    seq: int | None = Field(None, ge=0, le=MAX_SEQ)
    """counts the run's health reports: within one boot their order, whatever the clock
    did (a step back moves ``ts`` back)"""
    status: Literal["ok", "degraded", "blind", "offline"] = "ok"
    counters: dict[str, int] = Field(default_factory=dict)
    nodes: list[NodeHealth] = Field(default_factory=list)
    fps: float | None = Field(None, ge=0, allow_inf_nan=False)
    spaces: list[CameraSpaceHealth] = Field(default_factory=list)
    fault: Identifier | None = None
    """a blind camera's reason: black, frozen, blurred, geometry, moved, other_view,
    replayed or stream_lost (edge.camera.quality.FrameFault); None otherwise"""


def largest_snapshot_bytes(agent: str, source: str, spaces: list[str]) -> int:
    """The JSON size a snapshot of ``spaces`` (identifiers) can reach (longest state, longest
    numbers), encoded as the agents encode it: a source whose snapshot would be over
    MAX_PAYLOAD_BYTES could never be reported whole (the gateway refuses it). Counted from
    one observation's size, not by encoding them all: a site file of 20,000 spaces is
    checked at every gateway start, before its signs are published."""
    t = 1764979200.1234567  # as many digits as a float's repr takes
    report = OccupancyReport(
        agent=agent,
        source=source,
        boot="f" * 12,  # the agents' boot ids: 12 hex digits
        seq=MAX_SEQ,
        ts=t,
        kind="snapshot",
        spaces=[],
    )
    one = SpaceObservation(space="x", state="occupied", since=t, confidence=0.12345678901234568)
    per_space = len(one.model_dump_json()) - 1  # identifiers need no escaping: + their length
    commas = max(0, len(spaces) - 1)
    return len(report.model_dump_json()) + len(spaces) * per_space + commas + sum(map(len, spaces))


def fit_health(report: HealthReport) -> HealthReport:
    """``report``, or, when its JSON is over MAX_PAYLOAD_BYTES (a bus of thousands of
    detectors), the same listing only the detectors that are not ``ok`` (their number
    in ``counters["detectors_ok_omitted"]``): what needs attention still gets through."""
    if len(report.model_dump_json()) <= MAX_PAYLOAD_BYTES:
        return report
    nodes, omitted = [], 0
    for n in report.nodes:
        kept = [d for d in n.detectors if d.status != "ok"]
        omitted += len(n.detectors) - len(kept)
        nodes.append(n.model_copy(update={"detectors": kept}))
    counters = {**report.counters, "detectors_ok_omitted": omitted}
    return report.model_copy(update={"nodes": nodes, "counters": counters})


def went_offline(report: HealthReport) -> HealthReport:
    """An agent's last health, as it stops (retained): ``offline``, and nothing in it that
    a later reader could take for live (no frame rate, no confidence, nodes and detectors
    ``unknown``, the stream down); the counters otherwise as they ended."""
    counters = dict(report.counters)
    if "stream_up" in counters:
        counters["stream_up"] = 0
    return report.model_copy(
        update={
            "status": "offline",
            "counters": counters,
            # a camera's is 0 (no stream), even if too few frames came to measure it
            "fps": 0.0 if report.fps is not None or "stream_up" in counters else None,
            "fault": None,  # offline says it: not a camera that is blind while running
            "spaces": [s.model_copy(update={"confidence": 0.0}) for s in report.spaces],
            "nodes": [
                n.model_copy(
                    update={
                        "status": "unknown",
                        "detectors": [
                            d.model_copy(update={"status": "unknown"}) for d in n.detectors
                        ],
                    }
                )
                for n in report.nodes
            ],
        }
    )


class ZoneCounts(_Published):
    zone: Identifier
    free: int = Field(ge=0)
    occupied: int = Field(ge=0)
    unknown: int = Field(ge=0)
    closed: int = Field(ge=0)
    total: int = Field(ge=0)
    # of the free ones, held for a car the gateway sent there (not offered on the signs): the
    # views fill it in; never on the wire (a reader of a release before readers ignored
    # unknown keys refuses it)
    held: int = Field(0, ge=0)
    ts: Timestamp


class LocalText(_Published):
    zh: str
    en: str

    def both(self, sep: str = " ") -> str:
        """Chinese and English as a sign shows them, once where they are the same ("12")."""
        return both_languages(self.zh, self.en, sep)


def both_languages(zh: str, en: str, sep: str = " ") -> str:
    """``zh`` then ``en``, or just one of them where they are the same."""
    return zh if zh == en else f"{zh}{sep}{en}"


Arrow = Literal[
    "left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right", "none"
]
ARROW_GLYPHS: dict[str, str] = {
    "left": "←",
    "right": "→",
    "up": "↑",
    "down": "↓",
    "up-left": "↖",
    "up-right": "↗",
    "down-left": "↙",
    "down-right": "↘",
    "none": " ",
}
"""How each arrow looks on a text sign."""


class DisplayLine(_Published):
    label: LocalText
    arrow: Arrow
    count: int | None = Field(description="eligible free spaces; None when the fallback shows")
    status: Literal["ok", "full", "fallback"]
    text: LocalText = Field(
        description="what the line shows after the label, e.g. '12', '满 FULL', '--'"
    )


class DisplayContent(_Published):
    display: Identifier
    lines: list[DisplayLine]
    ts: Timestamp
    expires: Timestamp = Field(description="a sign shows its fallback after this time")


VehicleClassName = Identifier


def _printable_plate(plate: str) -> str:
    # a plate is journaled and given to managers by the API: no control or bidi
    # characters (isprintable() refuses both), no blank one
    if not plate.strip() or not plate.isprintable():
        raise ValueError("a plate is printable characters, not blank")
    return plate


Plate = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(_printable_plate)]


def _plate_as_read(plate: object) -> object:
    # a gate that read no plate sends "" (or spaces): the car still needs a space; a
    # serial plate reader's line ends ("\r\n") or a tab around it are not the plate's
    if not isinstance(plate, str):
        return plate
    plate = plate.strip()
    return plate or None


class Arrival(_Payload):
    """On the wire the class is ``class`` only (``Arrival(**{"class": ...})`` in Python)."""

    vehicle_class: VehicleClassName = Field(alias="class")
    plate: Annotated[Plate | None, BeforeValidator(_plate_as_read)] = None
    ts: Timestamp | None = None
    request_id: Identifier | None = None

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArrivalCancel(_Payload):
    """A gate takes back an arrival it announced (the car reversed out, the plate reader
    misread a passing car): the hold given to ``request_id`` at this entrance ends now."""

    request_id: Identifier = Field(description="the arrival's, as answered at this entrance")
    ts: Timestamp | None = Field(None, description="when the gate saw the car go (its clock)")


def _false(value: object) -> bool:
    return value is False


class Assignment(_Published):
    entrance: Identifier
    vehicle_class: VehicleClassName = Field(alias="class")
    space: Identifier | None = Field(description="None when nothing eligible is free")
    zone: Identifier | None
    route: list[str] = Field(
        default_factory=list, description="lane nodes from the entrance to the space"
    )
    hint: LocalText | None = None
    hold_expires: Timestamp | None
    plate: str | None = None
    request_id: Identifier | None = None
    cancelled: bool = Field(
        False,
        exclude_if=_false,  # on the wire only when true: other answers keep their keys
        description="the answer to a cancel: the hold on ``space`` ended now",
    )
    ts: Timestamp

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class ArrivalRefusal(_Published):
    """The gateway's answer to an arrival it cannot take (not JSON, a wrong field, an
    unknown class or entrance): the gate learns why instead of waiting for an assignment
    that never comes."""

    entrance: str = Field(max_length=256, description="as in the arrival's topic")
    request_id: Identifier | None = Field(
        None, description="the arrival's, when it could be read (None otherwise)"
    )
    reason: Identifier = Field(description="as the gateway counts it, e.g. schema")
    detail: str = Field(max_length=300, description="what was wrong, in English")
    cancel: bool = Field(
        False,
        exclude_if=_false,  # on the wire only when true, as Assignment.cancelled
        description="refuses a cancel (entrances/{e}/cancel), not an arrival",
    )
    ts: Timestamp

    model_config = ConfigDict(extra="ignore", frozen=True)


class SpaceControl(_Payload):
    """A manager closes a space (repairs, reserved) or opens it again."""

    action: Literal["close", "open"]
    by: str = Field(min_length=1, max_length=64, description="user name, for the journal")
    reason: str | None = Field(None, max_length=200)
    ts: Timestamp
