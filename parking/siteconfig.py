"""The site file's schema: pydantic models of ``examples/site.yaml``.

These models mirror the YAML one to one (``extra="forbid"``) so that a
validation error's location is a path in the file. Cross-references (a zone
that does not exist, a detector bound twice) are checked in ``parking.site``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from parking.modbus_rtu import MAX_SLAVE_ADDRESS
from parking.payloads import Identifier as Ident

ID_RULE = "ids may use only ASCII letters, digits and _ . : - (1-64 characters)"
"""``Ident`` (``parking.payloads.Identifier``) in words, for errors and the docs: ids name
MQTT topics and API paths, where '/', '+', '#', blanks or Chinese would break them."""

Point = Annotated[list[float], Field(min_length=2, max_length=2, description="[x, y]")]
SpaceRef = Annotated[
    str,
    Field(
        min_length=1,
        description=(
            "a space id, or a range 'A-001..A-040' (same prefix, same digit width); every"
            " space id, those of a range too, follows ID_RULE (checked by parking.site)"
        ),
    ),
]
Arrow = Literal[
    "left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right", "none"
]
HOST_DEPENDENT_ZONES = frozenset({"localtime", "Factory", "posixrules"})
"""tzdata names that are not a place: the host's own setting, or a placeholder"""
WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
MAX_TTL_S = 86400.0
"""Longest source TTL: silence must end in unknown (an infinite TTL never would)."""
MIN_EXPIRES_S = 2.0
"""Shortest sign validity: the gateway republishes at half of it, on a 0.5 s timer."""


class _Model(BaseModel):
    # defer_build: pydantic builds a model's validator when it is first used, not at import.
    # A site file is validated as a whole (SiteFile); a restarting gateway whose compiled
    # site comes from its cache (gateway.site_stamp) validates nothing, and building the
    # schemas it does not use would be ~15 ms of its start before the first sign.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class LocalName(_Model):
    """Text in Chinese and English."""

    zh: str = Field(min_length=1, description="Chinese text, shown first on signs")
    en: str = Field(min_length=1, description="English text")


class SiteInfo(_Model):
    """Who the site is."""

    id: Ident = Field(description="site id, used in every MQTT topic")
    name: LocalName = Field(description="the community's name")
    timezone: str = Field("Asia/Shanghai", description="IANA zone that policy windows are in")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if value in HOST_DEPENDENT_ZONES or value.startswith(("posix/", "right/")):
            # tzdata's aliases of the host's own setting (or its leap-second variant): the
            # same file would run on another clock on another machine
            raise ValueError(
                f"{value!r} depends on the machine (or counts leap seconds): name the site's"
                " IANA time zone, e.g. Asia/Shanghai"
            )
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a key ("../x", "")
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai)") from None
        return value


class Level(_Model):
    """A level of the site."""

    id: Ident = Field(description="level id, e.g. G, B1")
    name: LocalName = Field(description="shown on the dashboard")
    kind: Literal["surface", "basement", "deck"] = Field(
        "surface", description="what sort of level"
    )


class Zone(_Model):
    """A group of spaces counted together on signs and zone topics."""

    id: Ident = Field(description="zone id, used in topics")
    name: LocalName = Field(description="shown on the dashboard")
    level: Ident = Field(description="the level the zone is on")


class VehicleClass(_Model):
    """Who parks (resident, visitor, EV, ...), announced by the gate with each arrival."""

    id: Ident = Field(description="class id, the `class` of an arrival")
    name: LocalName = Field(description="shown on the dashboard")
    kinds: list[Ident] = Field(min_length=1, description="space kinds this class may use")
    prefer: list[Ident] = Field(
        default_factory=list,
        description="of its kinds, those it is sent to first while one is free, however "
        "far (an accessible car to an accessible bay before a nearer resident one)",
    )
    avoid: list[Ident] = Field(
        default_factory=list,
        description="kinds of space it is sent to only when no other space it may use is "
        "free (a visitor to a charger bay that is also a visitor bay only when no plain "
        "visitor bay is); any of the site's kinds, not one it prefers, nor all of its kinds",
    )


class Policy(_Model):
    """Restricts one space kind for some classes to time windows (local time)."""

    id: Ident = Field(description="policy id")
    kind: Ident = Field(description="the space kind the windows apply to")
    classes: list[Ident] = Field(min_length=1, description="classes restricted by this policy")
    windows: list[str] = Field(
        min_length=1, description="'HH:MM-HH:MM' local time; a window may cross midnight"
    )
    description: str | None = Field(None, description="why the policy exists")

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            m = WINDOW_RE.match(w)
            if not m:
                if w.startswith("24:"):
                    raise ValueError(f"window {w!r} starts at 24:00: write it 00:{w[3:]}")
                raise ValueError(f"window {w!r} is not 'HH:MM-HH:MM'")
            if m.group(3) == "24" and m.group(4) != "00":
                # in_window never reaches minute 1440: 24:30 would silently mean 24:00
                raise ValueError(
                    f"window {w!r} ends after 24:00; a window past midnight ends the next"
                    f" day, e.g. '{m.group(1)}:{m.group(2)}-00:{m.group(4)}'"
                )
            if m.group(1, 2) == m.group(3, 4):
                raise ValueError(f"window {w!r} is empty")
        return value


class Layout(_Model):
    """A straight row of equal bays: bay i has its near corner at origin + i*step."""

    origin: Point = Field(description="metres, near-left corner of the first bay")
    step: Point = Field(description="metres between neighbouring bays")
    size: Point = Field([2.5, 5.0], description="bay width and depth, metres")
    angle: float = Field(0.0, description="row direction, degrees counter-clockwise from +x")


class SpaceGroup(_Model):
    """A row of spaces sharing zone, kinds and access lanes."""

    ids: SpaceRef | list[SpaceRef] = Field(
        description=(
            "space ids or ranges, in row order; each id (ranges expanded) of ASCII letters,"
            " digits and _ . : - only, 1-64 characters: spaces have no name, their zone's"
            " `name` carries the Chinese"
        )
    )
    zone: Ident = Field(description="the zone these spaces belong to")
    kinds: list[Ident] = Field(min_length=1, description="space kinds (from `kinds`)")
    layout: Layout = Field(description="where the bays are on the level's map")
    access: list[Ident] = Field(
        min_length=1, description="lane nodes a car reaches these bays from (nearest is used)"
    )
    closed: bool = Field(False, description="closed from the start (e.g. under repair)")


class LaneNode(_Model):
    """A junction, aisle point, ramp end or gate on the lane graph."""

    id: Ident = Field(description="node id")
    level: Ident = Field(description="the level it is on")
    at: Point = Field(description="metres on the level's map")


class LaneEdge(_Model):
    """A lane between two nodes."""

    from_: Ident = Field(alias="from", description="start node")
    to: Ident = Field(description="end node")
    length: float | None = Field(None, gt=0, description="metres; default: straight-line distance")
    oneway: bool = Field(False, description="cars may only drive from `from` to `to`")


class Lanes(_Model):
    """The lane graph: driving distances from gates to spaces come from it."""

    nodes: list[LaneNode] = Field(min_length=1, description="junctions and aisle points")
    edges: list[LaneEdge | Annotated[list[Ident], Field(min_length=2)]] = Field(
        description="{from, to, length?, oneway?} or a path [a, b, c, ...] of two-way edges"
    )


class Entrance(_Model):
    """A gate where cars come in and arrivals are announced."""

    id: Ident = Field(description="entrance id, used in arrival topics")
    name: LocalName = Field(description="shown on the dashboard")
    node: Ident = Field(description="lane node where cars enter")


class DetectorBinding(_Model):
    """One detector of a node controller watching one space."""

    detector: int = Field(ge=0, lt=64, description="detector index on the node, from 0")
    space: Ident = Field(description="the space it watches")


class NodeController(_Model):
    """One node controller on an RS-485 bus, with its detectors."""

    address: int = Field(ge=1, le=MAX_SLAVE_ADDRESS, description="Modbus slave address")
    detectors: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "the node's real detector count, as it says itself (`IR_DETECTOR_COUNT`); default:"
            " the number of spaces bound. Give it when the node has spare channels (e.g. 32"
            " detectors, 30 spaces): the serial agent compares it with what the node says as"
            " the port opens, and a node that disagrees is taken for another bus's (adapters"
            " swapped) and its spaces kept `unknown`"
        ),
    )
    spaces: SpaceRef | list[SpaceRef | None] = Field(
        default_factory=list,
        description="detector i watches the i-th space (a range: one detector per id, like"
        " `ids` of a row); null skips a detector",
    )
    map: list[DetectorBinding] = Field(
        default_factory=list, description="explicit detector -> space"
    )


class Bus(_Model):
    """An RS-485 bus (one serial port) of node controllers, polled by one serial agent."""

    id: Ident = Field(description="bus id; reports from this bus carry it as their source")
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = Field(
        9600, description="line speed"
    )
    parity: Literal["N", "E", "O"] = Field("E", description="8 data bits, this parity, 1 stop bit")
    ttl_s: float = Field(
        15.0,
        gt=0,
        le=MAX_TTL_S,
        description="a space not reported for this long (seconds) becomes unknown",
    )
    nodes: list[NodeController] = Field(min_length=1, description="node controllers on the bus")
    agent: Ident | None = Field(
        None,
        description=(
            "the one edge agent the gateway accepts this bus's reports from"
            " (default serial-<bus id>, the serial agent's default id)"
        ),
    )


class CameraRow(_Model):
    """Polygons for a row of bays, interpolated between the first and the last bay."""

    spaces: SpaceRef | list[SpaceRef] = Field(description="the row's spaces, in image order")
    first: list[Point] = Field(
        min_length=4, max_length=4, description="first bay's corners, pixels"
    )
    last: list[Point] = Field(min_length=4, max_length=4, description="last bay's corners, pixels")


class CameraSpace(_Model):
    """One space and its polygon in the camera's image."""

    space: Ident = Field(description="the space")
    polygon: list[Point] = Field(min_length=3, description="corners in pixels")


class Camera(_Model):
    """A camera watching spaces, classified by one camera agent."""

    id: Ident = Field(description="camera id; reports from it carry it as their source")
    ttl_s: float = Field(
        15.0,
        gt=0,
        le=MAX_TTL_S,
        description="a space not reported for this long (seconds) becomes unknown",
    )
    resolution: list[int] = Field(
        [1280, 720], min_length=2, max_length=2, description="width, height"
    )
    rows: list[CameraRow] = Field(default_factory=list, description="rows of bays, interpolated")
    spaces: list[CameraSpace] = Field(default_factory=list, description="single bays")
    agent: Ident | None = Field(
        None,
        description=(
            "the one edge agent the gateway accepts this camera's reports from"
            " (default camera-<camera id>, the camera agent's default id)"
        ),
    )


class DisplayLine(_Model):
    """One line of a sign: label, arrow, and the count of free spaces in its zones."""

    label: LocalName = Field(description="e.g. A区 / Zone A")
    arrow: Arrow = Field(description="direction shown")
    zones: list[Ident] = Field(min_length=1, description="zones whose free spaces it counts")
    vehicle_class: Ident | None = Field(None, description="count only spaces this class may use")


class Display(_Model):
    """A guidance sign at a gate or a lane junction."""

    id: Ident = Field(description="display id, used in topics")
    name: LocalName = Field(description="shown on the dashboard")
    level: Ident = Field(description="level it stands on")
    at: Point = Field(description="metres on the level's map")
    entrance: Ident | None = Field(None, description="the gate this sign stands at, if any")
    lines: list[DisplayLine] = Field(min_length=1, description="the sign's lines, top to bottom")


class DisplaySettings(_Model):
    """How every sign of the site behaves."""

    fallback_unknown_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "show '--' when more than this share of a line's spaces (those in its zones"
            " its vehicle class may use now) is unknown"
        ),
    )
    full_unknown_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "at a count of zero, show '--' rather than 'FULL' when more than this share of"
            " the line's spaces is unknown (they may be free: a zone partly blind is not"
            " known to be full); the gate's answer says the same"
        ),
    )
    expires_s: float = Field(
        60.0,
        ge=MIN_EXPIRES_S,
        le=86400,
        description=(
            f"content validity (seconds, at least {MIN_EXPIRES_S:g}); republished at half of"
            " it, so a sign goes blank when its gateway has been silent this long"
        ),
    )


class SiteFile(_Model):
    """The whole site file."""

    site: SiteInfo = Field(description="id, name and time zone")
    levels: list[Level] = Field(min_length=1, description="surface rows, basements, decks")
    zones: list[Zone] = Field(min_length=1, description="groups of spaces counted on signs")
    kinds: list[Ident] = Field(min_length=1, description="space kinds used on this site")
    vehicle_classes: list[VehicleClass] = Field(
        min_length=1, description="who parks: each class and the kinds it may use"
    )
    policies: list[Policy] = Field(
        default_factory=list, description="time windows restricting kinds for classes"
    )
    spaces: list[SpaceGroup] = Field(min_length=1, description="rows of spaces")
    lanes: Lanes = Field(description="the lane graph cars drive, for driving distance")
    entrances: list[Entrance] = Field(min_length=1, description="gates where cars come in")
    buses: list[Bus] = Field(default_factory=list, description="RS-485 buses of ground detectors")
    cameras: list[Camera] = Field(default_factory=list, description="cameras watching spaces")
    displays: list[Display] = Field(default_factory=list, description="guidance signs")
    display_settings: DisplaySettings = Field(
        default_factory=lambda: DisplaySettings(), description="sign fallback and expiry"
    )
