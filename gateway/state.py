"""Live space state as numpy arrays indexed by space (pure: times are passed in).

Two layers: ``sensed`` is what the sources say (or ``unknown`` when they are
silent), ``closed`` is the manager's closure; the public ``state`` is CLOSED
where closed, else sensed. Every mutation returns the public :class:`Changes`
so the caller can journal them before publishing anything derived.

Times: wall time (UNIX seconds) for what is shown and journaled (``since``,
``last_seen``); monotonic time for TTL expiry (``seen_mono``), so a wall-clock
step does not expire or revive spaces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from parking.site import Site
from parking.states import SpaceState

UNKNOWN, FREE, OCCUPIED, CLOSED = (int(s) for s in SpaceState)
N_STATES = len(SpaceState)
# changes up to which per-item Python beats numpy's scatter calls (the same at 50 changes
# on a warm CPU, 30 % cheaper after a 5 ms pause: each numpy call pays the cold start)
SMALL = 64


@dataclass(frozen=True)
class Changes:
    """Public state changes: aligned arrays of space index, old and new state codes.

    ``touched`` lists every space whose stored row changed (public state, the sensed
    state under a closure, or for an observation its time and when it was heard), for the
    journal's current-state table.
    """

    spaces: np.ndarray
    old: np.ndarray
    new: np.ndarray
    touched: np.ndarray
    zones: np.ndarray  # zone indices whose counts changed

    def __len__(self) -> int:
        return len(self.spaces)


_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_S = np.zeros(0, dtype=np.int8)
NO_CHANGES = Changes(_EMPTY_I, _EMPTY_S, _EMPTY_S, _EMPTY_I, _EMPTY_I)


class _Views:
    """Flat memoryviews of a LiveState's arrays: item access without numpy's call overhead.
    They share the arrays' memory; made again whenever an array is replaced (``_recount``)."""

    # ndarray.data is the array's own memoryview; typed Any: an item is an int, a bool or
    # a float as the array's dtype says, where typeshed's memoryview only knows int items
    def __init__(self, st: LiveState):
        self.sensed: Any = st.sensed.data
        self.state: Any = st.state.data
        self.closed: Any = st.closed.data
        self.since: Any = st.since.data
        self.obs_since: Any = st.obs_since.data
        self.last_seen: Any = st.last_seen.data
        self.seen_mono: Any = st.seen_mono.data
        self.agent: Any = st.agent.data
        self.zone: Any = st.zone.data
        self.zone_counts: Any = st.zone_counts.data.cast("B").cast("q")  # [z * 4 + s]


class LiveState:
    """State, last change, last seen and source per space; zone counts kept incrementally."""

    def __init__(self, site: Site):
        self.site = site
        n = len(site.spaces)
        self.space_ids = tuple(s.id for s in site.spaces)
        self.zone_ids = tuple(z.id for z in site.zones)
        zone_index = {z: i for i, z in enumerate(self.zone_ids)}
        self.zone = np.array([zone_index[s.zone] for s in site.spaces], dtype=np.int64)
        self.sources = tuple([b.id for b in site.buses] + [c.id for c in site.cameras])
        source_index = {s: i for i, s in enumerate(self.sources)}
        self.bound_source = np.array(
            [
                source_index[site.bindings[s.id].source] if s.id in site.bindings else -1
                for s in site.spaces
            ],
            dtype=np.int64,
        )
        ttl = [site.source_ttl(src) for src in self.sources]
        self.ttl = np.array(
            [ttl[i] if i >= 0 else np.inf for i in self.bound_source.tolist()], dtype=np.float64
        )
        self.sensed = np.full(n, UNKNOWN, dtype=np.int8)
        self.closed = np.array([s.closed for s in site.spaces], dtype=bool)
        self.state = np.where(self.closed, CLOSED, self.sensed).astype(np.int8)
        self.since = np.zeros(n, dtype=np.float64)  # wall time the public state began
        self.obs_since = np.zeros(n, dtype=np.float64)  # since of the last accepted observation
        self.last_seen = np.zeros(n, dtype=np.float64)  # wall time; 0 = never
        self.seen_mono = np.full(n, -np.inf, dtype=np.float64)
        self.agents: list[str] = []  # agent index -> id
        self._agent_index: dict[str, int] = {}
        self.agent = np.full(n, -1, dtype=np.int64)  # agent that last reported the space
        self.zone_counts = np.zeros((len(self.zone_ids), N_STATES), dtype=np.int64)
        self._recount()

    # -- bookkeeping -------------------------------------------------------------------------
    def _recount(self) -> None:
        z = len(self.zone_ids)
        flat = np.bincount(self.zone * N_STATES + self.state, minlength=z * N_STATES)
        self.zone_counts = flat.reshape(z, N_STATES).astype(np.int64)
        self._views = _Views(self)

    def agent_index(self, agent: str) -> int:
        i = self._agent_index.get(agent)
        if i is None:
            i = self._agent_index[agent] = len(self.agents)
            self.agents.append(agent)
        return i

    def agent_of(self, space: int) -> str | None:
        a = int(self.agent[space])
        return self.agents[a] if a >= 0 else None

    def _set_sensed(self, idx: np.ndarray, values: np.ndarray, wall: float) -> Changes:
        """Write sensed states for ``idx`` and derive the public changes."""
        if len(idx) == 0:
            return NO_CHANGES
        before_sensed = self.sensed[idx]
        old = self.state[idx]
        self.sensed[idx] = values
        new = np.where(self.closed[idx], np.int8(CLOSED), values).astype(np.int8)
        return self._publicize(idx, old, new, before_sensed != values, wall)

    def _publicize(
        self,
        idx: np.ndarray,
        old: np.ndarray,
        new: np.ndarray,
        sensed_moved: np.ndarray,
        wall: float,
    ) -> Changes:
        changed = old != new
        touched = idx[changed | sensed_moved]
        if not changed.any():
            return Changes(_EMPTY_I, _EMPTY_S, _EMPTY_S, touched, _EMPTY_I)
        sp, o, nw = idx[changed], old[changed], new[changed]
        self.state[sp] = nw
        self.since[sp] = wall
        zones = self.zone[sp]
        zc = self.zone_counts
        if len(sp) <= SMALL:  # a plain loop beats ufunc.at and unique on a few items
            zl = zones.tolist()
            for z, a, b in zip(zl, o.tolist(), nw.tolist(), strict=True):
                zc[z, a] -= 1
                zc[z, b] += 1
            moved = np.array(sorted(set(zl)), dtype=np.int64)
        else:
            np.subtract.at(zc, (zones, o), 1)
            np.add.at(zc, (zones, nw), 1)
            moved = np.unique(zones)
        return Changes(sp, o, nw, touched, moved)

    @property
    def views(self) -> _Views:
        """The arrays as memoryviews, for item-by-item reads without numpy's per-call cost."""
        return self._views

    # -- mutations ---------------------------------------------------------------------------
    def observe(
        self,
        spaces: np.ndarray,
        states: np.ndarray,
        since: np.ndarray,
        agent: str,
        wall: float,
        mono: float,
    ) -> Changes:
        """Apply accepted observations of one report (spaces unique).

        An observation's ``since`` is kept no later than ``wall``, when the gateway took
        it: a clock running ahead (within the gateway's tolerance) stamps times the
        gateway has not reached, and kept as they were, they outlived that clock. Its
        next run, on a corrected clock, was refused as older than known (whole, as a
        stale boot, then space by space) for as long as it had been ahead, and a space
        until it changed again."""
        a = self.agent_index(agent)
        if len(spaces) <= SMALL:
            return self._observe_few(
                spaces.tolist(), states.tolist(), since.tolist(), a, wall, mono
            )
        since = np.minimum(since, wall)
        # rows whose observation time or agent moved: a restart must remember them, or
        # an older observation would pass the check afterwards. A snapshot repeating what
        # is known moves neither (last_seen is the agent's, journaled with each report),
        # so a quiet site does not rewrite every row it hears of at each checkpoint
        moved = (
            (self.obs_since[spaces] != since)
            | (self.agent[spaces] != a)
            | (self.sensed[spaces] != states)  # a state change is a sensed one too
        )
        self.obs_since[spaces] = since
        self.last_seen[spaces] = wall
        self.seen_mono[spaces] = mono
        self.agent[spaces] = a
        return dataclasses.replace(self._set_sensed(spaces, states, wall), touched=spaces[moved])

    def _observe_few(
        self,
        spaces: list[int],
        states: list[int],
        since: list[float],
        a: int,
        wall: float,
        mono: float,
    ) -> Changes:
        """:meth:`observe` for a few observations: the same writes, item by item through
        memoryviews of the same arrays (a numpy call costs more than the item's work, most
        of all on a cold CPU, which is how a gateway meets a report after a quiet spell)."""
        v = self._views
        sensed, state, zc = v.sensed, v.state, v.zone_counts
        out_sp: list[int] = []
        out_old: list[int] = []
        out_new: list[int] = []
        touched: list[int] = []  # rows that moved for a restart (see observe)
        zones: set[int] = set()
        for sp, st, t in zip(spaces, states, since, strict=True):
            t = min(t, wall)
            if v.obs_since[sp] != t or v.agent[sp] != a or sensed[sp] != st:
                touched.append(sp)
            v.obs_since[sp] = t
            v.last_seen[sp] = wall
            v.seen_mono[sp] = mono
            v.agent[sp] = a
            sensed[sp] = st
            old = state[sp]
            new = CLOSED if v.closed[sp] else st
            if old != new:
                state[sp] = new
                v.since[sp] = wall
                z = v.zone[sp]
                zc[z * N_STATES + old] -= 1
                zc[z * N_STATES + new] += 1
                zones.add(z)
                out_sp.append(sp)
                out_old.append(old)
                out_new.append(new)
        touched_a = np.array(touched, dtype=np.int64) if touched else _EMPTY_I
        if not out_sp:
            return Changes(_EMPTY_I, _EMPTY_S, _EMPTY_S, touched_a, _EMPTY_I)
        return Changes(
            np.array(out_sp, dtype=np.int64),
            np.array(out_old, dtype=np.int8),
            np.array(out_new, dtype=np.int8),
            touched_a,
            np.array(sorted(zones), dtype=np.int64),
        )

    def touch(self, spaces: np.ndarray, wall: float, mono: float) -> None:
        """Mark spaces as heard from (a report without a gap vouches for its source's spaces)."""
        self.last_seen[spaces] = wall
        self.seen_mono[spaces] = mono

    def stale(self, mono: float) -> np.ndarray:
        """Spaces not heard from within their source's TTL and not unknown yet."""
        return np.flatnonzero((self.sensed != UNKNOWN) & (mono - self.seen_mono > self.ttl))

    def expire(self, wall: float, mono: float, spaces: np.ndarray | None = None) -> Changes:
        """Spaces not heard from within their source's TTL become unknown (``spaces``:
        only those of :meth:`stale`'s that the caller chose)."""
        stale = self.stale(mono) if spaces is None else spaces
        return self._set_sensed(stale, np.full(len(stale), UNKNOWN, dtype=np.int8), wall)

    def agent_offline(self, agent: str, wall: float) -> Changes:
        """An agent's last will: every space it reported becomes unknown."""
        a = self._agent_index.get(agent)
        if a is None:
            return NO_CHANGES
        lost = np.flatnonzero((self.agent == a) & (self.sensed != UNKNOWN))
        return self._set_sensed(lost, np.full(len(lost), UNKNOWN, dtype=np.int8), wall)

    def control(self, space: int, close: bool, wall: float) -> Changes:
        """A manager closes or opens a space; opening shows what the sensor says."""
        return self.control_many(np.array([space], dtype=np.int64), close, wall)

    def control_many(self, idx: np.ndarray, close: bool, wall: float) -> Changes:
        """A manager closes or opens several spaces at once (a zone)."""
        was = self.closed[idx].copy()
        self.closed[idx] = close
        old = self.state[idx]
        new = np.full(len(idx), CLOSED, dtype=np.int8) if close else self.sensed[idx]
        return self._publicize(idx, old, new.astype(np.int8), was != close, wall)

    # -- resume ------------------------------------------------------------------------------
    def restore(
        self,
        space: int,
        sensed: int,
        closed: bool,
        since: float,
        obs_since: float,
        last_seen: float,
        agent: str | None,
        wall: float,
        mono: float,
    ) -> None:
        """Load one space from the journal; call :meth:`finish_restore` after the last."""
        self.sensed[space] = sensed
        self.closed[space] = closed
        self.state[space] = CLOSED if closed else sensed
        self.since[space] = since
        self.obs_since[space] = min(obs_since, wall)  # kept so since (see observe)
        self.last_seen[space] = last_seen
        # silence before the restart still counts against the TTL
        self.seen_mono[space] = mono - max(0.0, wall - last_seen) if last_seen > 0 else -np.inf
        self.agent[space] = self.agent_index(agent) if agent else -1

    def finish_restore(self) -> None:
        self._recount()

    # -- views -------------------------------------------------------------------------------
    def zone_row(self, z: int) -> dict[str, int]:
        c = self.zone_counts[z]
        return {
            "free": int(c[FREE]),
            "occupied": int(c[OCCUPIED]),
            "unknown": int(c[UNKNOWN]),
            "closed": int(c[CLOSED]),
            "total": int(c.sum()),
        }
