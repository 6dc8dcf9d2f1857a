"""Validate and decode edge occupancy reports (pure: no I/O, no clock).

A report is turned into an :class:`AcceptedReport` (space indices, states and
``since`` times as numpy arrays, ready for ``gateway.state``) or a
:class:`Rejection` carrying a reason. :meth:`ReportGate.accept` takes the usual
report column-wise (orjson, then whole columns through C builtins); anything
unusual goes through pydantic's :class:`OccupancyReport` and
:meth:`ReportGate.check`, which give the same verdict and explain it. Reasons are counted by the service and
logged at most once per reason per minute (:class:`RejectionLog`).

Whole-report rejections: ``oversized``, ``bad_json``, ``invalid`` (schema),
``agent_mismatch`` (topic agent differs from the payload's), ``unknown_source``,
``foreign_source`` (the source's reports come from another agent, per the site file),
``unknown_agent`` (availability or health of an agent no source of the site names),
``retained`` (a report, arrival or control the broker kept: stale, replayed on connect),
``duplicate`` (same boot, seq already seen: a replay or a QoS 1 redelivery),
``stale_boot`` (a boot the agent has since left); a boot never seen replaces the agent's
current one only with a report that has an accepted observation (else the report is
refused whole, by its first observation's reason). Per observation (the rest of
the report is accepted, as the issue says "accepts only the spaces bound to the
source"): ``unknown_space``, ``foreign_space`` (bound to another source),
``older_than_known`` (its ``since`` is earlier than the last accepted
observation of that space).

The parts of a health report naming what is not its source's are left out and counted
(:meth:`ReportGate.own_health`): ``unknown_node``, ``unknown_detector``,
``unknown_space``, ``foreign_space``; the gateway refuses a health report older than the
agent's last (:meth:`ReportGate.health_problem`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter, sub
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from parking.payloads import (
    FUTURE_TOLERANCE_S,
    MAX_OBSERVATIONS,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MAX_TIMESTAMP,
    OBSERVED_STATES,
    SCHEMA_VERSION,
    HealthReport,
    OccupancyReport,
    is_identifier,
)
from parking.site import NodeController, Site
from parking.states import SpaceState

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

REPORT_REASONS = (
    "oversized",
    "bad_json",
    "invalid",
    "agent_mismatch",
    "unknown_source",
    "foreign_source",
    "unknown_agent",
    "retained",
    "duplicate",
    "stale_boot",
    "from_the_future",
)
OBSERVATION_REASONS = ("unknown_space", "foreign_space", "older_than_known", "from_the_future")

# only what an edge observes: "closed" is the manager's, so an edge saying it is invalid
_STATE_CODE = {name: int(SpaceState.parse(name)) for name in OBSERVED_STATES}
SINCE_TOLERANCE_S = 0.001
"""Edges may round ``since`` differently in deltas and snapshots (seen: 6 decimals vs full
precision); a difference below this is the same moment, not an older observation."""
NEW_BOOT_TOLERANCE_S = 60.0
LIVE_REPORT_S = 30.0
"""A replaced boot's report stamped this close to now comes from an agent still running
(a twin under the same id), not from a broker's backlog or a spool."""
"""A new boot's report may be this much older than its source's newest observation (an
agent's clock stepped back a little across its restart); older, it is a stale message."""
_NONE_STALE = np.zeros(0, dtype=np.int64)
_REPORT_KEYS = frozenset(OccupancyReport.model_fields)
_REPORT_REQUIRED = frozenset(
    name for name, f in OccupancyReport.model_fields.items() if f.is_required()
)
_SPACE, _STATE, _SINCE = (itemgetter(k) for k in ("space", "state", "since"))
_VALID_IDS_CAP = 4096


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    # (refused boot, current boot): a replaced boot whose report is stamped as live
    # (``stale_boot``): two runs under one id, or a forged new boot that shut the agent out
    conflict: tuple[str, str] | None = None


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs several times more
class AcceptedReport:
    """The accepted part of one report; arrays are aligned and indexed by observation."""

    agent: str
    source: str
    boot: str
    seq: int
    ts: float
    kind: str
    spaces: np.ndarray  # int64 space indices
    states: np.ndarray  # int8 SpaceState codes
    since: np.ndarray  # float64 wall times
    gap: bool  # True when a seq was missed since the previous report of this boot
    rejected: tuple[Rejection, ...] = ()  # per-observation rejections
    # spaces listed with a time refused (older than known, from the future): not vouched
    # for, so the report does not keep them alive against the TTL
    stale: np.ndarray = field(default_factory=lambda: _NONE_STALE)


def decode(model: type[M], payload: bytes) -> M | Rejection:
    """Size cap, JSON and schema in one pass (pydantic parses the JSON once)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        # strict: "1" or true is not a number here (a wrong type is an error, not a guess)
        return model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            return Rejection("bad_json", errors[0]["msg"])
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        loc = ".".join(str(p) for p in first["loc"])
        return Rejection("invalid", f"{loc}: {first['msg']} ({len(errors)} errors)")


def decode_report(agent: str, payload: bytes) -> OccupancyReport | Rejection:
    """Decode an occupancy report published on ``agent``'s topic."""
    report = decode(OccupancyReport, payload)
    if isinstance(report, Rejection):
        return report
    if report.agent != agent:
        return Rejection("agent_mismatch", f"topic agent {agent!r}, payload agent {report.agent!r}")
    return report


_NUMBER_TYPES = frozenset((float, int))  # exactly: a bool is not a time


@dataclass
class _AgentSequence:
    boot: str
    seq: int
    # every boot the agent replaced (boot ids are random, never reused): a late message
    # of any of them is refused, however many restarts ago it was replaced
    retired: set[str] = field(default_factory=set)


def how_long(seconds: float) -> str:
    """A duration as an operator reads it: "40 s", "12 min", "3.5 h", "9 days", "56 years"."""
    s = abs(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    if s < 2 * 365.25 * 86400:
        return f"{s / 86400:.0f} days"
    return f"{s / (365.25 * 86400):.0f} years"


def clock_behind(agent: str, ts: float, now: float | None) -> str:
    """What a refusal adds when the refused time ``ts`` is far behind the gateway's clock
    ``now``: by how much, and what to suspect ('' when it is not)."""
    if now is None or now - ts <= FUTURE_TOLERANCE_S:
        return ""
    return (
        f" ({agent}'s clock is {how_long(now - ts)} behind the gateway's: not synchronised?"
        " Or the message waited that long in its spool)"
    )


def clock_ahead(what: str, ts: float, now: float) -> str:
    """A ``from_the_future`` refusal's text: how far ``ts`` is ahead of the gateway's clock
    ``now``, and that either clock may be the wrong one (a gateway booted with its clock
    behind refuses every report, and the agents are not to blame)."""
    return (
        f"{what} {ts} is {how_long(ts - now)} ahead of the gateway's clock ({now}):"
        " the agent's clock runs ahead, or the gateway's own clock is behind (not"
        " synchronised since it booted?)"
    )


class ReportGate:
    """Checks decoded reports against the site and what is already known.

    Stateful (last (boot, seq) per agent) but pure: the caller passes the
    ``since`` of the last accepted observation per space and commits the
    sequence with :meth:`commit` once the report is journaled.
    """

    def __init__(self, site: Site):
        self.site = site
        self._sequences: dict[str, _AgentSequence] = {}
        by_source: dict[str, list[int]] = {b.id: [] for b in site.buses}
        by_source |= {c.id: [] for c in site.cameras}
        for sid, binding in site.bindings.items():  # one pass (a site has ~40 sources)
            by_source[binding.source].append(site.space_index[sid])
        self._source_spaces: dict[str, np.ndarray] = {
            src: np.array(sorted(ids), dtype=np.int64) for src, ids in by_source.items()
        }
        self._binding_source = {sid: b.source for sid, b in site.bindings.items()}
        # the one agent each source's reports are accepted from (an agent's MQTT user may
        # publish only under its own id, so this is what keeps it to its own spaces)
        self._source_agent = {b.id: b.agent for b in site.buses} | {
            c.id: c.agent for c in site.cameras
        }
        self._site_agents = frozenset(self._source_agent.values())
        # node controllers by address, per source (a camera has none): what a health may name
        self._source_nodes: dict[str, dict[int, NodeController]] = {
            b.id: {n.address: n for n in b.nodes} for b in site.buses
        } | {c.id: {} for c in site.cameras}
        # for the column-wise path: space indices by (valid) id, and per source
        self._identifier_index = {k: v for k, v in site.space_index.items() if is_identifier(k)}
        self._source_set = {src: frozenset(sp.tolist()) for src, sp in self._source_spaces.items()}
        self._valid_ids: set[str] = set()

    def has_source(self, source: str) -> bool:
        return source in self._source_agent

    def is_site_agent(self, agent: str) -> bool:
        """Is ``agent`` the agent of one of the site's sources (availability, health)?"""
        return agent in self._site_agents

    def source_agent_problem(self, source: str, agent: str) -> str | None:
        """Why ``agent`` may not speak for ``source`` (None when it may, or the source is
        not in the site: that is ``unknown_source``)."""
        bound = self._source_agent.get(source)
        if bound is None or bound == agent:
            return None
        return (
            f"agent {agent!r} may not report for {source!r}: its reports come from {bound!r}"
            " (the site file's 'agent' of that source)"
        )

    def take_health(
        self, agent: str, health: HealthReport, now: float
    ) -> tuple[HealthReport | None, list[Rejection]]:
        """A decoded health report published on ``agent``'s topic: what of it may be stored
        (None: nothing) and why the rest was not. Another agent's, an unknown or foreign
        source's, or one from the future is refused whole; parts naming what is not its
        source's are left out (:meth:`own_health`). Whether it is older than the last is the
        caller's, who keeps the last."""
        if health.agent != agent:
            return None, [Rejection("agent_mismatch", f"health of {health.agent!r}")]
        if not self.has_source(health.source):
            why = f"source {health.source!r} is not in the site"
            return None, [Rejection("unknown_source", why)]
        problem = self.source_agent_problem(health.source, agent)
        if problem:
            return None, [Rejection("foreign_source", problem)]
        if health.ts > now + FUTURE_TOLERANCE_S:
            return None, [Rejection("from_the_future", clock_ahead("health ts", health.ts, now))]
        return self.own_health(health)

    def health_problem(
        self, known: HealthReport | None, health: HealthReport, now: float
    ) -> Rejection | None:
        """Why ``health`` may not replace ``known``, the agent's last one taken (None: it
        may). Within one boot of the agent health is taken in the order it arrives, by its
        ``seq``, never by ``ts``: an edge clock stepped back by NTP would otherwise have the
        dashboard show the last health before the step (a dead node as ok) for as long as
        the step. A late one of a boot the agent replaced is refused (``stale_boot``); a
        boot whose reports were taken replaces the known one, and so does another boot when
        no report of the agent was taken (the stand-alone API's case). Only between boots not
        known apart (an agent that sends no boot) does ``ts`` order them (``older_than_known``);
        the same report again (the retained one, at a reconnect) is taken."""
        if known is None:
            return None
        boot = health.boot
        if boot is not None and boot == known.boot:
            if health.seq is not None and known.seq is not None and health.seq < known.seq:
                why = f"health seq {health.seq} of boot {boot} < known {known.seq}"
                return Rejection("older_than_known", why)
            return None
        sequence = self._sequences.get(health.agent)
        if boot is not None and sequence is not None:
            if boot in sequence.retired:
                why = (
                    f"health of {health.agent} boot {boot}, replaced by boot {sequence.boot}"
                    f"{clock_behind(health.agent, health.ts, now)}"
                )
                return Rejection("stale_boot", why)
            if boot == sequence.boot:
                return None
        if boot is not None and known.boot is not None and sequence is None:
            # another boot, and nothing known of the agent's reports to tell which boot is
            # the newer (the stand-alone API hears none): the broker delivers them in the
            # order they came, so the newer run's, whatever a clock stepped back says
            return None
        if health.ts < known.ts:
            why = (
                f"health ts {health.ts} < known {known.ts}"
                f"{clock_behind(health.agent, health.ts, now)}"
            )
            return Rejection("older_than_known", why)
        return None

    def own_health(self, health: HealthReport) -> tuple[HealthReport, list[Rejection]]:
        """A health report (of a source in the site) without what is not its source's, and
        why each part was left out: a node the bus does not have (``unknown_node``), a
        detector beyond its node's (``unknown_detector``), a space the site does not have
        (``unknown_space``) or bound to another source or node (``foreign_space``). Those
        would raise alerts about hardware that is not there; the rest still tells of the
        nodes that are (an agent whose site file differs keeps its real alerts)."""
        source = health.source
        nodes = self._source_nodes[source]
        left_out: list[Rejection] = []
        kept_nodes = []
        for node in health.nodes:
            controller = nodes.get(node.address)
            if controller is None:
                left_out.append(Rejection("unknown_node", f"{source} has no node {node.address}"))
                continue
            kept = []
            for det in node.detectors:
                if det.index >= controller.detectors:
                    why = f"node {source}/{node.address} has no detector {det.index}"
                    left_out.append(Rejection("unknown_detector", why))
                    continue
                if det.space is not None:
                    problem = self._space_problem(det.space, source, node.address, det.index)
                    if problem is not None:
                        left_out.append(problem)
                        continue
                kept.append(det)
            if len(kept) < len(node.detectors):
                node = node.model_copy(update={"detectors": kept})
            kept_nodes.append(node)
        kept_spaces = []
        for watched in health.spaces:
            problem = self._space_problem(watched.space, source)
            if problem is None:
                kept_spaces.append(watched)
            else:
                left_out.append(problem)
        if left_out:
            health = health.model_copy(update={"nodes": kept_nodes, "spaces": kept_spaces})
        return health, left_out

    def _space_problem(
        self, space: str, source: str, node: int | None = None, detector: int | None = None
    ) -> Rejection | None:
        """A space a health report names: the site's, bound to ``source`` (and that ``node``
        and ``detector``: an agent whose site file wires the node's detectors otherwise would
        raise alerts about the wrong bays)?"""
        if space not in self.site.space_index:
            return Rejection("unknown_space", f"space {space!r} does not exist")
        binding = self.site.bindings.get(space)
        if binding is None or binding.source != source:
            return Rejection("foreign_space", f"space {space!r} is not bound to {source}")
        if node is not None and binding.node != node:
            why = f"space {space!r} is bound to node {binding.node} of {source}, not {node}"
            return Rejection("foreign_space", why)
        if detector is not None and binding.detector != detector:
            why = (
                f"space {space!r} is detector {binding.detector} of node {source}/{node},"
                f" not {detector} (the agent's site file differs from the gateway's?)"
            )
            return Rejection("foreign_space", why)
        return None

    def source_spaces(self, source: str) -> np.ndarray:
        """Space indices bound to a source (sorted)."""
        return self._source_spaces[source]

    def restore(self, agent: str, boot: str, seq: int, retired: Sequence[str] = ()) -> None:
        """Resume the sequence of an agent from the journal, with the boots it replaced
        (oldest first), so that a late replay of an old boot is still refused."""
        known = _AgentSequence(boot, seq)
        known.retired.update(b for b in retired if b != boot)
        self._sequences[agent] = known

    def sequence(self, agent: str) -> tuple[str, int] | None:
        s = self._sequences.get(agent)
        return (s.boot, s.seq) if s else None

    def accept(
        self,
        agent: str,
        payload: bytes,
        obs_since: np.ndarray,
        *,
        as_next: bool = False,
        now: float | None = None,
    ) -> AcceptedReport | Rejection:
        """Decode and check a report published on ``agent``'s topic: the same verdict as
        :func:`decode_report` then :meth:`check`. The usual report (valid, every space
        known, bound to the source, newer than known, none twice) is taken column-wise
        without building a model per observation; anything else goes the long way, which
        explains it. ``as_next`` checks it as if it carried the next sequence number
        (``LiveGateway.rehearse``). With ``now`` (the gateway's clock), times later than
        ``now`` + FUTURE_TOLERANCE_S are refused."""
        fast = self._accept_usual(agent, payload, obs_since, as_next, now)
        if fast is not None:
            return fast
        report = decode_report(agent, payload)
        if isinstance(report, Rejection):
            return report
        if as_next:
            known = self._sequences.get(report.agent)
            if known is not None and known.boot == report.boot:
                report = report.model_copy(update={"seq": known.seq + 1})
        return self.check(report, obs_since, now)

    def _accept_usual(
        self,
        agent: str,
        payload: bytes,
        obs_since: np.ndarray,
        as_next: bool,
        now: float | None = None,
    ) -> AcceptedReport | Rejection | None:
        """The column-wise path of :meth:`accept`, or None for the long way. It never
        accepts what OccupancyReport would refuse: any doubt is None. Whole columns go
        through C builtins (map, min, set): after a quiet spell every numpy call and every
        Python-level loop costs several times more than on a warm CPU."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        try:
            d = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if type(d) is not dict or not _REPORT_REQUIRED <= d.keys() <= _REPORT_KEYS:
            return None
        a, source, boot, seq, ts, kind, obs = (
            d["agent"],
            d["source"],
            d["boot"],
            d["seq"],
            d["ts"],
            d["kind"],
            d["spaces"],
        )
        if not (
            a == agent
            and type(a) is str
            and type(source) is str
            and type(boot) is str
            and type(seq) is int
            and 0 <= seq <= MAX_SEQ
            and type(ts) in (float, int)
            and 0 <= ts <= MAX_TIMESTAMP
            and kind in ("delta", "snapshot")
            and type(obs) is list
            and len(obs) <= MAX_OBSERVATIONS
            and ("v" not in d or (type(d["v"]) is int and d["v"] == SCHEMA_VERSION))
            and self._identifiers(a, source, boot)
            and (now is None or ts <= now + FUTURE_TOLERANCE_S)
        ):
            return None
        src_spaces = self._source_set.get(source)
        if src_spaces is None or self._source_agent[source] != agent:
            return None
        known = self._sequences.get(agent)
        gap = False
        if known is not None:
            if boot == known.boot:
                if as_next:
                    seq = known.seq + 1
                if seq <= known.seq:
                    return None
                gap = seq != known.seq + 1
            else:  # a retired boot or a new one: the long way decides and explains
                return None
        try:
            # exactly space, state, since in every item (a missing one raises KeyError)
            if sum(map(len, obs)) != 3 * len(obs):
                return None
            # ids known to the site are identifiers; a list or dict raises TypeError
            idx = list(map(self._identifier_index.get, map(_SPACE, obs)))
            codes = list(map(_STATE_CODE.get, map(_STATE, obs)))
            times = list(map(_SINCE, obs))
        except (KeyError, TypeError):
            return None
        if obs and (
            None in idx
            or None in codes
            or not _NUMBER_TYPES.issuperset(map(type, times))  # no bool, str, None
            or min(times) < 0
            or max(times) > (MAX_TIMESTAMP if now is None else now + FUTURE_TOLERANCE_S)
            or not src_spaces.issuperset(idx)
            or len(set(idx)) != len(idx)
        ):
            return None
        # item access without numpy's per-call cost (None was ruled out above), and no
        # Python frame per item: the smallest margin over what is known decides
        known_since: Any = obs_since.data
        if obs and min(map(sub, times, map(known_since.__getitem__, idx))) < -SINCE_TOLERANCE_S:
            return None
        return self._accepted(
            agent,
            source,
            boot,
            seq,
            float(ts),
            kind,
            np.array(idx, dtype=np.int64),
            np.array(codes, dtype=np.int8),
            np.array(times, dtype=np.float64),
            gap,
            (),
            obs_since,
        )

    def _identifiers(self, *values: str) -> bool:
        """All valid identifiers (remembered: an agent sends the same few again and again)."""
        for v in values:
            if v not in self._valid_ids:
                if not is_identifier(v):
                    return False
                if len(self._valid_ids) >= _VALID_IDS_CAP:
                    self._valid_ids.clear()
                self._valid_ids.add(v)
        return True

    def check(
        self, report: OccupancyReport, obs_since: np.ndarray, now: float | None = None
    ) -> AcceptedReport | Rejection:
        """Accept the report's valid observations, or reject the whole report."""
        if report.source not in self._source_spaces:
            return Rejection("unknown_source", f"source {report.source!r} is not in the site")
        problem = self.source_agent_problem(report.source, report.agent)
        if problem:
            return Rejection("foreign_source", problem)
        latest = np.inf if now is None else now + FUTURE_TOLERANCE_S
        if now is not None and report.ts > latest:
            return Rejection("from_the_future", clock_ahead("report ts", report.ts, now))
        known = self._sequences.get(report.agent)
        gap = False
        replaces: str | None = None  # the boot a boot never seen would replace
        if known is not None:
            if report.boot == known.boot:
                if report.seq <= known.seq:
                    return Rejection(
                        "duplicate",
                        f"{report.agent} boot {report.boot} seq {report.seq} <= {known.seq}",
                    )
                gap = report.seq != known.seq + 1
            elif report.boot in known.retired:
                if now is not None and report.ts >= now - LIVE_REPORT_S:
                    # with a broker password twins have their own client ids: the broker no
                    # longer throws them off each other, and only this says they run
                    return Rejection(
                        "stale_boot",
                        f"{report.agent} boot {report.boot} was replaced by boot {known.boot}"
                        f" but still reports: are two agents with id {report.agent} running"
                        " (a test run beside the service)? Stop one; if the one stopped ran"
                        " the newer boot, restart the other (its new boot is taken)",
                        (report.boot, known.boot),
                    )
                return Rejection(
                    "stale_boot",
                    f"{report.agent} boot {report.boot} was replaced"
                    f"{clock_behind(report.agent, report.ts, now)}",
                )
            else:
                # a boot never seen: the agent restarted, or an old message of a boot long
                # gone (a replay, a copy). Only a report not older than what the current
                # boot observed may replace it: one stale message would otherwise retire
                # the live boot and shut the running agent out until it restarts
                newest = float(obs_since[self._source_spaces[report.source]].max(initial=-np.inf))
                if report.ts < newest - NEW_BOOT_TOLERANCE_S:
                    return Rejection(
                        "stale_boot",
                        f"{report.agent} boot {report.boot}: report ts {report.ts} is older "
                        f"than boot {known.boot}'s observations ({newest})"
                        f"{clock_behind(report.agent, report.ts, now)}",
                    )
                replaces = known.boot
        index = self.site.space_index
        bound = self._binding_source
        source = report.source
        rejected: list[Rejection] = []
        stale: list[int] = []  # listed, but refused for their time: left as they are
        idx: list[int] = []
        codes: list[int] = []
        times: list[float] = []
        for obs in report.spaces:  # plain Python: a report is a few to a few hundred items
            s = index.get(obs.space)
            if s is None:
                rejected.append(Rejection("unknown_space", f"space {obs.space!r} does not exist"))
            elif bound.get(obs.space) != source:
                rejected.append(
                    Rejection("foreign_space", f"space {obs.space!r} is not bound to {source}")
                )
            elif now is not None and obs.since > latest:
                stale.append(s)
                what = f"space {obs.space!r} since"
                rejected.append(Rejection("from_the_future", clock_ahead(what, obs.since, now)))
            elif obs.since < obs_since[s] - SINCE_TOLERANCE_S:
                stale.append(s)
                rejected.append(
                    Rejection(
                        "older_than_known",
                        f"space {obs.space!r} since {obs.since} < known {obs_since[s]}"
                        f"{clock_behind(report.agent, report.ts, now)}",
                    )
                )
            else:
                idx.append(s)
                codes.append(_STATE_CODE[obs.state])
                times.append(obs.since)
        if replaces is not None and not idx:
            # it would retire the running boot with nothing of it taken: every later report
            # of the live agent refused as stale_boot, from one stray or garbled message
            first = rejected[0] if rejected else Rejection("stale_boot", "no observation")
            return Rejection(
                first.reason,
                f"{report.agent} boot {report.boot} would replace boot {replaces} "
                f"without an accepted observation ({first.detail})",
            )
        spaces = np.array(idx, dtype=np.int64)
        states = np.array(codes, dtype=np.int8)
        since = np.array(times, dtype=np.float64)
        if len(set(idx)) != len(idx):  # a space listed twice: the later entry wins
            _, first_from_end = np.unique(spaces[::-1], return_index=True)
            last = np.sort(len(spaces) - 1 - first_from_end)
            spaces, states, since = spaces[last], states[last], since[last]
        return self._accepted(
            report.agent,
            source,
            report.boot,
            report.seq,
            report.ts,
            report.kind,
            spaces,
            states,
            since,
            gap,
            tuple(rejected),
            obs_since,
            np.array(stale, dtype=np.int64),
        )

    def _accepted(
        self,
        agent: str,
        source: str,
        boot: str,
        seq: int,
        ts: float,
        kind: str,
        spaces: np.ndarray,
        states: np.ndarray,
        since: np.ndarray,
        gap: bool,
        rejected: tuple[Rejection, ...],
        obs_since: np.ndarray,
        stale: np.ndarray = _NONE_STALE,
    ) -> AcceptedReport:
        if kind == "snapshot":
            # a snapshot lists every space of its source: the ones it leaves out are unknown
            # (one it lists with a time refused, older than known or from the future, is not
            # left out: it stays as it is)
            all_of_source = self._source_spaces[source]
            listed = spaces if not len(stale) else np.concatenate([spaces, stale])
            missing = all_of_source[~np.isin(all_of_source, listed)]
            if len(missing):
                spaces = np.concatenate([spaces, missing])
                states = np.concatenate(
                    [states, np.full(len(missing), int(SpaceState.UNKNOWN), dtype=np.int8)]
                )
                since = np.concatenate([since, np.maximum(ts, obs_since[missing])])
        return AcceptedReport(
            stale=stale,
            agent=agent,
            source=source,
            boot=boot,
            seq=seq,
            ts=ts,
            kind=kind,
            spaces=spaces,
            states=states,
            since=since,
            gap=gap,
            rejected=rejected,
        )

    def commit(self, accepted: AcceptedReport) -> None:
        """Remember (boot, seq) of an accepted report."""
        known = self._sequences.get(accepted.agent)
        if known is None:
            self._sequences[accepted.agent] = _AgentSequence(accepted.boot, accepted.seq)
        elif known.boot != accepted.boot:
            known.retired.add(known.boot)
            known.boot, known.seq = accepted.boot, accepted.seq
        else:
            known.seq = accepted.seq


_PLATE_VALUE = re.compile(r'("plate"\s*:\s*")((?:[^"\\]|\\.)*)')


def without_plates(shown: str, detail: str = "") -> tuple[str, str]:
    """A refused payload and the reason given for it as they may be logged: a plate is
    personal data, and a log is kept outside the journal's retention (docs/privacy.md)."""
    plates = set()
    for m in _PLATE_VALUE.finditer(shown):
        plates.add(m.group(2))
        with contextlib.suppress(ValueError):
            plates.add(json.loads(f'"{m.group(2)}"'))
    shown = _PLATE_VALUE.sub(r"\1***", shown)
    for plate in sorted(plates, key=len, reverse=True):
        if plate:
            detail = detail.replace(plate, "***")
    return shown, detail


class RejectionLog:
    """Counts rejections by reason; logs the first of each reason per interval, payload cut short."""

    def __init__(
        self,
        clock: Callable[[], float],
        interval_s: float = 60.0,
        max_payload: int = 200,
        logger: logging.Logger = log,
    ):
        self.counts: dict[str, int] = {}
        self._clock = clock
        self._interval = interval_s
        self._max_payload = max_payload
        self._last_logged: dict[str, float] = {}
        self._logger = logger

    def reject(self, rejection: Rejection, topic: str, payload: bytes | None = None) -> None:
        reason = rejection.reason
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self._clock()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval:
            return
        self._last_logged[reason] = now
        shown = ""
        if payload is not None:
            cut = payload[: self._max_payload]
            shown = cut.decode("utf-8", "replace") + ("..." if len(payload) > len(cut) else "")
        shown, detail = without_plates(shown, rejection.detail)
        self._logger.warning(
            "rejected (%s) on %s: %s; payload %r (%d so far; next log of this reason in %ds)",
            reason,
            topic if len(topic) <= self._max_payload else topic[: self._max_payload] + "...",
            detail[:300],
            shown,
            self.counts[reason],
            int(self._interval),
        )
