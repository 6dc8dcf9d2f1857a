"""The gateway engine's side of the drivers: an arrival answered with a held space (or
refused, with why, to its gate), a cancel ending its hold, and each gate's learned clock
offset. A part of :class:`gateway.live.LiveGateway`, apart because an arrival has a path of
its own (``gateway.arrivals`` decides the answer; this journals and sends it).
"""

from __future__ import annotations

import json
import logging
import time

from gateway.arrivals import (
    ARRIVAL_LIVE_AFTER_S,
    HOLD_CANCELLED,
    HOLD_ENDED,
    cancel_refused,
    readable_request_id,
    same_car,
)
from gateway.ingest import Rejection, decode
from gateway.lag import BEHIND_S
from gateway.live_types import GAP_LOG_INTERVAL_S
from gateway.state import OCCUPIED
from parking import topics
from parking.payloads import Arrival, ArrivalCancel, ArrivalRefusal, Assignment

# the engine's logger, whichever of its parts speaks: log settings and filters name it
log = logging.getLogger("gateway.live")


class LiveArrivals:
    """A part of LiveGateway, sharing its state and lock: the drivers' arrivals and cancels."""

    def _on_arrival(
        self, topic: str, entrance: str, payload: bytes, t0: float | None = None
    ) -> None:
        arrival = decode(Arrival, payload)
        if isinstance(arrival, Rejection):
            self._refuse_arrival(arrival, topic, entrance, payload)
            return
        e = self._entrance.get(entrance)
        if e is None:
            why = Rejection("unknown_entrance", f"entrance {entrance!r}")
            self._refuse_arrival(why, topic, entrance, payload, arrival.request_id)
            return
        c = self._class.get(arrival.vehicle_class)
        if c is None:
            known = ", ".join(self._class)
            why = Rejection(
                "unknown_class",
                f"vehicle class {arrival.vehicle_class!r} is not one of the site's: {known}",
            )
            self._refuse_arrival(why, topic, entrance, payload, arrival.request_id)
            return
        with self.lock:
            now = self._clock()
            if arrival.request_id is not None:
                # sent again (a QoS 1 redelivery, the gate's retry): the same answer, no
                # second space held for the same car; another car under an id the gate
                # used before (its counter restarted) is answered anew
                body = self._answered_before(entrance, arrival, now)
                if body is not None and arrival.plate is not None and not self.journal_plates:
                    # journaled without it (--plate-keep-hours 0): the gate still gets its echo
                    again = Assignment.model_validate_json(body)
                    body = again.model_copy(update={"plate": arrival.plate}).model_dump_json(
                        by_alias=True
                    )
                if body is not None:
                    self.repeated_arrivals += 1
                    self.answered += 1
                    self._send_assignment(entrance, body)
                    return
            # judged (and its gate's clock learned from) once per car, not per retry
            age = self._arrival_age(entrance, arrival.ts, t0)
            self._follow_policy_minute()  # the signs published below include what it moved
            answer = self.desk.answer(
                entrance, e, c, arrival, age=age, now=now, core_now=self._core_time(now)
            )
            assignment = answer.assignment
            body = assignment.model_dump_json(by_alias=True)
            kept = assignment  # what the journal, and so the API and its stream, have
            if not self.journal_plates and assignment.plate is not None:
                kept = assignment.model_copy(update={"plate": None})
            kept_body = body if kept is assignment else kept.model_dump_json(by_alias=True)
            signs = self._changed_signs(now)  # the hold takes the space off the signs
            with self.journal.transaction():
                self._put_signs_now(signs)
                self.journal.add_assignment(
                    now,
                    entrance,
                    arrival.vehicle_class,
                    assignment.space,
                    assignment.zone,
                    assignment.hold_expires,
                    kept.plate,
                    arrival.request_id,
                    kept_body,
                )
            self._send_assignment(entrance, body)
            for sign in signs:
                self._publish_sign(sign, now)
            if answer.held:  # its zone has one more held
                self.desk.note_hold(entrance, answer.space)
                self._publish_zones([int(self.state.zone[answer.space])], now)
        self.answered += 1
        self._emit("assignment", json.loads(kept_body), now)

    def _answered_before(self, entrance: str, arrival: Arrival, now: float) -> str | None:
        """The answer given to this arrival's request_id within a hold, if it was for the
        same car (same class, and same plate where plates are kept); None otherwise."""
        assert arrival.request_id is not None
        body = self.journal.answered(entrance, arrival.request_id, now - self.hold_s)
        if body is None:
            return None
        given = Assignment.model_validate_json(body)
        if same_car(given, arrival, plates_kept=self.journal_plates):
            return body
        self.reused_request_ids += 1
        mono = self._mono()
        if mono >= self._reused_logged + GAP_LOG_INTERVAL_S:
            self._reused_logged = mono
            log.warning(
                "entrance %s sent request_id %r for another car than the one it was answered"
                " for %.0f s ago (%d so far): answered anew; a gate's request ids must not"
                " repeat within --hold-s, across its restarts too",
                entrance,
                arrival.request_id,
                now - given.ts,
                self.reused_request_ids,
            )
        return None

    def _refuse_arrival(
        self,
        rejection: Rejection,
        topic: str,
        entrance: str,
        payload: bytes,
        request_id: str | None = None,
    ) -> None:
        """Count and log a refused arrival, and tell its gate why (``entrances/{e}/refusal``):
        a gate waiting for an answer that never comes cannot tell a refusal from a
        gateway that is down."""
        self._reject(rejection, topic, payload)
        refusal = ArrivalRefusal(
            entrance=entrance[:256],
            request_id=request_id if request_id is not None else readable_request_id(payload),
            reason=rejection.reason,
            detail=rejection.detail[:300],
            ts=self._clock(),
        )
        with self.lock:
            key = (entrance if entrance in self._entrance else "?", rejection.reason)
            self.refused_arrivals[key] = self.refused_arrivals.get(key, 0) + 1
            self.refusals.note(key[0], rejection.reason, refusal.detail, refusal.ts)
            self._send(
                topics.arrival_refusal(self.site.id, entrance),
                refusal.model_dump_json().encode(),
                topics.QOS_REFUSAL,
                topics.RETAIN_REFUSAL,
            )

    def _send_assignment(self, entrance: str, body: str) -> None:
        """Answer a gate on ``entrances/{entrance}/assignment``."""
        self._send(
            topics.assignment(self.site.id, entrance),
            body.encode(),
            topics.QOS_ASSIGNMENT,
            topics.RETAIN_ASSIGNMENT,
        )

    def _on_cancel(self, topic: str, entrance: str, payload: bytes) -> None:
        """A gate takes back an arrival (the car left without coming in): the hold given to
        its request_id at that entrance ends now, journaled, and the gate is answered on
        the assignment topic (``cancelled``); a cancel that changes nothing (unknown id,
        no hold, ended, cancelled before: a QoS 1 redelivery) is answered with why on the
        refusal topic."""
        cancel = decode(ArrivalCancel, payload)
        if isinstance(cancel, Rejection):
            self._refuse_cancel(cancel, topic, entrance, payload)
            return
        if entrance not in self._entrance:
            why = Rejection("unknown_entrance", f"entrance {entrance!r}")
            self._refuse_cancel(why, topic, entrance, payload, cancel.request_id)
            return
        with self.lock:
            now = self._clock()
            given = self.journal.given(entrance, cancel.request_id)
            s = (
                -1
                if given is None or given.space is None
                else self.site.space_index.get(given.space, -1)
            )
            holding = s >= 0 and self.desk.holding(entrance, s, self._core_time(now))
            occupied = s >= 0 and self.state.state[s] == OCCUPIED
            why = cancel_refused(
                given, cancel.request_id, now=now, holding=holding, occupied=occupied
            )
            if why is not None:
                self._refuse_cancel(why, topic, entrance, payload, cancel.request_id)
                return
            assert given is not None
            was = Assignment.model_validate_json(given.payload)
            answer = was.model_copy(
                update={
                    "route": [],
                    "hint": HOLD_ENDED,
                    "hold_expires": None,
                    "cancelled": True,
                    "ts": now,
                }
            )
            body = answer.model_dump_json(by_alias=True)
            self.desk.release(entrance, s)
            signs = self._changed_signs(now)  # the space is back on the signs
            with self.journal.transaction():
                self._put_signs_now(signs)
                self.journal.cancel_hold(given.id, now)
                self.journal.add_assignment(
                    now,
                    entrance,
                    answer.vehicle_class,
                    answer.space,
                    answer.zone,
                    None,
                    answer.plate,
                    answer.request_id,
                    body,
                    cancelled=now,
                )
            self._send_assignment(entrance, body)
            for sign in signs:
                self._publish_sign(sign, now)
            self._publish_zones([int(self.state.zone[s])], now)  # one held fewer
            key = (entrance, HOLD_CANCELLED)
            self.arrival_cancels[key] = self.arrival_cancels.get(key, 0) + 1
        log.info(
            "entrance %s cancelled its arrival %s: space %s is no longer held",
            entrance,
            cancel.request_id,
            answer.space,
        )
        self._emit("assignment", json.loads(body), now)

    def _refuse_cancel(
        self,
        rejection: Rejection,
        topic: str,
        entrance: str,
        payload: bytes,
        request_id: str | None = None,
    ) -> None:
        """Count a cancel that changes nothing and tell its gate why
        (``entrances/{e}/refusal`` with ``cancel`` true). A malformed one, or one for an
        entrance the site lacks, is also rejected (logged and counted) like any message."""
        if rejection.reason in {"invalid", "bad_json", "oversized", "unknown_entrance"}:
            self._reject(rejection, topic, payload)
        else:
            log.debug("cancel on %s refused (%s): %s", topic, rejection.reason, rejection.detail)
        refusal = ArrivalRefusal(
            entrance=entrance[:256],
            request_id=request_id if request_id is not None else readable_request_id(payload),
            reason=rejection.reason,
            detail=rejection.detail[:300],
            cancel=True,
            ts=self._clock(),
        )
        with self.lock:
            key = (entrance if entrance in self._entrance else "?", rejection.reason)
            self.arrival_cancels[key] = self.arrival_cancels.get(key, 0) + 1
            self._send(
                topics.arrival_refusal(self.site.id, entrance),
                refusal.model_dump_json().encode(),
                topics.QOS_REFUSAL,
                topics.RETAIN_REFUSAL,
            )

    def _arrival_age(self, entrance: str, ts: float | None, t0: float | None) -> float:
        """How long before its receipt the gate saw the car, by the gate's own clock: the
        arrival's delay (receipt by the gateway's wall clock, less ``ts``) less the gate's
        clock offset. The offset is learned per entrance as the least delay of its recent
        live arrivals: those received after the gateway had been connected for
        ARRIVAL_LIVE_AFTER_S (the broker's backlog comes right after a connect), whose
        delay is mostly the offset. So a gate whose clock runs minutes behind still gets
        holds, while an arrival the broker kept while the gateway was away (no offset
        known yet: judged by the gateway's clock) or one the gate sent late (older than
        its usual offset) is still old. Without ``ts``: 0 (the car is at the gate now)."""
        if ts is None:
            return 0.0
        # how long it waited in the service's queue (t0: perf_counter at its receipt)
        lag = max(0.0, time.perf_counter() - t0) if t0 is not None else 0.0
        wall, mono = self._clock() - lag, self._mono() - lag
        since = self.broker_back_since()  # None: not connected, or never told of it
        # while behind, an arrival's delay is mostly the backlog: learned as the gate's
        # offset it would make a minute-old arrival look fresh and hold a space for it
        live = since is not None and wall - since > ARRIVAL_LIVE_AFTER_S
        age, warning = self.gate_clocks.age(
            entrance, wall - ts, mono, learn=live and self.behind_s() < BEHIND_S
        )
        if warning is not None:
            log.warning("%s", warning)
        return age

    def gate_clock_offset(self, entrance: str) -> float | None:
        """How far the entrance's clock runs behind the gateway's (negative: ahead), as
        learned from its recent live arrivals; None while nothing is learned."""
        with self.lock:
            return self.gate_clocks.offset(entrance, self._mono())

    @property
    def gate_clock_warnings(self) -> int:
        """Warnings that a gate's clock is over a minute off."""
        return self.gate_clocks.warnings
