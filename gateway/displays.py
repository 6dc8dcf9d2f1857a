"""Render guidance sign contents from the allocation core's line counts (pure).

A line shows its label, its arrow and the count of eligible free spaces in its
zones; ``满 FULL`` at zero, ``关闭 CLOSED`` (still status ``full``) when none of its
spaces is open now (a manager closed the zone, or its hours are over); ``--`` (fallback) when more than
``fallback_unknown_fraction`` of its zones' spaces is unknown, because a count
built on silence would lie to the driver, and at zero when more than
``full_unknown_fraction`` is: a zone partly blind is not known to be full.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parking.payloads import DisplayContent, DisplayLine, LocalText
from parking.site import Site

FULL_TEXT = LocalText(zh="满", en="FULL")
CLOSED_TEXT = LocalText(zh="关闭", en="CLOSED")
FALLBACK_TEXT = LocalText(zh="--", en="--")


@dataclass(frozen=True)
class LineLayout:
    """Where each display's lines sit in the core's flat line arrays (site order)."""

    displays: tuple[str, ...]
    first: tuple[int, ...]  # index of each display's first line
    line_display: np.ndarray  # int[L] display index of each line

    @classmethod
    def from_site(cls, site: Site) -> LineLayout:
        first: list[int] = []
        owner: list[int] = []
        for d, disp in enumerate(site.displays):
            first.append(len(owner))
            owner.extend([d] * len(disp.lines))
        return cls(
            tuple(d.id for d in site.displays), tuple(first), np.array(owner, dtype=np.int64)
        )


def blind(unknown: int, total: int, fallback_fraction: float) -> bool:
    """A count is not shown (``--``) when more than this share of what it counts is unknown,
    and always when all of it is (whatever the share: a fraction of 1 would otherwise show a
    blind car park as full); ``total`` excludes closed spaces."""
    return total > 0 and (unknown > fallback_fraction * total or unknown >= total)


def unsure_full(unknown: int, total: int, full_fraction: float | None) -> bool:
    """A count of zero is not shown as full (``--`` instead) when more than this share of
    what it counts is unknown: the unknown spaces may be free. None: no such rule."""
    return full_fraction is not None and total > 0 and unknown > full_fraction * total


def zone_offered(
    free: int,
    held: int,
    unknown: int,
    closed: int,
    total: int,
    fallback_fraction: float,
    full_fraction: float | None = None,
) -> int | None:
    """What a sign line over one whole zone would show: its free spaces not held for a car
    already sent there, or None (``--``) when it is blind (or unsure it is full)."""
    if blind(unknown, total - closed, fallback_fraction):
        return None
    offered = max(0, free - held)
    return None if offered == 0 and unsure_full(unknown, total - closed, full_fraction) else offered


def all_closed(total: int, capacity: int) -> bool:
    """No space the line may count is open now (``total``: those open to its class now and
    not closed; ``capacity``: those its class may use at some hour, closed or not): closed
    by a manager or outside its hours, its sign says closed, not full. A line with no space
    to count at any hour is full."""
    return total <= 0 < capacity


def render_line(
    label: LocalText,
    arrow: str,
    free: int,
    unknown: int,
    total: int,
    fallback_fraction: float,
    capacity: int = 0,
    full_fraction: float | None = None,
) -> DisplayLine:
    """One sign line from its counts; ``total`` excludes closed spaces, ``capacity`` counts
    them too. A closed line keeps status ``full`` (what sign controllers know) with the
    text ``关闭 CLOSED``."""
    if blind(unknown, total, fallback_fraction) or (
        free <= 0 and unsure_full(unknown, total, full_fraction)
    ):
        return DisplayLine(
            label=label, arrow=arrow, count=None, status="fallback", text=FALLBACK_TEXT
        )
    if free <= 0:
        text = CLOSED_TEXT if all_closed(total, capacity) else FULL_TEXT
        return DisplayLine(label=label, arrow=arrow, count=0, status="full", text=text)
    n = str(int(free))
    return DisplayLine(
        label=label, arrow=arrow, count=int(free), status="ok", text=LocalText(zh=n, en=n)
    )


def render_lines(
    site: Site,
    layout: LineLayout,
    display: int,
    line_free: Sequence[int] | np.ndarray,
    line_unknown: Sequence[int] | np.ndarray,
    line_total: Sequence[int] | np.ndarray,
    line_capacity: Sequence[int] | np.ndarray | None = None,
) -> list[DisplayLine]:
    """The lines of display number ``display`` (site order) from the core's flat arrays
    (without ``line_capacity`` no line reads CLOSED)."""
    disp = site.displays[display]
    fraction = site.display_settings.fallback_unknown_fraction
    full = site.display_settings.full_unknown_fraction
    base = layout.first[display]
    out = []
    for i, line in enumerate(disp.lines):
        j = base + i
        out.append(
            render_line(
                LocalText(zh=line.label.zh, en=line.label.en),
                line.arrow,
                int(line_free[j]),
                int(line_unknown[j]),
                int(line_total[j]),
                fraction,
                0 if line_capacity is None else int(line_capacity[j]),
                full,
            )
        )
    return out


def content(site: Site, display: int, lines: list[DisplayLine], ts: float) -> DisplayContent:
    """Wrap lines with their time and expiry (``ts + expires_s``)."""
    return DisplayContent(
        display=site.displays[display].id,
        lines=lines,
        ts=ts,
        expires=ts + site.display_settings.expires_s,
    )


@dataclass(frozen=True, eq=False)
class RenderedLine:
    """A rendered line and its JSON, made once per distinct value and shared (compare by identity)."""

    line: DisplayLine
    json: str


class SignRenderer:
    """Renders sign lines from the core's flat arrays, caching each distinct line.

    A line's content depends only on (line, status, count), so each is rendered and
    serialised once; a sign's payload is then assembled from cached JSON fragments.
    """

    MAX_CACHE = 200_000  # far above any real site's distinct lines; cleared if exceeded

    def __init__(self, site: Site):
        self.site = site
        self.layout = LineLayout.from_site(site)
        self.fraction = site.display_settings.fallback_unknown_fraction
        self.full_fraction = site.display_settings.full_unknown_fraction
        self.expires_s = site.display_settings.expires_s
        self._labels: list[tuple[LocalText, str]] = [
            (LocalText(zh=line.label.zh, en=line.label.en), line.arrow)
            for disp in site.displays
            for line in disp.lines
        ]
        self._ids = [json.dumps(d.id) for d in site.displays]
        self._cache: dict[tuple[int, int], RenderedLine] = {}

    def line(self, j: int, free: int, unknown: int, total: int, capacity: int = 0) -> RenderedLine:
        if blind(unknown, total, self.fraction) or (
            free <= 0 and unsure_full(unknown, total, self.full_fraction)
        ):
            key = (j, -1)
        elif all_closed(total, capacity):
            key = (j, -2)
        else:
            key = (j, max(free, 0))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self.MAX_CACHE:
                self._cache.clear()
            label, arrow = self._labels[j]
            line = render_line(
                label, arrow, free, unknown, total, self.fraction, capacity, self.full_fraction
            )
            hit = self._cache[key] = RenderedLine(line, line.model_dump_json())
        return hit

    def lines(
        self,
        display: int,
        free: np.ndarray | list[int],
        unknown: np.ndarray | list[int],
        total: np.ndarray | list[int],
        capacity: np.ndarray | list[int] | None = None,
    ) -> tuple[RenderedLine, ...]:
        """A display's lines from the core's flat per-line counts (arrays, or the same as
        lists when several displays are rendered at once; without ``capacity`` no line
        reads CLOSED)."""
        first = self.layout.first[display]
        n = len(self.site.displays[display].lines)
        f, u, t = free[first : first + n], unknown[first : first + n], total[first : first + n]
        if isinstance(f, np.ndarray):
            f, u, t = f.tolist(), u.tolist(), t.tolist()  # type: ignore[union-attr]
        c = [0] * n if capacity is None else capacity[first : first + n]
        if isinstance(c, np.ndarray):
            c = c.tolist()
        line = self.line
        return tuple(
            line(first + i, fi, ui, ti, ci)
            for i, (fi, ui, ti, ci) in enumerate(zip(f, u, t, c, strict=True))
        )

    def payload(self, display: int, lines: tuple[RenderedLine, ...], ts: float) -> bytes:
        """The DisplayContent JSON of a sign, assembled from the cached line fragments."""
        body = ",".join(r.json for r in lines)
        return (
            f'{{"display":{self._ids[display]},"lines":[{body}],'
            f'"ts":{ts!r},"expires":{ts + self.expires_s!r}}}'
        ).encode()

    def content(self, display: int, lines: tuple[RenderedLine, ...], ts: float) -> DisplayContent:
        return content(self.site, display, [r.line for r in lines], ts)
