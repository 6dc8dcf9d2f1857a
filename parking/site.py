"""The compiled site: spaces in a fixed order, sensor bindings, lanes, displays.

``load_site(path)`` reads a site file, validates it against
``parking.siteconfig`` and checks every cross-reference; any error names the
file, the line and the field. The result is immutable and indexed for the
components (space index = position in ``Site.spaces``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from parking import siteconfig as cfg
from parking.broker import ROLE_LOGINS
from parking.payloads import (
    IDENTIFIER_PATTERN,
    MAX_PAYLOAD_BYTES,
    is_identifier,
    largest_snapshot_bytes,
)
from parking.yamlsource import (
    YamlSyntaxError,
    format_loc,
    line_of,
    load_with_lines,
    text_of_scalar,
)

_RANGE_RE = re.compile(r"^(.*?)(\d+)$")
# package data, so that an installed wheel has it too; examples/ links to it
EXAMPLE_SITE = Path(__file__).resolve().parent / "examples" / "site.yaml"


class SiteError(ValueError):
    """A site file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def expand_range(ref: str) -> list[str]:
    """'A-001..A-003' -> ['A-001', 'A-002', 'A-003']; a plain id -> [id]."""
    if ".." not in ref:
        return [ref]
    lo, _, hi = ref.partition("..")
    m1, m2 = _RANGE_RE.match(lo), _RANGE_RE.match(hi)
    if not m1 or not m2:
        raise ValueError(f"range {ref!r}: both ends must end in a number")
    if m1.group(1) != m2.group(1):
        raise ValueError(f"range {ref!r}: the ends have different prefixes")
    if len(m1.group(2)) != len(m2.group(2)):
        raise ValueError(f"range {ref!r}: the ends have different digit widths")
    a, b, width = int(m1.group(2)), int(m2.group(2)), len(m1.group(2))
    if b < a:
        raise ValueError(f"range {ref!r}: the end comes before the start")
    if b - a >= 10000:
        raise ValueError(f"range {ref!r}: more than 10000 ids")
    return [f"{m1.group(1)}{n:0{width}d}" for n in range(a, b + 1)]


# in id errors (id_problem): what a definition's id is of, by its list; those in _NAMED
# have a `name` (LocalName) for the Chinese
_ID_OF = {
    "site": "site",
    "levels": "level",
    "zones": "zone",
    "vehicle_classes": "vehicle class",
    "policies": "policy",
    "nodes": "lane node",
    "entrances": "entrance",
    "buses": "bus",
    "cameras": "camera",
    "displays": "display",
}
_NAMED = {"site", "levels", "zones", "vehicle_classes", "entrances", "displays"}
# what a reference (a key naming another definition's id) refers to
_REF_TO = {
    "level": "level",
    "zone": "zone",
    "zones": "zone",
    "kind": "kind",
    "kinds": "kind",
    "classes": "vehicle class",
    "vehicle_class": "vehicle class",
    "access": "lane node",
    "node": "lane node",
    "from": "lane node",
    "to": "lane node",
    "edges": "lane node",
    "entrance": "entrance",
    "space": "space",
}
SPACE_ID_HINT = (
    "a space has no name: give it an ASCII id such as A-001 and put Chinese in its zone's name:"
)


def space_id_problem(space_id: str) -> str:
    """'space id '车位-001': ids may use only ASCII letters, ...; a space has no name: ...'."""
    return f"space id {_shown(space_id)}: {cfg.ID_RULE}; {SPACE_ID_HINT}"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:61] + "...")


def id_problem(loc: tuple[Any, ...], value: object) -> str:
    """The identifier rule broken at ``loc`` (a path in the file, union branches left out)
    in words: which id, the rule, and where Chinese goes instead."""
    shown = _shown(value) if isinstance(value, str) else repr(value)
    keys = [p for p in loc if isinstance(p, str)]
    section = keys[0] if keys else ""
    last = keys[-1] if keys else ""
    if keys == ["kinds"]:  # the site's kinds: definitions
        return (
            f"kind id {shown}: {cfg.ID_RULE}; kinds have no name: use ASCII ids such as"
            " resident, ev (the vehicle classes' and zones' name: carry the Chinese)"
        )
    if last == "id" and len(keys) > 1 and keys[-2] in _ID_OF:
        what = _ID_OF[keys[-2]]
        if section in _NAMED:
            hint = "put Chinese in name:"
        elif section == "policies":
            hint = "put Chinese in description:"
        else:
            hint = f"a {what} has no name: give it an ASCII id (Chinese goes in the name: fields)"
        return f"{what} id {shown}: {cfg.ID_RULE}; {hint}"
    if last == "agent":
        return f"agent id {shown}: {cfg.ID_RULE}"
    if last in _REF_TO:
        what = _REF_TO[last]
        return f"{what} id {shown}: {cfg.ID_RULE}; use the {what}'s ASCII id here, not its name"
    return f"id {shown}: {cfg.ID_RULE}"


def parse_window(window: str) -> tuple[int, int]:
    """'19:00-08:00' -> (1140, 480) in minutes of the day."""
    start, end = window.split("-")
    h1, m1 = map(int, start.split(":"))
    h2, m2 = map(int, end.split(":"))
    return h1 * 60 + m1, h2 * 60 + m2


def format_minute(minute: int) -> str:
    """1140 -> '19:00' (1440 -> '24:00', a window's end)."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def format_window(window: tuple[int, int]) -> str:
    """(1140, 480) -> '19:00-08:00', the inverse of :func:`parse_window`."""
    return f"{format_minute(window[0])}-{format_minute(window[1])}"


def in_window(minute: int, window: tuple[int, int]) -> bool:
    """Whether minute-of-day lies in [start, end), windows may cross midnight."""
    start, end = window
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


@dataclass(frozen=True)
class Space:
    id: str
    index: int
    zone: str
    level: str
    kinds: frozenset[str]
    polygon: tuple[tuple[float, float], ...]
    center: tuple[float, float]
    access: str
    access_distance: float
    closed: bool = False


@dataclass(frozen=True)
class LaneNode:
    id: str
    level: str
    at: tuple[float, float]


@dataclass(frozen=True)
class LaneEdge:
    a: str
    b: str
    length: float
    oneway: bool


@dataclass(frozen=True)
class NodeController:
    address: int
    detectors: int
    spaces: tuple[str | None, ...]
    """detector index -> space id (None: no space on that detector)"""


def default_agent(kind: str, source: str) -> str:
    """The agent id a source's reports are accepted from unless the site file names one,
    and the id its agent takes by default: ``serial-<bus>`` or ``camera-<camera>``."""
    return f"{'serial' if kind == 'bus' else 'camera'}-{source}"


@dataclass(frozen=True)
class Bus:
    id: str
    baud: int
    parity: str
    ttl_s: float
    nodes: tuple[NodeController, ...]
    agent: str = ""
    """the agent whose reports for this bus are accepted (default_agent)"""

    def node(self, address: int) -> NodeController:
        for n in self.nodes:
            if n.address == address:
                return n
        raise KeyError(address)


@dataclass(frozen=True)
class Camera:
    id: str
    ttl_s: float
    resolution: tuple[int, int]
    polygons: dict[str, tuple[tuple[float, float], ...]]
    """space id -> polygon in pixels, in binding order"""
    agent: str = ""
    """the agent whose reports for this camera are accepted (default_agent)"""


@dataclass(frozen=True)
class Policy:
    id: str
    kind: str
    classes: frozenset[str]
    windows: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Binding:
    source: str
    """bus id or camera id"""
    kind: str
    """'bus' or 'camera'"""
    node: int | None = None
    detector: int | None = None


@dataclass(frozen=True)
class Site:
    id: str
    name: cfg.LocalName
    timezone: str
    levels: tuple[cfg.Level, ...]
    zones: tuple[cfg.Zone, ...]
    kinds: tuple[str, ...]
    vehicle_classes: tuple[cfg.VehicleClass, ...]
    policies: tuple[Policy, ...]
    spaces: tuple[Space, ...]
    lane_nodes: tuple[LaneNode, ...]
    lane_edges: tuple[LaneEdge, ...]
    entrances: tuple[cfg.Entrance, ...]
    buses: tuple[Bus, ...]
    cameras: tuple[Camera, ...]
    displays: tuple[cfg.Display, ...]
    display_settings: cfg.DisplaySettings
    bindings: dict[str, Binding] = field(repr=False)
    space_index: dict[str, int] = field(repr=False)
    # sha256 of what the file says, validated (``site_digest``); the gateway journals it so
    # that other components can tell a different file
    digest: str = field(default="", repr=False, compare=False)

    def space(self, space_id: str) -> Space:
        return self.spaces[self.space_index[space_id]]

    def bus(self, bus_id: str) -> Bus:
        for b in self.buses:
            if b.id == bus_id:
                return b
        raise KeyError(
            f"no bus {bus_id!r} in site {self.id!r} (buses: {[b.id for b in self.buses]})"
        )

    def camera(self, camera_id: str) -> Camera:
        for c in self.cameras:
            if c.id == camera_id:
                return c
        raise KeyError(
            f"no camera {camera_id!r} in site {self.id!r} (cameras: {[c.id for c in self.cameras]})"
        )

    def source_ttl(self, source: str) -> float:
        for b in self.buses:
            if b.id == source:
                return b.ttl_s
        return self.camera(source).ttl_s

    def shortest_ttl_s(self) -> float:
        """The shortest TTL of any bus or camera (60 s on a site without sources)."""
        return min([b.ttl_s for b in self.buses] + [c.ttl_s for c in self.cameras], default=60.0)

    def snapshot_interval(self, source: str) -> float:
        """How often an agent sends a full snapshot of a source: a third of its TTL (at most
        a minute), so a living source is never taken for a silent one by the gateway."""
        return min(60.0, self.source_ttl(source) / 3.0)

    def snapshot_interval_problem(self, source: str, interval_s: float) -> str | None:
        """Why snapshots every ``interval_s`` would let the gateway take a living source for
        a silent one (its spaces unknown between them), or None: at most half its TTL."""
        ttl = self.source_ttl(source)
        if not interval_s <= ttl / 2:  # NaN too
            return (
                f"snapshots every {interval_s:g} s: the gateway forgets {source}'s spaces "
                f"{ttl:g} s (its ttl_s) after the last one, so a still scene would read unknown "
                f"between them; give at most {ttl / 2:g} s (default {self.snapshot_interval(source):g})"
            )
        return None

    def spaces_of_source(self, source: str) -> list[str]:
        """Space ids bound to a bus or camera, in binding order."""
        return [s for s, b in self.bindings.items() if b.source == source]

    def zone_spaces(self, zone: str) -> list[int]:
        return [s.index for s in self.spaces if s.zone == zone]

    def kind_open(self, kind: str, vehicle_class: str, minute: int) -> bool:
        """Whether policies let ``vehicle_class`` use ``kind`` at minute-of-day (local)."""
        for p in self.policies:
            if (
                p.kind == kind
                and vehicle_class in p.classes
                and not any(in_window(minute, w) for w in p.windows)
            ):
                return False
        return True

    def eligible(self, space: Space, vehicle_class: str, minute: int) -> bool:
        """Kinds and policies only; state, holds and closure are the gateway's business."""
        vc = next(v for v in self.vehicle_classes if v.id == vehicle_class)
        return any(k in vc.kinds and self.kind_open(k, vehicle_class, minute) for k in space.kinds)

    def summary(self) -> dict[str, Any]:
        """The one-line summary of ``parkguide site check --json``."""
        return {
            "site": self.id,
            "spaces": len(self.spaces),
            "zones": len(self.zones),
            "levels": len(self.levels),
            "buses": {b.id: [n.address for n in b.nodes] for b in self.buses},
            "cameras": [c.id for c in self.cameras],
            "displays": len(self.displays),
            "entrances": len(self.entrances),
        }


def load_site(path: str | Path) -> Site:
    """Read, validate and compile a site file; raises SiteError naming file, line, field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SiteError([f"{path}: cannot read site file: {exc.strerror or exc}"]) from None
    return site_from_bytes(raw, path)


def site_from_bytes(raw: bytes, path: str | Path) -> Site:
    """``load_site`` of bytes already read from ``path`` (the gateway keys its check of the
    site file by the very bytes it validates)."""
    path = Path(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SiteError([_not_utf8(path, raw, exc)]) from None
    return parse_site(text, str(path))


def _not_utf8(path: Path, raw: bytes, exc: UnicodeDecodeError) -> str:
    """'site.yaml:10: not UTF-8: byte 0xd0 at offset 468 ...; save the site file as UTF-8'."""
    line = raw.count(b"\n", 0, exc.start) + 1
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        guess = " (it is UTF-16)"
    else:
        guess = " (saved in a local encoding such as GBK/GB18030 or Windows 'ANSI'?)"
    return (
        f"{path}:{line}: not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        f" is not valid UTF-8{guess}; save the site file as UTF-8"
    )


def parse_site(text: str, filename: str = "<site>") -> Site:
    try:
        data, lines = load_with_lines(text, filename)
    except YamlSyntaxError as exc:
        raise SiteError([str(exc)]) from None
    if not isinstance(data, dict):
        raise SiteError([f"{filename}:1: the site file must be a mapping"])
    try:
        model = cfg.SiteFile.model_validate(data)
    except ValidationError as exc:
        raise SiteError(_schema_problems(exc, data, lines, text, filename)) from None
    site = _Compiler(model, lines, filename).compile()
    return replace(site, digest=site_digest(model))


def site_digest(model: cfg.SiteFile) -> str:
    """``Site.digest``: what the file says, validated (not its comments, spacing or key
    order), without the defaults of what it leaves out: those are the code's, and a release
    adding a defaulted field would give the same file another digest, so an API and a
    gateway of two releases would see two site files."""
    return hashlib.sha256(model.model_dump_json(exclude_unset=True).encode()).hexdigest()


_BOOL_WORDS = "yes/no, on/off and true/false"


def _schema_problems(
    exc: ValidationError, data: Any, lines: dict, text: str, filename: str
) -> list[str]:
    """pydantic's errors as 'file:line: field: what to write instead': union branches that do
    not fit the value's shape left out, YAML's numbers and booleans where text is meant, a
    plain name where Chinese and English are meant, a bare value where a list is meant."""
    errors = [(err, *_split_loc(data, tuple(err["loc"]), err["type"])) for err in exc.errors()]
    # a union (a space id or a list of them; an edge mapping or a path): keep the errors of
    # the branch that fits the value's shape, if one does, not one complaint per branch
    fitting = {union for _, _, union, fits in errors if union is not None and fits}
    source: list[Any] = []  # the composed YAML, built on the first need (a scalar's text)
    problems = []
    for err, clean, union, fits in errors:
        if union is not None and not fits and union in fitting:
            continue
        line = line_of(lines, clean)
        msg = _schema_message(err, clean, lambda loc: text_of_scalar(text, loc, source))
        problem = f"{filename}:{line or '?'}: {format_loc(clean)}: {msg}"
        if problem not in problems:
            problems.append(problem)
    return problems


def _split_loc(
    data: Any, loc: tuple[Any, ...], err_type: str
) -> tuple[tuple[Any, ...], tuple[Any, ...] | None, bool]:
    """An error's location as a path in the file; the path of the union it was raised in
    (None if none) and whether its branch (pydantic's tag in the location, such as
    'list[constrained-str]' or 'LaneEdge') fits the shape of the value there."""
    cur: Any = data
    clean: list[Any] = []
    union: tuple[Any, ...] | None = None
    fits = True
    for i, part in enumerate(loc):
        in_dict = isinstance(cur, dict) and part in cur
        if in_dict or (isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)):
            cur = cur[part]
        elif isinstance(part, str) and (i < len(loc) - 1 or err_type != "missing"):
            if union is None:  # a branch's tag, not a key of the file
                union = tuple(clean)
                if part.startswith("list["):
                    fits = isinstance(cur, list)
                elif part[:1].isupper():  # a model
                    fits = isinstance(cur, dict)
                else:
                    fits = not isinstance(cur, list | dict)
            continue
        clean.append(part)
    return tuple(clean), union, fits


def _schema_message(err: Any, loc: tuple[Any, ...], scalar_text: Any) -> str:
    kind, value, ctx = err["type"], err["input"], err.get("ctx") or {}
    keys = [p for p in loc if isinstance(p, str)]
    key = keys[-1] if keys else "value"
    if kind == "extra_forbidden":
        allowed = _keys_at(loc[:-1])
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if (kind == "string_pattern_mismatch" and ctx.get("pattern") == IDENTIFIER_PATTERN) or (
        kind == "string_too_long" and ctx.get("max_length") == 64
    ):  # an Ident: say the rule in words, not the regex
        return id_problem(loc, value)
    if kind == "string_type" and not isinstance(value, list | dict):
        written = scalar_text(loc)
        shown = written if written is not None else str(value)
        if isinstance(value, bool):
            return (
                f"YAML read {shown} as true/false ({_BOOL_WORDS} are booleans in YAML), not as"
                f" text: quote it ('{shown}')"
            )
        if isinstance(value, int | float):
            return f"YAML read {shown} as a number, not as text: quote it ('{shown}')"
        if value is None:
            return "no value given: write the text here (quote it if it is a number or yes/no)"
        return f"YAML read {shown} as a {type(value).__name__}, not as text: quote it ('{shown}')"
    if kind in {"model_type", "dict_type"} and (
        ctx.get("class_name") == "LocalName" or (kind == "dict_type" and key in {"name", "label"})
    ):
        if isinstance(value, str) and value.isascii():
            example = f"{{zh: <Chinese>, en: {value}}}"
        elif isinstance(value, str):
            example = f"{{zh: {value}, en: <English>}}"
        else:
            example = "{zh: <Chinese>, en: <English>} (e.g. {zh: 业主, en: Resident})"
        return f"a {key} is text in Chinese and English: write {key}: {example}"
    if kind == "list_type" and isinstance(value, str):
        written = scalar_text(loc)
        shown = written if written is not None else value
        return f"a list is needed here: write {key}: [{shown}]"
    if kind == "list_type" and not isinstance(value, dict):
        return f"{err['msg']}: write it in [ ] (e.g. {key}: [...])"
    return str(err["msg"])


def _keys_at(path: tuple[Any, ...]) -> list[str]:
    """The keys the site file allows in the mapping at ``path`` (as written: ``from``, not
    ``from_``), from the model's fields; none when the path leads to no single model."""
    kind: Any = cfg.SiteFile
    for part in path:
        models = [t for t in _types_in(kind) if isinstance(t, type) and issubclass(t, BaseModel)]
        if isinstance(part, int):
            items = [get_args(t)[0] for t in _types_in(kind) if get_origin(t) is list]
            if len(items) != 1:
                return []
            kind = items[0]
        elif len(models) == 1:
            fields = {f.alias or name: f for name, f in models[0].model_fields.items()}
            if part not in fields:
                return []
            kind = fields[part].annotation
        else:
            return []
    models = [t for t in _types_in(kind) if isinstance(t, type) and issubclass(t, BaseModel)]
    if len(models) != 1:
        return []
    return [f.alias or name for name, f in models[0].model_fields.items()]


def _types_in(kind: Any) -> list[Any]:
    """The alternatives of a type: a union's members, an Annotated type's own type."""
    if get_origin(kind) is Annotated:
        return _types_in(get_args(kind)[0])
    if get_origin(kind) in {Union, UnionType}:
        return [t for arg in get_args(kind) for t in _types_in(arg)]
    return [kind]


def reached_nodes(site: Site) -> dict[str, set[str]]:
    """Entrance id -> the lane nodes a car from it reaches, driven as the allocator drives
    (a one-way edge only in its direction)."""
    succ: dict[str, list[str]] = {}
    for e in site.lane_edges:
        succ.setdefault(e.a, []).append(e.b)
        if not e.oneway:
            succ.setdefault(e.b, []).append(e.a)
    out = {}
    for ent in site.entrances:
        seen, todo = {ent.node}, [ent.node]
        while todo:
            for nxt in succ.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        out[ent.id] = seen
    return out


def unreachable(site: Site) -> tuple[list[str], list[str]]:
    """Over the lane graph (:func:`reached_nodes`): the spaces no entrance reaches, in site
    order (never assigned, nor counted on the signs), and the entrances that reach no
    space. Either is most likely a missing or reversed edge in ``lanes.edges``."""
    access = {s.access for s in site.spaces}
    reach = reached_nodes(site)
    reached_by_any = set().union(*reach.values())
    dead_entrances = [e for e, seen in reach.items() if not seen & access]
    return [s.id for s in site.spaces if s.access not in reached_by_any], dead_entrances


class _LineSpaces:
    """The spaces each sign line counts (its zones', of the kinds its class may use), from
    lists kept per (zone, class): a large site has hundreds of lines over the same zones."""

    def __init__(self, site: Site):
        self.by_zone: dict[str, list[Space]] = {z.id: [] for z in site.zones}
        for s in site.spaces:
            self.by_zone.setdefault(s.zone, []).append(s)
        self._kinds = {c.id: set(c.kinds) for c in site.vehicle_classes}
        self._usable: dict[tuple[str, str | None], list[Space]] = {}

    def of_zone(self, zone: str, vehicle_class: str | None) -> list[Space]:
        key = (zone, vehicle_class)
        if key not in self._usable:
            spaces = self.by_zone.get(zone, [])
            if vehicle_class is not None:
                usable = self._kinds.get(vehicle_class, set())
                spaces = [s for s in spaces if s.kinds & usable]
            self._usable[key] = spaces
        return self._usable[key]


def sign_reach_warnings(site: Site, show: int = 5) -> list[str]:
    """Sign lines at an entrance counting spaces a car from that entrance cannot reach
    (another entrance can: spaces none reaches are warned about on their own). The line
    counts them all the same, so a driver there is told of spaces it cannot drive to."""
    reach = reached_nodes(site)
    reached_by_any = set().union(*reach.values()) if reach else set()
    spaces = _LineSpaces(site)
    cut_of: dict[tuple[str, str, str | None], list[str]] = {}  # (entrance, zone, class)
    out = []
    for d in site.displays:
        if d.entrance is None or d.entrance not in reach:
            continue
        missed = reached_by_any - reach[d.entrance]
        if not missed:  # the usual case: it reaches all that any does
            continue
        for li, line in enumerate(d.lines):
            cut = []
            for z in line.zones:
                key = (d.entrance, z, line.vehicle_class)
                if key not in cut_of:
                    cut_of[key] = [
                        s.id for s in spaces.of_zone(z, line.vehicle_class) if s.access in missed
                    ]
                cut += cut_of[key]
            if cut:
                more = ", ..." if len(cut) > show else ""
                out.append(
                    f"display {d.id} lines[{li}] ({line.label.zh} / {line.label.en}) counts"
                    f" {len(cut)} spaces a car from entrance {d.entrance} cannot reach over the"
                    f" lanes ({', '.join(cut[:show])}{more}): drivers at that sign are told of"
                    " spaces they cannot drive to; check lanes.edges for a missing or reversed"
                    " one-way edge, or the line's zones"
                )
    return out


def zone_warnings(site: Site) -> list[str]:
    """Zones without a space, and sign lines counting no space (their zones have none, or
    none its vehicle class may use): each reads 满 FULL for good, most likely a slip in
    ``spaces`` (a row's ``zone``) or in the line's ``zones``."""
    spaces = _LineSpaces(site)
    out = [
        f"zone {z.id} ({z.name.zh} / {z.name.en}) has no spaces: its count stays 0 and a sign"
        f" line counting only it reads 满 FULL for good; give it spaces (a row with zone:"
        f" {z.id}) or take the zone out"
        for z in site.zones
        if not spaces.by_zone[z.id]
    ]
    for d in site.displays:
        for li, line in enumerate(d.lines):
            if not any(spaces.of_zone(z, line.vehicle_class) for z in line.zones):
                whose = (
                    ""
                    if line.vehicle_class is None
                    else f" that vehicle class {line.vehicle_class} may use"
                )
                out.append(
                    f"display {d.id} lines[{li}] ({line.label.zh} / {line.label.en}) counts no"
                    f" space (its zones {', '.join(line.zones)} have none{whose}) and will read"
                    " 满 FULL for good: check the line's zones"
                )
    return out


def policy_warnings(site: Site, today: date | None = None) -> list[str]:
    """Time windows that do not do what they look like: a (kind, class) whose policies
    never agree on a minute (every policy naming both must allow it, so two policies
    for one class and kind mean their windows' overlap, not their union), and window
    edges at a local time that daylight saving skips or repeats within a year of
    ``today`` (the window then opens late, opens twice or closes and reopens)."""
    out = []
    for vc in site.vehicle_classes:
        for kind in vc.kinds:
            ruling = [p.id for p in site.policies if p.kind == kind and vc.id in p.classes]
            if ruling and not any(site.kind_open(kind, vc.id, m) for m in range(24 * 60)):
                out.append(
                    f"vehicle class {vc.id} may never use {kind} spaces: its policies"
                    f" {', '.join(ruling)} must all allow a minute and share none (give one"
                    " class's windows for a kind in one policy's windows list)"
                )
    for p in site.policies:
        seen: list[tuple[int, int]] = []
        for w in p.windows:
            if any(_windows_meet(w, other) for other in seen):
                out.append(
                    f"policy {p.id}: window {format_window(w)} overlaps another of"
                    " its windows (they are joined; check it is meant)"
                )
            seen.append(w)
    tz = ZoneInfo(site.timezone)
    start = today or date.today()
    edges = sorted(
        (e % 1440, p.id)
        for p in site.policies
        for e in {e % 1440 for w in p.windows for e in w}
        # a real edge: the policy's windows cover one side of it and not the other (an
        # all-day 00:00-24:00 has none)
        if any(in_window(e % 1440, w) for w in p.windows)
        != any(in_window((e - 1) % 1440, w) for w in p.windows)
    )
    for minute, policy in edges:
        for day in (start + timedelta(days=i) for i in range(366)):
            at = datetime.combine(day, time(minute // 60, minute % 60))
            before, after = at.replace(tzinfo=tz, fold=0), at.replace(tzinfo=tz, fold=1)
            if before.utcoffset() == after.utcoffset():
                continue
            what = (
                "does not exist (the clocks skip it)"
                if (before.utcoffset() or timedelta()) < (after.utcoffset() or timedelta())
                else "happens twice (the clocks go back)"
            )
            out.append(
                f"policy {policy}: {format_minute(minute)} on {day.isoformat()} {what} in"
                f" {site.timezone} (daylight saving): a window edge then opens late, twice, or"
                " closes and reopens; an edge outside the changeover hour avoids it"
            )
            break
    return out


def login_warnings(site: Site) -> list[str]:
    """Ids that would share one broker login under the shipped ACL, which takes an agent's,
    an entrance's and a display's id as its username (deploy/mosquitto/parkguide.acl): the
    one login would get both rights (a sign's login reporting as an agent, say)."""
    owners: dict[str, list[str]] = {}
    for role in ROLE_LOGINS:
        owners.setdefault(role, []).append(f"the {role!r} role")
    for b in site.buses:
        owners.setdefault(b.agent, []).append(f"bus {b.id}'s agent")
    for c in site.cameras:
        owners.setdefault(c.agent, []).append(f"camera {c.id}'s agent")
    for e in site.entrances:
        owners.setdefault(e.id, []).append(f"entrance {e.id}")
    for d in site.displays:
        owners.setdefault(d.id, []).append(f"display {d.id}")
    shared = [
        f"broker login {login!r} would be {' and '.join(who)}: under the shipped ACL one"
        " login gets both's rights; rename one of them if they log in separately"
        for login, who in owners.items()
        if len(who) > 1
    ]
    # mosquitto refuses ':' in a user name, and make-passwords.sh a variable named after it
    impossible = [
        f"broker login {login!r} ({' and '.join(who)}) cannot exist: mosquitto refuses a"
        " ':' in a user name; rename it if it logs in on its own"
        for login, who in owners.items()
        if ":" in login
    ]
    return shared + impossible


def _windows_meet(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Two windows (minutes of the day, either may cross midnight) share a minute."""
    return any(in_window(m, a) and in_window(m, b) for m in range(24 * 60))


def lane_warnings(site: Site, show: int = 5) -> list[str]:
    """``unreachable`` as warnings for ``parkguide site check`` and the gateway's log (count
    and the first ids), then ``sign_reach_warnings`` and ``zone_warnings``."""
    spaces, entrances = unreachable(site)
    out = []
    if spaces:
        nodes = sorted({site.space(s).access for s in spaces})
        more = ", ..." if len(spaces) > show else ""
        out.append(
            f"{len(spaces)} spaces cannot be reached from any entrance over the lanes: never"
            f" assigned, nor counted on the signs ({', '.join(spaces[:show])}{more}; access nodes"
            f" {', '.join(nodes[:show])}{', ...' if len(nodes) > show else ''}):"
            " check lanes.edges for a missing or reversed one-way edge"
        )
    for ent_id in entrances:
        node = next(e.node for e in site.entrances if e.id == ent_id)
        out.append(
            f"entrance {ent_id} (lane node {node}) reaches no space over the lanes:"
            " check lanes.edges for a missing or reversed one-way edge"
        )
    return (
        out
        + sign_reach_warnings(site, show)
        + zone_warnings(site)
        + policy_warnings(site)
        + login_warnings(site)
    )


def _out_of_frame(poly: Iterable[Any], w: int, h: int) -> bool:
    """Whether a polygon (pixel corners) has a corner outside a w x h image."""
    return any(not (0 <= p[0] <= w and 0 <= p[1] <= h) for p in poly)


class _Compiler:
    def __init__(self, model: cfg.SiteFile, lines: dict, filename: str):
        self.m = model
        self.lines = lines
        self.filename = filename
        self.problems: list[str] = []

    def err(self, loc: tuple[Any, ...], msg: str) -> None:
        line = line_of(self.lines, loc)
        self.problems.append(f"{self.filename}:{line or '?'}: {format_loc(loc)}: {msg}")

    def unique(self, items: Iterable[Any], key: str, section: str) -> set[str]:
        seen: set[str] = set()
        for i, item in enumerate(items):
            ident = getattr(item, key)
            if ident in seen:
                self.err((section, i, key), f"duplicate id {ident!r}")
            seen.add(ident)
        return seen

    def expand(
        self, refs: str | list[str | None] | list[str], loc: tuple[Any, ...]
    ) -> list[str | None]:
        out: list[str | None] = []
        items = [refs] if isinstance(refs, str) else refs
        for i, ref in enumerate(items):
            if ref is None:
                out.append(None)
                continue
            try:
                out.extend(expand_range(ref))
            except ValueError as exc:
                self.err(loc if isinstance(refs, str) else (*loc, i), str(exc))
        return out

    def check_space_ids(self, refs: str | list[str], loc: tuple[Any, ...]) -> None:
        """Every space id of a group, ranges expanded, by the identifier rule: ids name MQTT
        topics and API paths ('车位-001' cannot be reported, 'X/2' not addressed, 'X+1' is a
        topic wildcard). One problem per id or range."""
        items = [refs] if isinstance(refs, str) else refs
        for i, ref in enumerate(items):
            try:
                ids = expand_range(ref)
            except ValueError:
                continue  # reported by expand
            bad = [s for s in ids if not is_identifier(s)]
            if bad:
                more = (
                    f" (likewise the other {len(bad) - 1} ids of {ref!r})" if len(bad) > 1 else ""
                )
                self.err(
                    loc if isinstance(refs, str) else (*loc, i), space_id_problem(bad[0]) + more
                )

    def compile(self) -> Site:
        m = self.m
        level_ids = self.unique(m.levels, "id", "levels")
        zone_ids = self.unique(m.zones, "id", "zones")
        for i, zone in enumerate(m.zones):
            if zone.level not in level_ids:
                self.err(("zones", i, "level"), f"level {zone.level!r} is not defined")
        kinds: set[str] = set()
        for i, k in enumerate(m.kinds):  # the gateway numbers kinds by their place here
            if k in kinds:
                self.err(("kinds", i), f"duplicate kind {k!r}")
            kinds.add(k)
        class_ids = self.unique(m.vehicle_classes, "id", "vehicle_classes")
        for i, vc in enumerate(m.vehicle_classes):
            for k in vc.kinds:
                if k not in kinds:
                    self.err(("vehicle_classes", i, "kinds"), f"kind {k!r} is not in kinds")
            for k in vc.prefer:
                if k not in vc.kinds:
                    self.err(
                        ("vehicle_classes", i, "prefer"),
                        f"kind {k!r} to prefer is not one of the class's kinds {vc.kinds}",
                    )
            for k in vc.avoid:
                if k not in kinds:
                    self.err(
                        ("vehicle_classes", i, "avoid"), f"kind {k!r} to avoid is not in kinds"
                    )
                elif k in vc.prefer:
                    self.err(
                        ("vehicle_classes", i, "avoid"),
                        f"kind {k!r} is both preferred and avoided",
                    )
            if vc.avoid and set(vc.kinds) <= set(vc.avoid):
                # every space it may use carries an avoided kind: nothing would be avoided
                self.err(
                    ("vehicle_classes", i, "avoid"),
                    f"avoids every kind it may use {vc.kinds}: it would avoid nothing",
                )
        self.unique(m.policies, "id", "policies")
        policies = []
        for i, p in enumerate(m.policies):
            if p.kind not in kinds:
                self.err(("policies", i, "kind"), f"kind {p.kind!r} is not in kinds")
            for c in p.classes:
                if c not in class_ids:
                    self.err(("policies", i, "classes"), f"vehicle class {c!r} is not defined")
            policies.append(
                Policy(
                    p.id, p.kind, frozenset(p.classes), tuple(parse_window(w) for w in p.windows)
                )
            )

        # lanes
        node_ids = self.unique(m.lanes.nodes, "id", "lanes.nodes")
        nodes = {n.id: LaneNode(n.id, n.level, (n.at[0], n.at[1])) for n in m.lanes.nodes}
        for i, n in enumerate(m.lanes.nodes):
            if n.level not in level_ids:
                self.err(("lanes", "nodes", i, "level"), f"level {n.level!r} is not defined")
        edges: list[LaneEdge] = []
        for i, e in enumerate(m.lanes.edges):
            pairs = (
                [(e.from_, e.to, e.length, e.oneway)]
                if isinstance(e, cfg.LaneEdge)
                else [(a, b, None, False) for a, b in zip(e, e[1:], strict=False)]
            )
            for a, b, length, oneway in pairs:
                bad = [x for x in (a, b) if x not in node_ids]
                if bad:
                    self.err(("lanes", "edges", i), f"lane node {bad[0]!r} is not defined")
                    continue
                if length is None:
                    if nodes[a].level != nodes[b].level:
                        levels = f"levels {nodes[a].level} and {nodes[b].level}"
                        if isinstance(e, cfg.LaneEdge):
                            how = "give its length (metres)"
                        else:  # a path has no place for a length
                            how = (
                                "a path has no length: write it as"
                                f" {{from: {a}, to: {b}, length: ...}} (metres)"
                            )
                        self.err(
                            ("lanes", "edges", i),
                            f"the edge from {a} to {b} joins {levels}: {how}",
                        )
                        continue
                    length = math.dist(nodes[a].at, nodes[b].at)
                edges.append(LaneEdge(a, b, max(length, 0.1), oneway))

        # spaces
        spaces: list[Space] = []
        index: dict[str, int] = {}
        zone_level = {z.id: z.level for z in m.zones}
        for gi, g in enumerate(m.spaces):
            ids = [s for s in self.expand(g.ids, ("spaces", gi, "ids")) if s is not None]
            self.check_space_ids(g.ids, ("spaces", gi, "ids"))
            if g.zone not in zone_ids:
                self.err(("spaces", gi, "zone"), f"zone {g.zone!r} is not defined")
            for k in g.kinds:
                if k not in kinds:
                    self.err(("spaces", gi, "kinds"), f"kind {k!r} is not in kinds")
            for a in g.access:
                if a not in node_ids:
                    self.err(("spaces", gi, "access"), f"lane node {a!r} is not defined")
                elif g.zone in zone_level and nodes[a].level != zone_level[g.zone]:
                    # a car would be sent to these bays over another level's lanes
                    self.err(
                        ("spaces", gi, "access"),
                        f"access node {a} is on level {nodes[a].level} but zone {g.zone} is on"
                        f" level {zone_level[g.zone]}",
                    )
            access_nodes = [nodes[a] for a in g.access if a in nodes]
            lay = g.layout
            ang = math.radians(lay.angle)
            ux, uy = math.cos(ang), math.sin(ang)  # along the row
            vx, vy = -uy, ux  # into the bay
            w, d = lay.size
            for j, sid in enumerate(ids):
                if sid in index:
                    self.err(("spaces", gi, "ids"), f"duplicate space {sid!r}")
                    continue
                ox, oy = lay.origin[0] + j * lay.step[0], lay.origin[1] + j * lay.step[1]
                poly: tuple[tuple[float, float], ...] = (
                    (ox, oy),
                    (ox + w * ux, oy + w * uy),
                    (ox + w * ux + d * vx, oy + w * uy + d * vy),
                    (ox + d * vx, oy + d * vy),
                )
                cx = sum(p[0] for p in poly) / 4
                cy = sum(p[1] for p in poly) / 4
                if access_nodes:
                    center = (cx, cy)
                    near = min(access_nodes, key=lambda node: math.dist(node.at, center))
                    acc, dist = near.id, math.dist(near.at, (cx, cy))
                else:
                    acc, dist = "", 0.0
                index[sid] = len(spaces)
                spaces.append(
                    Space(
                        sid,
                        len(spaces),
                        g.zone,
                        zone_level.get(g.zone, ""),
                        frozenset(g.kinds),
                        poly,
                        (cx, cy),
                        acc,
                        dist,
                        g.closed,
                    )
                )

        entrance_ids = self.unique(m.entrances, "id", "entrances")
        for i, ent in enumerate(m.entrances):
            if ent.node not in node_ids:
                self.err(("entrances", i, "node"), f"lane node {ent.node!r} is not defined")

        # sensor bindings: every space at most once, every detector at most once
        bindings: dict[str, Binding] = {}
        bound_at: dict[str, tuple[Any, ...]] = {}  # formatted only for an error

        def bind(sid: str, b: Binding, loc: tuple[Any, ...]) -> None:
            if sid not in index:
                self.err(loc, f"space {sid!r} is not defined")
            elif sid in bindings:
                self.err(loc, f"space {sid!r} is already bound at {format_loc(bound_at[sid])}")
            else:
                bindings[sid] = b
                bound_at[sid] = loc

        # one agent per source: the gateway accepts a source's reports from its agent only
        agent_source: dict[str, str] = {}

        def bind_agent(agent: str, source: str, loc: tuple[Any, ...]) -> None:
            if agent_source.setdefault(agent, source) != source:
                self.err(loc, f"agent {agent!r} already reports for {agent_source[agent]!r}")

        source_ids: set[str] = set()
        buses: list[Bus] = []
        for bi, bus in enumerate(m.buses):
            if bus.id in source_ids:
                self.err(("buses", bi, "id"), f"duplicate source id {bus.id!r}")
            source_ids.add(bus.id)
            addrs: set[int] = set()
            ncs = []
            for ni, nc in enumerate(bus.nodes):
                loc = ("buses", bi, "nodes", ni)
                if nc.address in addrs:
                    self.err(
                        (*loc, "address"), f"duplicate node address {nc.address} on bus {bus.id!r}"
                    )
                addrs.add(nc.address)
                by_detector: dict[int, str | None] = {}
                for di, bound in enumerate(self.expand(nc.spaces, (*loc, "spaces"))):
                    by_detector[di] = bound
                for mi, db in enumerate(nc.map):
                    if by_detector.get(db.detector) is not None:
                        self.err(
                            (*loc, "map", mi, "detector"), f"detector {db.detector} is bound twice"
                        )
                        continue
                    by_detector[db.detector] = db.space
                count = nc.detectors or (max(by_detector) + 1 if by_detector else 1)
                if by_detector and max(by_detector) >= count:
                    self.err(
                        (*loc, "detectors"),
                        f"{max(by_detector) + 1} detectors bound but the node has {count}",
                    )
                    continue
                if count > 64:
                    self.err(
                        (*loc, "spaces"),
                        f"a node controller serves at most 64 detectors, not {count}",
                    )
                    continue
                det_spaces: list[str | None] = [None] * count
                mapped = {b.detector for b in nc.map}
                for di, det_sid in sorted(by_detector.items()):
                    if det_sid is None:
                        continue
                    bind(
                        det_sid,
                        Binding(bus.id, "bus", nc.address, di),
                        (*loc, "map" if di in mapped else "spaces"),
                    )
                    det_spaces[di] = det_sid
                ncs.append(NodeController(nc.address, count, tuple(det_spaces)))
            agent = bus.agent or default_agent("bus", bus.id)
            bind_agent(agent, bus.id, ("buses", bi, "agent"))
            buses.append(Bus(bus.id, bus.baud, bus.parity, bus.ttl_s, tuple(ncs), agent))

        cameras: list[Camera] = []
        for ci, cam in enumerate(m.cameras):
            if cam.id in source_ids:
                self.err(("cameras", ci, "id"), f"duplicate source id {cam.id!r}")
            source_ids.add(cam.id)
            polys: dict[str, tuple[tuple[float, float], ...]] = {}
            w, h = cam.resolution
            for ri, row in enumerate(cam.rows):
                row_loc = ("cameras", ci, "rows", ri)
                ids = [s for s in self.expand(row.spaces, (*row_loc, "spaces")) if s]
                n_row = len(ids)
                outside = []
                for j, row_sid in enumerate(ids):
                    t = j / (n_row - 1) if n_row > 1 else 0.0
                    row_poly = tuple(
                        (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
                        for a, b in zip(row.first, row.last, strict=True)
                    )
                    bind(row_sid, Binding(cam.id, "camera"), (*row_loc, "spaces"))
                    polys.setdefault(row_sid, row_poly)
                    if _out_of_frame(row_poly, w, h):
                        outside.append(row_sid)
                if outside:  # then the first or the last bay's corners are out: point there
                    ends = [k for k in ("first", "last") if _out_of_frame(getattr(row, k), w, h)]
                    more = f" (likewise {len(outside) - 1} more of the row)" if outside[1:] else ""
                    self.err(
                        (*row_loc, ends[0]) if len(ends) == 1 else row_loc,
                        f"polygon of {outside[0]!r} leaves the {w}x{h} frame{more}",
                    )
            for si, cs in enumerate(cam.spaces):
                bind(cs.space, Binding(cam.id, "camera"), ("cameras", ci, "spaces", si, "space"))
                polys.setdefault(cs.space, tuple((p[0], p[1]) for p in cs.polygon))
                if _out_of_frame(cs.polygon, w, h):
                    self.err(
                        ("cameras", ci, "spaces", si, "polygon"),
                        f"polygon of {cs.space!r} leaves the {w}x{h} frame",
                    )
            agent = cam.agent or default_agent("camera", cam.id)
            bind_agent(agent, cam.id, ("cameras", ci, "agent"))
            cameras.append(Camera(cam.id, cam.ttl_s, (w, h), polys, agent))

        self.unique(m.displays, "id", "displays")
        for di, disp in enumerate(m.displays):
            if disp.level not in level_ids:
                self.err(("displays", di, "level"), f"level {disp.level!r} is not defined")
            if disp.entrance is not None and disp.entrance not in entrance_ids:
                self.err(("displays", di, "entrance"), f"entrance {disp.entrance!r} is not defined")
            for li, line in enumerate(disp.lines):
                for z in line.zones:
                    if z not in zone_ids:
                        self.err(
                            ("displays", di, "lines", li, "zones"), f"zone {z!r} does not exist"
                        )
                if line.vehicle_class is not None and line.vehicle_class not in class_ids:
                    self.err(
                        ("displays", di, "lines", li, "vehicle_class"),
                        f"vehicle class {line.vehicle_class!r} is not defined",
                    )

        sources: list[tuple[tuple[str, int], str, str]] = [
            *((("buses", i), b.id, b.agent) for i, b in enumerate(buses)),
            *((("cameras", i), c.id, c.agent) for i, c in enumerate(cameras)),
        ]
        by_source: dict[str, list[str]] = {}
        for sid, binding in bindings.items():
            by_source.setdefault(binding.source, []).append(sid)
        for where, source, agent in sources:
            ids = by_source.get(source, [])
            if not is_identifier(agent):  # a default one: serial-/camera- and a long id
                self.err(
                    (*where, "id"),
                    f"its agent's default id {_shown(agent)} is too long: {cfg.ID_RULE};"
                    " give the source a shorter id or its agent an id (agent:)",
                )
                continue
            if not all(is_identifier(s) for s in ids):
                continue  # the space ids are reported where the spaces are defined
            size = largest_snapshot_bytes(agent, source, ids)
            if size > MAX_PAYLOAD_BYTES:
                self.err(
                    where,
                    f"a snapshot of its {len(ids)} spaces can reach {size} bytes, over the "
                    f"wire contract's {MAX_PAYLOAD_BYTES} (the gateway would refuse every "
                    "one and keep them unknown): split it into smaller sources",
                )

        if self.problems:
            raise SiteError(self.problems)
        ordered = {s.id: bindings[s.id] for s in spaces if s.id in bindings}
        return Site(
            id=m.site.id,
            name=m.site.name,
            timezone=m.site.timezone,
            levels=tuple(m.levels),
            zones=tuple(m.zones),
            kinds=tuple(m.kinds),
            vehicle_classes=tuple(m.vehicle_classes),
            policies=tuple(policies),
            spaces=tuple(spaces),
            lane_nodes=tuple(nodes.values()),
            lane_edges=tuple(edges),
            entrances=tuple(m.entrances),
            buses=tuple(buses),
            cameras=tuple(cameras),
            displays=tuple(m.displays),
            display_settings=m.display_settings,
            bindings=ordered,
            space_index=index,
        )
