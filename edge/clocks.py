"""Wall-clock steps, seen against the monotonic clock (the edge agents' time-keeping).

An edge box without a real-time clock (a Raspberry Pi) boots with its wall clock where
it stopped, and NTP steps it once it synchronises, often after the agents started.
The agents time everything on the monotonic clock (debounce, smoothing, timeouts) and
use the wall clock only for what goes on the wire: a report's ``ts`` (stamped by the
clock when the report is built, so right from the step on) and each observation's
``since``, which is kept from when the state began. :class:`ClockWatch` compares the two
clocks at every poll: when ``wall - monotonic`` moves by more than ``STEP_THRESHOLD_S``
between two polls, the wall clock was stepped, and the agent corrects the wall times
it keeps, then asks for a snapshot, so that every space carries its corrected time at
once.

- **Forward** (the usual case: the box started behind): every ``since`` moves with the
  step. Stamped by the clock as it read before, they are older than what the gateway
  knows from the agent's previous run, and it would refuse them (``older_than_known``)
  until each space changed; on the corrected clock they are accepted. A ``since`` never
  moves past the clock as it now reads (:func:`moved_forward`): one an earlier backward
  step left ahead of the clock would otherwise land in the future.
- **Backward** (a clock that ran ahead, corrected): a ``since`` more than the gateway's
  future tolerance (``FUTURE_TOLERANCE_S``, five minutes) ahead of the clock now reads
  was refused there and is brought back to it (left, a brief step forward and back
  would keep every space refused as ``from_the_future``); a nearer one was taken and
  stays (moved back, the gateway would refuse it as older than what it knows). A state
  that begins from then on is stamped by the clock as it now reads, but never before
  its space's previous state: the gateway's rule that an observation older than what it
  knows is refused holds, and the space stays known. Timers kept in wall time (the
  camera's smoothing) move with the step either way.

Reports already in the spool keep the times they were stamped with: they are history,
and the gateway judges them as such (the snapshot sent after the step corrects the state).

A suspended box (monotonic time stops, the wall clock does not) looks like a forward
step: the ``since`` of a state from before the suspension moves by its length. Edge
boxes do not suspend; the time then is later than true, which the gateway accepts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)

STEP_THRESHOLD_S = 2.0
"""``wall - monotonic`` moving by more than this between two polls is a step of the wall
clock (slewing moves both clocks alike; reading the two clocks a moment apart never
comes near this)"""


Since = TypeVar("Since", float, np.ndarray)


def moved_forward(since: Since, step: float, now: float) -> Since:
    """Kept ``since`` times after a forward step of ``step`` s, ``now`` the clock as it
    reads after it: moved with the step, but never past ``now`` (a since that a backward
    step before left ahead of the clock, moved too, would be in the future) and never
    back (the gateway took it as it was)."""
    moved = np.maximum(since, np.minimum(since + step, now))
    return float(moved) if isinstance(since, float) else moved


class ClockWatch:
    """The offset of the wall clock from the monotonic one, and its steps.

    ``check()`` at every poll; ``to_wall(mono)`` converts a monotonic time with the
    offset of the last check."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        name: str = "agent",
    ):
        self._wall = wall
        self._clock = clock
        self.name = name
        self.last_wall = wall()
        """the wall clock as read at the last check"""
        self.offset = self.last_wall - clock()
        """wall minus monotonic, as of the last check"""
        self.steps = 0
        """steps seen so far"""

    def check(self, wall: float | None = None, mono: float | None = None) -> float:
        """Read both clocks (or take a pair read together); returns the step of the wall
        clock since the last check, in seconds (0.0: none), and logs one line for it."""
        wall = self._wall() if wall is None else wall
        mono = self._clock() if mono is None else mono
        offset = wall - mono
        step = offset - self.offset
        self.offset = offset
        self.last_wall = wall
        if abs(step) <= STEP_THRESHOLD_S:
            return 0.0
        self.steps += 1
        if step > 0:
            log.warning(
                "%s: the wall clock stepped forward by %.1f s (NTP synchronised?): the "
                "times of its observations move with it; a snapshot follows",
                self.name,
                step,
            )
        else:
            log.warning(
                "%s: the wall clock stepped back by %.1f s: times of its observations later "
                "than the clock now reads are brought back to it; a snapshot follows",
                self.name,
                -step,
            )
        return step

    def to_wall(self, mono: float) -> float:
        """A monotonic time as wall time, by the offset of the last check."""
        return mono + self.offset
