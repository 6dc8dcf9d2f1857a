"""What the parts of the gateway's engine (``gateway.live`` and its ``live_*`` mixins) share:
a change with who made it, a sign's new content, and the pace of a warning. They live here,
not in ``gateway.live``, so that the parts need not import the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.displays import RenderedLine
from gateway.state import Changes

GAP_LOG_INTERVAL_S = 60.0  # at most one warning about missed reports per agent per minute


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
