"""How far behind its agents' reports the gateway is: a report's delay (receipt less its
``ts``) read when nothing else waited is the baseline (clock offset and transit); read from
a backlog, the excess over that baseline is the lag. Pure logic: the caller gives the
clocks and says what to log."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

LAG_FRESH_S = 5.0  # a lag says how far behind the gateway is while its agent keeps reporting
BEHIND_WARN_S = 10.0  # reports this far behind their agents' time: the operator is told
BEHIND_S = 2.0  # behind at all: gate clock offsets are not learned from such arrivals
BEHIND_LOG_INTERVAL_S = 60.0


@dataclass
class ReportLag:
    """Each agent's lag behind its reports, and when to say the gateway is behind."""

    lag: dict[str, float] = field(default_factory=dict)
    _at: dict[str, float] = field(default_factory=dict)  # agent -> monotonic time of its lag
    _baseline: dict[str, float] = field(default_factory=dict)
    _logged_at: float = -math.inf  # monotonic time of the last "behind" warning
    _said: bool = False

    def note(self, agent: str, delay: float, alone: bool, mono: float) -> None:
        """``delay``: receipt by the gateway's clock less the report's ``ts`` (the agent's);
        ``alone``: nothing else was waiting when it was read, so it sets the baseline. A
        clock step of the agent moves the baseline at its next report read alone."""
        base = self._baseline.get(agent)
        if alone or base is None:
            self._baseline[agent] = delay
            self.lag[agent] = 0.0
        else:
            self.lag[agent] = max(0.0, delay - base)
        self._at[agent] = mono

    def forget(self, agent: str) -> None:
        """An agent gone (its last will) or on a new boot: its last lag says nothing now."""
        self.lag.pop(agent, None)
        self._at.pop(agent, None)
        self._baseline.pop(agent, None)

    def current(self, mono: float) -> dict[str, float]:
        """Each agent's lag, 0 once it is older than LAG_FRESH_S (the agent stopped
        reporting: the gateway is not behind it)."""
        return {
            a: lag if mono - self._at.get(a, -math.inf) <= LAG_FRESH_S else 0.0
            for a, lag in self.lag.items()
        }

    def behind(self, mono: float) -> float:
        """How far the gateway is behind its agents' reports now (0: keeping up)."""
        return max(self.current(mono).values(), default=0.0)

    def to_say(self, mono: float) -> tuple[int, str] | None:
        """(logging level, message) to log now, or None: when reports queue up at the
        broker faster than the gateway handles them (the signs show the state of that long
        ago), at most once a BEHIND_LOG_INTERVAL_S, and once when it has caught up."""
        lags = self.current(mono)
        behind = max(lags.values(), default=0.0)
        if behind >= BEHIND_WARN_S and mono >= self._logged_at + BEHIND_LOG_INTERVAL_S:
            self._logged_at, self._said = mono, True
            agent = max(lags, key=lags.__getitem__)
            return logging.WARNING, (
                f"the gateway is {behind:.0f} s behind agent {agent}'s reports: they queued at"
                " the broker while it could not take them (it was paused, starved of CPU, or"
                " handles them slower than they come); signs and arrivals wait as long, and at"
                " the broker's queue limits it drops the newest"
            )
        if self._said and behind < BEHIND_S:
            self._said, self._logged_at = False, -math.inf
            return logging.INFO, "the gateway has caught up with its agents' reports"
        return None
