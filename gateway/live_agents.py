"""The gateway engine's side of its edge agents: reports missed or refused whole, boot
conflicts, availability (last wills), health and how far behind their reports it is. A part
of :class:`gateway.live.LiveGateway`, apart from the report path itself so that the engine's
module holds what a report does, not the bookkeeping around who sent it.
"""

from __future__ import annotations

import logging
import math

import orjson

from gateway.ingest import AcceptedReport, Rejection, decode
from gateway.live_journal import QUIET_JOURNAL_S
from gateway.live_types import GAP_LOG_INTERVAL_S, _Segment
from gateway.readside import BOOT_CONFLICTS_KEY, BOOT_CONFLICTS_SAVE_S
from gateway.state import NO_CHANGES
from parking import topics
from parking.payloads import MAX_PAYLOAD_BYTES, HealthReport

# the engine's logger, whichever of its parts speaks: log settings and filters name it
log = logging.getLogger("gateway.live")

CONTESTED_GAP_S = 600.0
"""A gap within this long of a session taken over (``session_contested_at``) is said to be
the other client's doing, not the broker's."""
MAX_REPORT_RATE = 1000.0
"""Reports a second an agent could have sent: a seq gap wider than this over the time since
its last report is a jump of the agent's numbering, not reports the broker dropped."""
SEQ_JUMP_SLACK_S = 60.0  # ... allowing this much time besides (clocks, a backlog)
REFUSED_SEQS_KEPT = 10_000  # per agent: a flood of refusals does not grow memory without end
AVAILABILITY_LOG_INTERVAL_S = 60.0
"""At most one line per agent this often about its going offline (its last will) or coming
back: a flapping agent's further changes are counted and said with its next line."""
AVAILABILITY_FLAPS = 3  # changes not logged within one interval that make it "flap"


class LiveAgents:
    """A part of LiveGateway, sharing its state and lock: its edge agents' gaps and health."""

    def note_session_contested(self) -> None:
        """The service saw another client take this gateway's session (its client id): the
        reports missed meanwhile are said to be that client's, not the broker's."""
        self.session_contested_at = self._mono()

    def current_lags(self) -> dict[str, float]:
        """Each agent's lag behind its reports now (gateway.lag.ReportLag.current)."""
        return self.lag.current(self._mono())

    def behind_s(self) -> float:
        """How far the gateway is behind its agents' reports now (0: keeping up)."""
        return self.lag.behind(self._mono())

    def _note_boot_conflict(self, agent: str, refused_boot: str, boot: str) -> None:
        """A live report of a replaced boot was refused (under the lock): counted towards the
        agent's boot conflict, journaled at once when one begins, else now and then."""
        now, mono = self._clock(), self._mono()
        changed = self.boot_conflicts.note(agent, refused_boot, boot, now)
        if changed or mono - self._boot_conflicts_saved >= BOOT_CONFLICTS_SAVE_S:
            self._boot_conflicts_saved = mono
            self.journal.set_meta(BOOT_CONFLICTS_KEY, self.boot_conflicts.to_save(now))
        if changed:
            log.error(
                "edge agent %s: reports of its boot %s keep being refused since boot %s"
                " replaced it, and that boot still reports: restart the real agent (its new"
                " boot is then taken); if nobody restarted it, its broker login may be"
                " stolen: change its password",
                agent,
                refused_boot,
                boot,
            )

    def _note_refused(self, agent: str, payload: bytes) -> None:
        """Remember the seq of a report refused whole (``from_the_future``, say): it
        arrived, and the gap it leaves is not the broker's loss. One over the size cap is
        not read (it was refused unread)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return
        try:
            d = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(d, dict):
            return
        boot, seq = d.get("boot"), d.get("seq")
        if type(boot) is not str or type(seq) is not int or d.get("agent") != agent:
            return
        known_boot, seqs = self._refused_seqs.get(agent, (boot, set()))
        if known_boot != boot or len(seqs) >= REFUSED_SEQS_KEPT:
            seqs = set()
        seqs.add(seq)
        self._refused_seqs[agent] = (boot, seqs)

    def _note_gap(
        self, acc: AcceptedReport, now: float, mono: float, refused: tuple[str, set[int]] | None
    ) -> None:
        """Count the reports an agent's seq numbers skipped (they never reached the
        gateway; ``refused``: those that did and were refused whole) and say so, at most
        once a minute per agent. A gap wider than the agent could have sent since it was
        last heard (``now``, event time) is a jump of its numbering: counted apart."""
        known = self.gate.sequence(acc.agent)
        if known is None or known[0] != acc.boot:
            return
        first, last = known[1] + 1, acc.seq - 1
        came = 0
        if refused is not None and refused[0] == acc.boot:
            came = sum(1 for seq in refused[1] if first <= seq <= last)
        if came:
            log.info(
                "agent %s boot %s: %d of reports %d..%d arrived and were refused (see the"
                " 'rejected' lines); the next snapshot reconciles the state",
                acc.agent,
                acc.boot,
                came,
                first,
                last,
            )
            if came == last - first + 1:
                return
        if self._restored_backup and acc.agent not in self._reported:
            # they came, into the journal this backup replaced: not the broker's loss
            log.info(
                "agent %s boot %s: reports %d..%d came after the backup this journal was"
                " restored from; the next snapshot reconciles the state",
                acc.agent,
                acc.boot,
                first,
                last,
            )
            return
        if self._after_crash and acc.agent not in self._reported:
            # a quiet agent's seq is journaled every QUIET_JOURNAL_S: the run before the
            # crash may have taken them; not blamed on the broker, nor counted
            log.info(
                "agent %s boot %s: reports %d..%d are not in the journal: taken by the run"
                " before it ended without a clean stop (a quiet agent's seq is journaled"
                " every %.0f s), or lost; the next snapshot reconciles the state",
                acc.agent,
                acc.boot,
                first,
                last,
                QUIET_JOURNAL_S,
            )
            return
        lost = last - first + 1 - came
        seen = self._agent_seen.get(acc.agent)
        if seen is not None and lost > (max(0.0, now - seen) + SEQ_JUMP_SLACK_S) * MAX_REPORT_RATE:
            # one report numbered 2**62 must not read as that many reports lost (a counter
            # no rate or alert survives): an agent's bug, or its seq restarted under one boot
            self.seq_jumps[acc.agent] = self.seq_jumps.get(acc.agent, 0) + 1
            if mono >= self._gap_logged.get(acc.agent, -math.inf) + GAP_LOG_INTERVAL_S:
                self._gap_logged[acc.agent] = mono
                log.warning(
                    "agent %s boot %s: its report numbers jumped from %d to %d, far more than"
                    " it could have sent since it was last heard %.0f s ago: not counted as"
                    " lost reports (an agent bug, or one restarted without a new boot?); the"
                    " next snapshot reconciles the state",
                    acc.agent,
                    acc.boot,
                    first - 1,
                    acc.seq,
                    max(0.0, now - seen),
                )
            return
        self.reports_missed[acc.agent] = self.reports_missed.get(acc.agent, 0) + lost
        if mono < self._gap_logged.get(acc.agent, -math.inf) + GAP_LOG_INTERVAL_S:
            return
        self._gap_logged[acc.agent] = mono
        contested = self.session_contested_at
        why = (
            "another client using this gateway's client id took them (said above)"
            if contested is not None and mono - contested <= CONTESTED_GAP_S
            else "the broker dropped them: a broker restart, or its queue limits "
            "max_queued_messages / max_queued_bytes, the gateway away or not keeping up"
        )
        log.warning(
            "agent %s boot %s: %d of reports %d..%d never arrived (%s); "
            "the next snapshot reconciles the state (%d missed from this agent so far)",
            acc.agent,
            acc.boot,
            lost,
            first,
            last,
            why,
            self.reports_missed[acc.agent],
        )

    def _unknown_agent(self, topic: str, agent: str, payload: bytes) -> bool:
        """Availability and health only from the agents the site's sources name."""
        if self.gate.is_site_agent(agent):
            return False
        why = f"agent {agent!r} is no source's agent in the site file"
        self._reject(Rejection("unknown_agent", why), topic, payload)
        return True

    def _on_availability(self, topic: str, agent: str, payload: bytes) -> None:
        if self._unknown_agent(topic, agent, payload):
            return
        if len(payload) > MAX_PAYLOAD_BYTES:  # the cap of every payload, before reading it
            why = f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}"
            self._reject(Rejection("oversized", why), topic, payload)
            return
        # exactly the contract's words: an "offline" padded with anything is not the will
        text = payload.decode("utf-8", "replace")
        if text not in (topics.ONLINE, topics.OFFLINE):
            why = f"availability must be exactly {topics.ONLINE!r} or {topics.OFFLINE!r}"
            self._reject(Rejection("invalid", f"{why}, not {text[:40]!r}"), topic, payload)
            return
        online = text == topics.ONLINE
        now = self._clock()
        with self.lock:
            was = self._online.get(agent)
            self._online[agent] = online
            # heard from: not "never seen". An "online" is the agent now; an "offline" is its
            # last will, retained since it went: it does not make a long dead agent recent
            if online:
                self._agent_seen[agent] = max(self._agent_seen.get(agent, now), now)
            else:
                self._agent_seen.setdefault(agent, now)
            self.lag.forget(agent)  # gone, or back: its next report read alone sets it
            if was != online:
                self._log_availability(agent, online)
            now = self._event_time(now)
            changes = NO_CHANGES if online else self.state.agent_offline(agent, now)
            self._commit_and_propagate(
                [_Segment(changes, now, None, agent)], now, agent_state=(agent, online)
            )
        self._emit("agent", {"agent": agent, "online": online}, now)

    def _log_availability(self, agent: str, online: bool) -> None:
        """Say that an agent went offline (WARNING: its last will) or came back (INFO), at
        most once per agent per AVAILABILITY_LOG_INTERVAL_S; the changes in between go to
        DEBUG and are counted in its next line (or in ``tick``'s, once the interval is over).
        A return to online right after a logged offline is said at once: the log must not
        leave an agent offline that is back (a broker's restart)."""
        mono = self._mono()
        last, skipped, was_online = self._availability_logged.get(agent, (-math.inf, 0, None))
        if mono < last + AVAILABILITY_LOG_INTERVAL_S and not (
            online and was_online is False and not skipped
        ):
            self._availability_logged[agent] = (last, skipped + 1, was_online)
            log.debug("edge agent %s is %s", agent, "online" if online else "offline")
            return
        self._say_availability(agent, online, mono, last, skipped)

    def _say_availability(
        self, agent: str, online: bool, mono: float, last: float, skipped: int
    ) -> None:
        self._availability_logged[agent] = (mono, 0, online)
        more = ""
        if skipped:
            flaps = ": it flaps" if skipped >= AVAILABILITY_FLAPS else ""
            changes = "change" if skipped == 1 else "changes"
            more = f" ({skipped} more {changes} in the last {mono - last:.0f} s not logged{flaps})"
        if online:
            log.info("edge agent %s is online%s", agent, more)
        else:
            log.warning(
                "edge agent %s is offline (its last will: stopped, crashed, or cut off from "
                "the broker); its spaces are unknown until it is back%s",
                agent,
                more,
            )

    def _log_availability_later(self) -> None:
        """An agent whose last changes were not logged (it flapped): its state now, with the
        count, once its interval is over, so the log does not end on a state long gone."""
        mono = self._mono()
        for agent, (last, skipped, _) in list(self._availability_logged.items()):
            if skipped and mono >= last + AVAILABILITY_LOG_INTERVAL_S:
                self._say_availability(agent, self._online.get(agent, False), mono, last, skipped)

    def _on_health(self, topic: str, agent: str, payload: bytes) -> None:
        if self._unknown_agent(topic, agent, payload):
            return
        health = decode(HealthReport, payload)
        if isinstance(health, Rejection):
            self._reject(health, topic, payload)
            return
        now = self._clock()
        taken, left_out = self.gate.take_health(agent, health, now)
        for why in left_out:  # parts naming what is not its source's: false alerts
            self._reject(why, topic, payload)
        if taken is None:
            return
        health = taken
        with self.lock:
            problem = self.gate.health_problem(self._health.get(agent), health, now)
            if problem is not None:
                self._reject(problem, topic, payload)
                return
            self._health[agent] = health
        self._emit("agent", {"agent": agent, "health": health.model_dump(mode="json")}, health.ts)
