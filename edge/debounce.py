"""Debouncing ground detectors and deciding each space's state on one bus. Pure, no I/O.

A node controller already debounces its detectors (``HR_DEBOUNCE_MS``, 300 ms
by default); the agent debounces again on what it polls so that a frame that
slipped through with a wrong bit, or a detector flickering at the poll rate,
never becomes a transition. With the defaults (300 ms on the node, 500 ms
here) a change counts within at most 1 s.

A space's state is ``unknown`` whenever the agent cannot vouch for it: its
node stopped answering, answers the poll with a Modbus exception or says it is
not the node the site file describes, its
detector reports a fault, or no reading has held long enough yet. Silence is
never ``free``.

All times are seconds on one monotonic clock chosen by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from parking.registers import DetectorStatus
from parking.site import Bus
from parking.states import SpaceState

DEFAULT_HOLD_S = 0.5
DEFAULT_NODE_TIMEOUT_S = 1.5
DEFAULT_NODE_MAX_FAILURES = 3
_EPSILON_S = 1e-9  # float rounding of clock sums must not add a poll to the hold


@dataclass
class Debouncer:
    """One detector: a reading counts once it has been seen for ``hold_s`` without a break."""

    hold_s: float = DEFAULT_HOLD_S
    value: bool | None = None
    """The debounced reading; None until some reading has held."""
    since: float = 0.0
    """When the debounced reading was first seen (not when it was accepted)."""
    candidate: bool | None = None
    candidate_since: float = 0.0

    def feed(self, reading: bool, now: float) -> bool:
        """Take one poll's reading; True when the debounced value changed."""
        if reading == self.value:
            self.candidate = None
            return False
        if reading != self.candidate:
            self.candidate, self.candidate_since = reading, now
        if now - self.candidate_since >= self.hold_s - _EPSILON_S:
            self.value, self.since, self.candidate = reading, self.candidate_since, None
            return True
        return False

    def would_change(self, reading: bool, now: float) -> bool:
        """Would :meth:`feed` of this reading change the debounced value (no side effect)?"""
        if reading == self.value:
            return False
        since = self.candidate_since if reading == self.candidate else now
        return now - since >= self.hold_s - _EPSILON_S

    def reset(self) -> None:
        """Forget everything: the next reading has to hold again before it counts."""
        self.value = None
        self.candidate = None


@dataclass(frozen=True)
class DebounceSettings:
    hold_s: float = DEFAULT_HOLD_S
    """How long a detector must hold a new reading before it counts."""
    node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S
    """A node is down after this long without an answer ..."""
    node_max_failures: int = DEFAULT_NODE_MAX_FAILURES
    """... and at least this many unanswered requests in a row, a poll's retries included
    (both, so one slow burst is not an outage). Requests, not polls: on a long bus with
    nodes lost a cycle takes seconds, and N polls would be N cycles of stale bays."""

    def __post_init__(self) -> None:
        if self.hold_s < 0 or self.node_timeout_s < 0 or self.node_max_failures < 1:
            raise ValueError(f"invalid debounce settings: {self}")


@dataclass(frozen=True)
class SpaceChange:
    """A space's state changed (or, in a snapshot, simply is) since ``since``."""

    space: str
    state: SpaceState
    since: float


@dataclass
class _Node:
    address: int
    spaces: tuple[str | None, ...]
    detectors: list[Debouncer]
    statuses: list[DetectorStatus | None]
    last_answer: float
    failures: int = 0
    down: bool = False
    exception: int | None = None
    """the Modbus exception code its last poll was answered with, if it was"""
    foreign: bool = False
    """it answers, but is not the node the site file describes (another bus's, on this port)"""


def _status(code: int) -> DetectorStatus:
    """A status code we do not know is a fault: a detector we cannot read is not vouched for."""
    try:
        return DetectorStatus(code)
    except ValueError:
        return DetectorStatus.FAULT


@dataclass
class BusTracker:
    """The state of every space bound to one bus, from polls, failures and detector status."""

    bus: Bus
    settings: DebounceSettings = field(default_factory=DebounceSettings)
    start: float = 0.0

    def __post_init__(self) -> None:
        self._nodes: dict[int, _Node] = {
            n.address: _Node(
                n.address,
                n.spaces,
                [Debouncer(self.settings.hold_s) for _ in range(n.detectors)],
                [None] * n.detectors,
                last_answer=self.start,
            )
            for n in self.bus.nodes
        }
        self._states: dict[str, tuple[SpaceState, float]] = {
            sid: (SpaceState.UNKNOWN, self.start)
            for n in self.bus.nodes
            for sid in n.spaces
            if sid is not None
        }

    # --- inputs -----------------------------------------------------------

    def poll_ok(self, address: int, bits: Sequence[bool], now: float) -> list[SpaceChange]:
        """A node answered a read of its occupied bits (CRC-checked)."""
        node = self._nodes[address]
        if len(bits) < len(node.detectors):
            raise ValueError(
                f"node {address}: {len(bits)} bits for {len(node.detectors)} detectors"
            )
        changes = self.expire(now, only=address)  # its last answer too old to build on
        node.failures, node.last_answer, node.down, node.exception = 0, now, False, None
        node.foreign = False
        for det, bit in zip(node.detectors, bits, strict=False):
            det.feed(bool(bit), now)
        return changes + self._update(node, now)

    def expire(self, now: float, only: int | None = None) -> list[SpaceChange]:
        """Forget the readings of nodes last answered more than the bus's ``ttl_s`` ago
        (of node ``only``, if given): the agent was stopped or starved between two polls
        (SIGSTOP, a paused VM, a swap storm), so they prove nothing about now. Their
        spaces are ``unknown`` until a new reading holds; kept, they were told as fresh
        after the stall, two minutes old."""
        changes: list[SpaceChange] = []
        nodes = self._nodes.values() if only is None else (self._nodes[only],)
        for node in nodes:
            if now - node.last_answer <= self.bus.ttl_s:
                continue
            if all(d.value is None and d.candidate is None for d in node.detectors):
                continue  # nothing held to forget
            for det in node.detectors:
                det.reset()
            changes += self._update(node, now)
        return changes

    def would_settle(self, address: int, bits: Sequence[bool], now: float) -> bool:
        """Would :meth:`poll_ok` with these bits settle a detector of a space on a new value?
        (The caller then reads the node's detector statuses first: a detector that just
        died reads 0, which must not be published as ``free`` before its fault is seen.)"""
        node = self._nodes[address]
        return any(
            sid is not None and det.would_change(bool(bit), now)
            for sid, det, bit in zip(node.spaces, node.detectors, bits, strict=False)
        )

    def poll_failed(self, address: int, now: float, attempts: int = 1) -> list[SpaceChange]:
        """A poll of the node got no valid answer (timeout, bad CRC, port gone) to any of its
        ``attempts`` requests (the first and its retries)."""
        node = self._nodes[address]
        node.failures += attempts
        s = self.settings
        if (
            not node.down
            and node.failures >= s.node_max_failures
            and now - node.last_answer >= s.node_timeout_s
        ):
            node.down = True
            # a reading from before the outage proves nothing about after it
            for det in node.detectors:
                det.reset()
        return self._update(node, now)

    def poll_refused(self, address: int, code: int, now: float) -> list[SpaceChange]:
        """The node answered the poll with Modbus exception ``code``: it is there (not down),
        but gave no bits, e.g. the site file gives it more detectors than it has. Its spaces
        are unknown until a poll is answered with bits."""
        node = self._nodes[address]
        if node.exception is None:
            # its readings from before prove nothing about after
            for det in node.detectors:
                det.reset()
        node.failures, node.last_answer, node.down, node.exception = 0, now, False, code
        return self._update(node, now)

    def foreign_node(self, address: int, now: float) -> list[SpaceChange]:
        """The node answers, but says it is not the one the site file describes (another
        detector count or model: the wrong bus on this port): its bits are not these spaces'.
        They are unknown until a poll is answered with bits again."""
        node = self._nodes[address]
        if not node.foreign:
            for det in node.detectors:
                det.reset()
        node.failures, node.last_answer, node.down, node.foreign = 0, now, False, True
        return self._update(node, now)

    def detector_status(
        self, address: int, statuses: Sequence[int], now: float, first: int = 0
    ) -> list[SpaceChange]:
        """Status registers of detectors ``first..`` of a node (``parking.registers.DetectorStatus``)."""
        node = self._nodes[address]
        for i, code in enumerate(statuses, start=first):
            if i < len(node.statuses):
                status = _status(code)
                faulty = status is not None and status != DetectorStatus.OK
                if faulty and node.statuses[i] in (None, DetectorStatus.OK):
                    # its readings from before the fault prove nothing about after it; a
                    # reading taken after it carries a `since` newer than the `unknown`
                    node.detectors[i].reset()
                node.statuses[i] = status
        return self._update(node, now)

    # --- queries ----------------------------------------------------------

    def node_down(self, address: int) -> bool:
        return self._nodes[address].down

    def node_answering(self, address: int) -> bool:
        """The node answered its last poll (bits, an exception, or as another node)."""
        node = self._nodes[address]
        return not node.down and node.failures == 0

    def node_exception(self, address: int) -> int | None:
        """The exception code the node answered its last poll with (None: bits, or silence)."""
        return self._nodes[address].exception

    def node_foreign(self, address: int) -> bool:
        """The node said it is not the one the site file describes (``foreign_node``)."""
        return self._nodes[address].foreign

    def detector_state(self, address: int, index: int) -> SpaceState:
        node = self._nodes[address]
        return self._effective(node, index)

    def detector_fault(self, address: int, index: int) -> DetectorStatus | None:
        return self._nodes[address].statuses[index]

    def state(self, space: str) -> tuple[SpaceState, float]:
        return self._states[space]

    def snapshot(self) -> list[SpaceChange]:
        """Every space of the bus with its state, in binding order."""
        return [SpaceChange(sid, st, since) for sid, (st, since) in self._states.items()]

    @property
    def spaces(self) -> Iterable[str]:
        return self._states.keys()

    # --- internals --------------------------------------------------------

    def _effective(self, node: _Node, index: int) -> SpaceState:
        status = node.statuses[index]
        value = node.detectors[index].value
        faulty = status is not None and status != DetectorStatus.OK
        if node.down or node.exception is not None or node.foreign or faulty or value is None:
            return SpaceState.UNKNOWN
        return SpaceState.OCCUPIED if value else SpaceState.FREE

    def _update(self, node: _Node, now: float) -> list[SpaceChange]:
        changes: list[SpaceChange] = []
        for i, sid in enumerate(node.spaces):
            if sid is None:
                continue
            state = self._effective(node, i)
            if state == self._states[sid][0]:
                continue
            since = node.detectors[i].since if state != SpaceState.UNKNOWN else now
            self._states[sid] = (state, since)
            changes.append(SpaceChange(sid, state, since))
        return changes
