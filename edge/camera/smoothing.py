"""Temporal smoothing of per-frame space decisions (pure, numpy).

A camera decides every space on every frame; a person walking through a bay,
a passing car's shadow or one odd frame must not flip a space. The rule:

- A **confident** decision (confidence >= ``min_confidence``) that differs from
  the reported state becomes a *candidate*; the space changes only once the
  candidate has held, uninterrupted by a confident contrary decision, for
  ``hold_s`` seconds. The reported ``since`` is when the candidate began
  (when the car really arrived, not when we became sure).
- A **low-confidence** decision is no evidence either way: the space keeps
  its last reported state; it neither cancels a pending candidate nor
  settles it (only a confident decision, ``hold_s`` after the candidate
  began, does). If a space has had no confident decision for
  ``uncertain_s`` seconds it turns ``unknown`` (silence is never ``free``).
- ``blind(now)`` (black/frozen/covered frame, stream lost) makes every space
  ``unknown`` at once and drops all candidates, so after recovery each space
  needs ``hold_s`` of confident decisions again before it is reported.
- A fresh smoother reports every space ``unknown`` until decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.clocks import moved_forward
from parking.payloads import FUTURE_TOLERANCE_S
from parking.states import SpaceState

UNKNOWN = int(SpaceState.UNKNOWN)
FREE = int(SpaceState.FREE)
OCCUPIED = int(SpaceState.OCCUPIED)
NO_CANDIDATE = -1


@dataclass(frozen=True)
class SmoothingSettings:
    hold_s: float = 2.0
    """a new decision must hold this long before the space changes"""
    min_confidence: float = 0.65
    """decisions below this confidence are ignored (hold the last state)"""
    uncertain_s: float = 30.0
    """no confident decision for this long -> unknown"""


@dataclass(frozen=True)
class SpaceChange:
    """One reported transition: index into the camera's spaces, new state code, since."""

    index: int
    state: SpaceState
    since: float


class OccupancySmoother:
    """Smoothed states of the N spaces of one camera.

    Times are seconds on one clock (wall time: ``since`` goes on the wire); when that
    clock is stepped, :meth:`clock_stepped` moves what is kept with it.
    """

    def __init__(self, count: int, settings: SmoothingSettings | None = None, now: float = 0.0):
        self.settings = settings or SmoothingSettings()
        self.count = count
        self.state = np.full(count, UNKNOWN, dtype=np.int8)
        self.since = np.full(count, now, dtype=np.float64)
        self.candidate = np.full(count, NO_CANDIDATE, dtype=np.int8)
        self.candidate_since = np.zeros(count, dtype=np.float64)
        self.last_confident = np.full(count, now, dtype=np.float64)
        self.confidence = np.zeros(count, dtype=np.float64)
        """last per-frame confidence (0 while blind), for health reports"""
        self.decision = np.full(count, UNKNOWN, dtype=np.int8)
        """last per-frame decision (FREE or OCCUPIED; UNKNOWN while blind)"""

    def update(self, occupied: np.ndarray, confidence: np.ndarray, now: float) -> list[SpaceChange]:
        """Feed one frame's decisions; returns the spaces whose reported state changed."""
        occupied = np.asarray(occupied, dtype=bool)
        confidence = np.asarray(confidence, dtype=np.float64)
        if occupied.shape != (self.count,) or confidence.shape != (self.count,):
            raise ValueError(
                f"expected {self.count} decisions, got {occupied.shape} / {confidence.shape}"
            )
        s = self.settings
        self.confidence = confidence.copy()
        confident = confidence >= s.min_confidence
        decision = np.where(occupied, OCCUPIED, FREE).astype(np.int8)
        self.decision = decision
        self.last_confident[confident] = now

        agrees = confident & (decision == self.state)
        self.candidate[agrees] = NO_CANDIDATE

        differs = confident & (decision != self.state)
        fresh = differs & (self.candidate != decision)
        self.candidate[fresh] = decision[fresh]
        self.candidate_since[fresh] = now

        settled = differs & (now - self.candidate_since >= s.hold_s)
        self.state[settled] = decision[settled]
        # never before the previous state's since (a clock stepped back, ``edge.clocks``):
        # the gateway refuses an older one as older than known
        self.since[settled] = _after(self.candidate_since[settled], self.since[settled])
        self.candidate[settled] = NO_CANDIDATE
        changes = [
            SpaceChange(int(i), SpaceState(int(decision[i])), float(self.since[i]))
            for i in np.flatnonzero(settled)
        ]

        changes.extend(self._expire(now))
        return changes

    def _expire(self, now: float) -> list[SpaceChange]:
        stale = (now - self.last_confident >= self.settings.uncertain_s) & (self.state != UNKNOWN)
        return self._set_unknown(stale, now)

    def tick(self, now: float) -> list[SpaceChange]:
        """Advance time without a frame (only the uncertainty timeout can fire)."""
        return self._expire(now)

    def blind(self, now: float, spaces: np.ndarray | None = None) -> list[SpaceChange]:
        """The camera cannot see (``spaces``: a boolean mask, only those): unknown now,
        pending candidates dropped."""
        mask = np.ones(self.count, dtype=bool) if spaces is None else np.asarray(spaces, bool)
        self.candidate[mask] = NO_CANDIDATE
        self.confidence[mask] = 0.0
        self.decision[mask] = UNKNOWN
        self.last_confident[mask] = now
        return self._set_unknown(mask & (self.state != UNKNOWN), now)

    def _set_unknown(self, mask: np.ndarray, now: float) -> list[SpaceChange]:
        idx = np.flatnonzero(mask)
        self.state[idx] = UNKNOWN
        self.since[idx] = _after(np.full(len(idx), now), self.since[idx])
        self.candidate[idx] = NO_CANDIDATE
        return [SpaceChange(int(i), SpaceState.UNKNOWN, float(self.since[i])) for i in idx]

    def clock_stepped(self, step: float, move_since: bool = True, now: float | None = None) -> None:
        """The clock was stepped by ``step`` seconds: the timers (candidates' hold, the
        uncertainty timeout) move with it, so a step neither settles a candidate nor
        expires a space; so do the states' ``since`` unless ``move_since`` is False (times
        already reported, ``edge.clocks``). With ``now`` (the clock as it reads after the
        step), a ``since`` moved never passes it (``edge.clocks.moved_forward``), and one
        beyond the gateway's future tolerance of it is brought back to it (refused there,
        it was never true)."""
        self.candidate_since += step
        self.last_confident += step
        if move_since:
            self.since = self.since + step if now is None else moved_forward(self.since, step, now)
        if now is not None:
            # beyond the gateway's tolerance it was refused: brought back to the clock now;
            # a nearer one was taken and stays (moved back, it would be older than known)
            self.since[self.since > now + FUTURE_TOLERANCE_S] = now

    def confidence_in_state(self) -> np.ndarray:
        """How far the last frame backs each reported state: its confidence where it
        decided the same, one minus it where it decided otherwise (a car leaving while
        the hold runs), 0 for unknown."""
        agree = self.decision == self.state
        conf = np.where(agree, self.confidence, 1.0 - self.confidence)
        return np.where((self.state == UNKNOWN) | (self.decision == UNKNOWN), 0.0, conf)

    def states(self) -> list[SpaceState]:
        return [SpaceState(int(v)) for v in self.state]


def _after(since: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``since``, but never before ``previous`` (the state it follows began then)."""
    return np.maximum(since, previous)
