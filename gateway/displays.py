"""Render guidance sign contents from the allocation core's line counts (pure).

A line shows its label, its arrow and the count of eligible free spaces in its
zones; ``满 FULL`` at zero; ``--`` (fallback) when more than
``fallback_unknown_fraction`` of its zones' spaces is unknown, because a count
built on silence would lie to the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parking.payloads import DisplayContent, DisplayLine, LocalText
from parking.site import Site

FULL_TEXT = LocalText(zh="满", en="FULL")
FALLBACK_TEXT = LocalText(zh="--", en="--")


@dataclass(frozen=True)
class LineLayout:
    """Where each display's lines sit in the core's flat line arrays (site order)."""

    displays: tuple[str, ...]
    first: tuple[int, ...]  # index of each display's first line
    line_display: np.ndarray  # int[L] display index of each line

    @classmethod
    def from_site(cls, site: Site) -> LineLayout:
        first, owner = [], []
        for d, disp in enumerate(site.displays):
            first.append(len(owner))
            owner.extend([d] * len(disp.lines))
        return cls(
            tuple(d.id for d in site.displays), tuple(first), np.array(owner, dtype=np.int64)
        )

    def displays_of(self, lines: np.ndarray) -> list[int]:
        """Indices of the displays owning the given line indices."""
        return sorted(set(self.line_display[lines].tolist()))


def render_line(
    label: LocalText, arrow: str, free: int, unknown: int, total: int, fallback_fraction: float
) -> DisplayLine:
    """One sign line from its counts; ``total`` excludes closed spaces."""
    if total > 0 and unknown > fallback_fraction * total:
        return DisplayLine(
            label=label, arrow=arrow, count=None, status="fallback", text=FALLBACK_TEXT
        )
    if free <= 0:
        return DisplayLine(label=label, arrow=arrow, count=0, status="full", text=FULL_TEXT)
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
) -> list[DisplayLine]:
    """The lines of display number ``display`` (site order) from the core's flat arrays."""
    disp = site.displays[display]
    fraction = site.display_settings.fallback_unknown_fraction
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
