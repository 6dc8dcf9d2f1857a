"""The site file's schema: pydantic models of ``examples/site.yaml``.

These models mirror the YAML one to one (``extra="forbid"``) so that a
validation error's location is a path in the file. Cross-references (a zone
that does not exist, a detector bound twice) are checked in ``parking.site``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Point = Annotated[list[float], Field(min_length=2, max_length=2, description="[x, y]")]
SpaceRef = Annotated[
    str,
    Field(
        min_length=1,
        description="a space id, or a range 'A-001..A-040' (same prefix, same digit width)",
    ),
]
Arrow = Literal[
    "left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right", "none"
]
WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalName(_Model):
    zh: str = Field(min_length=1, description="Chinese text, shown first on signs")
    en: str = Field(min_length=1, description="English text")


class SiteInfo(_Model):
    id: Ident = Field(description="site id, used in every MQTT topic")
    name: LocalName
    timezone: str = Field("Asia/Shanghai", description="IANA zone that policy windows are in")


class Level(_Model):
    id: Ident
    name: LocalName
    kind: Literal["surface", "basement", "deck"] = "surface"


class Zone(_Model):
    id: Ident
    name: LocalName
    level: Ident


class VehicleClass(_Model):
    id: Ident
    name: LocalName
    kinds: list[Ident] = Field(min_length=1, description="space kinds this class may use")


class Policy(_Model):
    """Restricts one space kind for some classes to time windows (local time)."""

    id: Ident
    kind: Ident = Field(description="the space kind the windows apply to")
    classes: list[Ident] = Field(min_length=1, description="classes restricted by this policy")
    windows: list[str] = Field(
        min_length=1, description="'HH:MM-HH:MM' local time; a window may cross midnight"
    )
    description: str | None = None

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            m = WINDOW_RE.match(w)
            if not m:
                raise ValueError(f"window {w!r} is not 'HH:MM-HH:MM'")
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
    ids: SpaceRef | list[SpaceRef] = Field(description="space ids or ranges, in row order")
    zone: Ident
    kinds: list[Ident] = Field(min_length=1)
    layout: Layout
    access: list[Ident] = Field(
        min_length=1, description="lane nodes a car reaches these bays from (nearest is used)"
    )
    closed: bool = Field(False, description="closed from the start (e.g. under repair)")


class LaneNode(_Model):
    id: Ident
    level: Ident
    at: Point


class LaneEdge(_Model):
    from_: Ident = Field(alias="from")
    to: Ident
    length: float | None = Field(None, gt=0, description="metres; default: straight-line distance")
    oneway: bool = False


class Lanes(_Model):
    nodes: list[LaneNode] = Field(min_length=1)
    edges: list[LaneEdge | Annotated[list[Ident], Field(min_length=2)]] = Field(
        description="{from, to, length?, oneway?} or a path [a, b, c, ...] of two-way edges"
    )


class Entrance(_Model):
    id: Ident
    name: LocalName
    node: Ident = Field(description="lane node where cars enter")


class DetectorBinding(_Model):
    detector: int = Field(ge=0, lt=64)
    space: Ident


class NodeController(_Model):
    address: int = Field(ge=1, le=247, description="Modbus slave address")
    detectors: int | None = Field(None, ge=1, le=64, description="default: number of spaces bound")
    spaces: list[SpaceRef | None] = Field(
        default_factory=list, description="detector i watches the i-th space; null skips a detector"
    )
    map: list[DetectorBinding] = Field(
        default_factory=list, description="explicit detector -> space"
    )


class Bus(_Model):
    id: Ident
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "E"
    ttl_s: float = Field(
        15.0, gt=0, description="a space not reported for this long becomes unknown"
    )
    nodes: list[NodeController] = Field(min_length=1)


class CameraRow(_Model):
    """Polygons for a row of bays, interpolated between the first and the last bay."""

    spaces: SpaceRef | list[SpaceRef]
    first: list[Point] = Field(min_length=4, max_length=4)
    last: list[Point] = Field(min_length=4, max_length=4)


class CameraSpace(_Model):
    space: Ident
    polygon: list[Point] = Field(min_length=3)


class Camera(_Model):
    id: Ident
    ttl_s: float = Field(15.0, gt=0)
    resolution: list[int] = Field([1280, 720], min_length=2, max_length=2)
    rows: list[CameraRow] = Field(default_factory=list)
    spaces: list[CameraSpace] = Field(default_factory=list)


class DisplayLine(_Model):
    label: LocalName
    arrow: Arrow
    zones: list[Ident] = Field(min_length=1)
    vehicle_class: Ident | None = Field(None, description="count only spaces this class may use")


class Display(_Model):
    id: Ident
    name: LocalName
    level: Ident
    at: Point
    entrance: Ident | None = Field(None, description="the gate this sign stands at, if any")
    lines: list[DisplayLine] = Field(min_length=1)


class DisplaySettings(_Model):
    fallback_unknown_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="show '--' when more than this share of a line's spaces is unknown",
    )
    expires_s: float = Field(
        60.0, gt=0, description="content validity; republished before it expires"
    )


class SiteFile(_Model):
    site: SiteInfo
    levels: list[Level] = Field(min_length=1)
    zones: list[Zone] = Field(min_length=1)
    kinds: list[Ident] = Field(min_length=1, description="space kinds used on this site")
    vehicle_classes: list[VehicleClass] = Field(min_length=1)
    policies: list[Policy] = Field(default_factory=list)
    spaces: list[SpaceGroup] = Field(min_length=1)
    lanes: Lanes
    entrances: list[Entrance] = Field(min_length=1)
    buses: list[Bus] = Field(default_factory=list)
    cameras: list[Camera] = Field(default_factory=list)
    displays: list[Display] = Field(default_factory=list)
    display_settings: DisplaySettings = Field(default_factory=lambda: DisplaySettings())
