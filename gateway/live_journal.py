"""What the gateway's engine writes to its journal: the change rows committed before anything
is published, the quiet reports held back, and the checkpoint written when idle. A part of
:class:`gateway.live.LiveGateway`, apart because what reaches the disk and when (an edge
box's SD card) is a concern of its own, whichever message made the change.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from gateway.journal import CLEAN_STOP_KEY
from gateway.live_types import _Segment, _Sign
from parking.states import STATE_NAMES

EXPAND_STEP_ROWS = 2  # pending change rows (reports) expanded per checkpoint step
QUIET_JOURNAL_S = 30.0
"""An agent's reports that change nothing (a quiet site's snapshots, every few seconds) move
its seq and last_seen in the journal at most this often; the newest waits in memory
meanwhile and a clean stop writes it. Each commit cost a WAL write, a WAL checkpoint and
three fsyncs: ~555 MB a day of writes on an edge box's SD card for a site where nothing
changed. A crash loses at most this much of a quiet agent's last_seen and seq: its spaces
then turn unknown up to this much sooner after the restart (never free), and a replay of
those reports changes nothing (docs/architecture.md, "A report that changes nothing")."""


class LiveJournaling:
    """A part of LiveGateway, sharing its state and lock: what it writes to its journal."""

    def journal_clean_stop(self) -> None:
        """At a clean stop: every agent's newest quiet report journaled, and the journal told
        so (CLEAN_STOP_KEY), so that the next start blames no gap in their seqs on a crash."""
        self.journal_quiet(force=True)
        with self.journal.transaction():
            self.journal.set_meta(CLEAN_STOP_KEY, repr(self._clock()))  # where downtime begins

    def _note_quiet(self, segments: list[_Segment]) -> list[_Segment]:
        """Quiet reports: journal an agent's seq and last_seen when its last quiet one was
        journaled QUIET_JOURNAL_S ago (or never, or under another boot), else keep it in
        memory for :meth:`journal_quiet`. Returns the segments to journal as change rows."""
        mono = self._mono()
        due = []
        for g in segments:
            assert g.agent is not None and g.boot is not None and g.seq is not None
            noted = self._quiet_noted.get(g.agent)
            if noted is not None and noted[0] == g.boot and mono < noted[1] + QUIET_JOURNAL_S:
                self._quiet_held[g.agent] = (g.boot, g.seq, g.ts)
            else:
                due.append(g)
        if not due:
            return []
        left = self.journal.note_quiet_reports(due, [(g.agent, g.boot, g.seq, g.ts) for g in due])
        self._alive_wall = max(self._alive_wall, max(g.ts for g in due))  # their last_seen
        for g in due:
            assert g.agent is not None and g.boot is not None
            self._quiet_held.pop(g.agent, None)  # this one is newer
            if all(g is not x for x in left):
                self._quiet_noted[g.agent] = (g.boot, mono)
        return left

    def journal_quiet(self, force: bool = False) -> None:
        """Journal the held quiet reports whose agent's last one was journaled
        QUIET_JOURNAL_S ago (``force``: all of them, at a clean stop), in one transaction.
        One whose row has moved on meanwhile (a newer seq or boot journaled by a report
        that changed something) is dropped: the journal already has better."""
        if not self._quiet_held:
            return
        mono = self._mono()
        due = [
            (agent, held)
            for agent, held in self._quiet_held.items()
            if force or mono >= self._quiet_noted[agent][1] + QUIET_JOURNAL_S
        ]
        if not due:
            return
        self.journal.note_quiet_reports(due, [(agent, *held) for agent, held in due])
        self._alive_wall = max(self._alive_wall, max(ts for _, (_b, _s, ts) in due))
        for agent, (boot, _seq, _ts) in due:
            del self._quiet_held[agent]
            self._quiet_noted[agent] = (boot, mono)

    def _journal(
        self,
        segments: list[_Segment],
        now: float,
        agent_state: tuple[str, bool] | None,
        meta: tuple[str, str] | None = None,
    ) -> None:
        """The commit that must precede publishing: one packed row of changes per report (its
        sequence with it, even without changes) or verdict, an agent's availability, and a
        meta key that must move with the changes (the zone closures)."""
        st = self.state
        ids, names = st.space_ids, STATE_NAMES
        self._alive_wall = now  # a sign of life (down_since): no ALIVE_KEY needed meanwhile
        rows = []
        for g in segments:
            ch = g.changes
            spaces = ch.spaces.tolist()
            if (g.note is not None or g.closure is not None or g.again) and (spaces or g.again):
                # a manager's, with the reason (and the zone closure) for the audit
                items = [
                    [ids[x], names[o], names[n], None, g.note, g.closure]
                    for x, o, n in zip(spaces, ch.old.tolist(), ch.new.tolist(), strict=True)
                ]
                for x in g.again:
                    here = names[int(st.state[x])]
                    items.append([ids[x], here, here, None, g.note, g.closure])
                changes = json.dumps(items, ensure_ascii=False)
            elif g.source is None and spaces:  # the gateway's verdict: each space's source
                cols = [
                    [ids[x] for x in spaces],
                    [names[x] for x in ch.old.tolist()],
                    [names[x] for x in ch.new.tolist()],
                    [st.sources[i] if i >= 0 else None for i in st.bound_source[spaces].tolist()],
                ]
                changes = json.dumps(list(zip(*cols, strict=True)))
            else:
                # a report's: the JSON joined from strings quoted once (a third of
                # json.dumps' time, and a quarter after a quiet spell)
                sj, nj = self._space_json, self._state_json
                changes = (
                    "["
                    + ",".join(
                        [
                            f"[{sj[x]},{nj[o]},{nj[n]}]"
                            for x, o, n in zip(
                                spaces, ch.old.tolist(), ch.new.tolist(), strict=True
                            )
                        ]
                    )
                    + "]"
                )
            rows.append((g.ts, g.source, g.agent, g.boot, g.seq, changes))
        self._unexpanded = self._unexpanded or bool(rows)
        if len(rows) == 1 and agent_state is None and meta is None:
            self.journal.add_changes(*rows[0])  # one statement: its own transaction
            return
        with self.journal.transaction():
            for row in rows:
                self.journal.add_changes(*row)
            if meta is not None:
                self.journal.set_meta(*meta)
            if agent_state is not None:
                self.journal.put_agent(agent_state[0], None, None, agent_state[1], now)

    def _note_checkpoint(self, segments: list[_Segment], signs: list[_Sign]) -> None:
        """Remember what the next checkpoint writes: rows that moved, signs, history points."""
        if self._dirty_since is None:
            self._dirty_since = self._mono()
        for g in segments:
            if len(g.changes.touched):
                self._dirty[g.changes.touched] = True
        for sign in signs:
            self._dirty_signs[sign.display] = sign
        if self.history is None:
            return
        st = self.state
        ids, names, zone_ids = st.space_ids, STATE_NAMES, st.zone_ids
        for g in segments:
            sp = g.changes.spaces.tolist()
            if sp:
                self._dirty_history.extend(
                    zip(
                        [zone_ids[z] for z in st.zone[sp].tolist()],
                        [ids[x] for x in sp],
                        [names[x] for x in g.changes.new.tolist()],
                        [g.ts] * len(sp),
                        strict=True,
                    )
                )
            rows = g.zone_rows
            if rows is None:
                rows = tuple((z, st.zone_row(z)) for z in g.changes.zones.tolist())
            for z, row in rows:
                if self._zone_recorded.get(z) != row:  # on change: changes may cancel out
                    self._zone_recorded[z] = row
                    self._zone_history_rows.append((zone_ids[z], row, g.ts))

    def checkpoint_due(self, max_age_s: float) -> bool:
        """Unwritten checkpoint items older than ``max_age_s`` (or any, with 0)."""
        since = self._dirty_since
        return since is not None and self._mono() - since >= max_age_s

    def flush_checkpoint(
        self, step: bool = False, rows: int = 0, interrupted: Callable[[], bool] | None = None
    ) -> None:
        """Idle work: settle the core's best-space minima and write the checkpoint (current
        state of the spaces that moved, the signs shown, the InfluxDB outbox points, and
        the last event they include). With ``step``, one piece per call, each well under a
        millisecond so that a report arriving meanwhile hardly waits: expand a few pending
        change rows (``rows``, default EXPAND_STEP_ROWS), one report at a time, and stop
        early when ``interrupted`` says a report is waiting; or settle the minima; or,
        once both are done, write the rest."""
        with self.lock:
            if self._dirty_since is None:
                self.core.settle()
                return
            if step:
                if self._unexpanded:
                    with self.journal.transaction():
                        for _ in range(rows or EXPAND_STEP_ROWS):
                            done = self.journal.expand_pending(1)
                            if done or (interrupted is not None and interrupted()):
                                break
                        self._unexpanded = not done
                    return
                if self.core.unsettled:
                    self.core.settle()
                    return
            self.core.settle()
            st = self.state
            t = np.flatnonzero(self._dirty)
            ids, names, agents = st.space_ids, STATE_NAMES, st.agents
            with self.journal.transaction() as conn:
                self.journal.expand_pending()
                self._unexpanded = False
                if len(t):
                    self.journal.put_spaces(
                        zip(
                            [ids[x] for x in t.tolist()],
                            [names[x] for x in st.state[t].tolist()],
                            [names[x] for x in st.sensed[t].tolist()],
                            st.closed[t].astype(np.int64).tolist(),
                            st.since[t].tolist(),
                            st.obs_since[t].tolist(),
                            st.last_seen[t].tolist(),
                            [agents[a] if a >= 0 else None for a in st.agent[t].tolist()],
                            strict=True,
                        )
                    )
                if self._dirty_signs:
                    self.journal.put_signs(self._sign_rows(list(self._dirty_signs.values())))
                if self.history is not None:
                    if self._dirty_history:
                        self.history.space_states(conn, self._dirty_history)
                    if self._zone_history_rows:
                        self.history.zone_occupancies(conn, self._zone_history_rows)
                self.journal.mark_checkpoint(self.journal.last_event_id())
            self._dirty[t] = False
            self._dirty_signs.clear()
            self._dirty_history = []
            self._zone_history_rows = []
            self._dirty_since = None

    def changes_pending(self) -> bool:
        """Changes committed and not yet in a state checkpoint (read without the lock by
        the WAL checkpoint thread: a stale answer only moves its checkpoint by a second)."""
        return self._dirty_since is not None or self._unexpanded
