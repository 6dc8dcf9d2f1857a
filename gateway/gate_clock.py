"""Each entrance's clock offset, learned from its arrivals: how far the gate's clock runs
behind the gateway's, so that an arrival's age is judged by the gate's own clock. Pure
logic: the caller gives the clocks, journals what :meth:`GateClocks.to_save` returns and
logs what :meth:`GateClocks.age` says."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Collection

GATE_OFFSET_SAMPLES = 16  # live arrivals per entrance its clock offset is learned from
GATE_OFFSET_WINDOW_S = 600.0  # and only those of the last ten minutes
GATE_OFFSET_WARN_S = 60.0  # a gate clock this far off the gateway's is worth a technician
GATE_OFFSET_LOG_INTERVAL_S = 3600.0  # at most one warning about it per entrance per hour
GATE_OFFSET_SAVE_S = 60.0  # an entrance's offset is journaled again after this, or a move
GATE_STEP_S = 60.0
"""A live arrival this much older than its gate's offset says is late (as the arrival desk
judges, gateway.arrivals.ARRIVAL_MAX_AGE_S) ..."""
GATE_STEP_AGREE_S = 5.0
"""... and two in a row whose delays agree this closely, received at least
GATE_STEP_APART_S apart, say the gate's clock stepped back (a reboot with a flat clock
battery, an NTP step): its offset is learned anew from them. Apart: a gate's queue of
arrivals flushed after an outage comes all at once, and its delays agree as well."""
GATE_STEP_APART_S = 2 * GATE_STEP_AGREE_S


class GateClocks:
    """Per entrance, (monotonic receipt, receipt wall time - ts) of its recent live
    arrivals: the least of them is the gate's clock offset."""

    def __init__(self) -> None:
        self._delays: dict[str, deque[tuple[float, float]]] = {}
        self._saved: dict[str, tuple[float, float]] = {}  # entrance -> (offset, mono)
        self.unsaved = False  # an offset moved since it was journaled
        self._logged: dict[str, float] = {}  # entrance -> monotonic time of its warning
        # entrance -> (delay, monotonic receipt) of its last live, late arrival
        self._late: dict[str, tuple[float, float]] = {}
        self.warnings = 0  # warnings that a gate's clock is over a minute off

    def age(
        self, entrance: str, delay: float, mono: float, learn: bool
    ) -> tuple[float, str | None]:
        """(The arrival's age by its gate's clock, a warning to log or None). ``delay``:
        its receipt by the gateway's wall clock less its ``ts``; ``learn``: it is live
        (no backlog of the broker's), so its delay is mostly the gate's offset."""
        delays = self._delays.get(entrance)
        if delays is None:
            delays = self._delays[entrance] = deque(maxlen=GATE_OFFSET_SAMPLES)
        while delays and mono - delays[0][0] > GATE_OFFSET_WINDOW_S:
            delays.popleft()
        if learn:
            self._follow_step(entrance, delays, delay, mono)
            delays.append((mono, delay))
        if not delays:
            return delay, None
        offset = min(d for _, d in delays)
        saved = self._saved.get(entrance)
        if saved is None or abs(saved[0] - offset) > 1.0 or mono >= saved[1] + GATE_OFFSET_SAVE_S:
            self._saved[entrance] = (offset, mono)
            self.unsaved = True
        warning = None
        last = self._logged.get(entrance, -math.inf)
        if abs(offset) > GATE_OFFSET_WARN_S and mono >= last + GATE_OFFSET_LOG_INTERVAL_S:
            self._logged[entrance] = mono
            self.warnings += 1
            warning = (
                f"entrance {entrance}'s clock is {abs(offset):.0f} s "
                f"{'behind' if offset > 0 else 'ahead of'} the gateway's; holds follow "
                "the arrival time (have the gate's NTP fixed)"
            )
        # a gate ahead (offset below 0) never makes an arrival older: once its clock is
        # put right, its earlier samples would otherwise age every arrival by the step
        return delay - max(0.0, offset), warning

    def _follow_step(
        self, entrance: str, delays: deque[tuple[float, float]], delay: float, mono: float
    ) -> None:
        """Forget an entrance's samples when its last two live arrivals were both late by
        delays that agree, received apart: its clock stepped back, and its earlier samples,
        kept for ten minutes, would otherwise have every car given a space without a hold
        (and so the same space to the next car) until they ran out."""
        if not delays or delay - min(d for _, d in delays) <= GATE_STEP_S:
            self._late.pop(entrance, None)
            return
        last = self._late.get(entrance)
        if last is not None and mono - last[1] < GATE_STEP_APART_S:
            return  # a flushed queue's, not a car after a car: the first one stands
        self._late[entrance] = (delay, mono)
        if last is not None and abs(delay - last[0]) <= GATE_STEP_AGREE_S:
            delays.clear()  # this arrival, appended next, is the offset from here on

    def offset(self, entrance: str, mono: float) -> float | None:
        """How far the entrance's clock runs behind the gateway's (negative: ahead), as
        learned from its recent live arrivals; None while nothing is learned."""
        recent = [d for m, d in self._delays.get(entrance, ()) if mono - m <= GATE_OFFSET_WINDOW_S]
        return min(recent) if recent else None

    def to_save(self, wall: float, mono: float) -> str:
        """The offsets to journal, {entrance: [offset s, wall time learnt]} as JSON."""
        self.unsaved = False
        offsets = {
            entrance: [offset, wall - (mono - at)]
            for entrance, (offset, at) in self._saved.items()
            if mono - at <= GATE_OFFSET_WINDOW_S
        }
        return json.dumps(offsets, sort_keys=True)

    def restore(self, stored: str, entrances: Collection[str], wall: float, mono: float) -> None:
        """Offsets learnt within GATE_OFFSET_WINDOW_S before a restart count as one live
        arrival each. Raises ValueError when ``stored`` does not parse."""
        try:
            items = [(str(e), float(o), float(t)) for e, (o, t) in json.loads(stored).items()]
        except (TypeError, AttributeError) as exc:
            raise ValueError(str(exc)) from exc
        for entrance, offset, learnt in items:
            age = wall - learnt
            if entrance in entrances and 0.0 <= age <= GATE_OFFSET_WINDOW_S:
                self._delays[entrance] = deque([(mono - age, offset)], maxlen=GATE_OFFSET_SAMPLES)
                self._saved[entrance] = (offset, mono - age)
