"""The journal's checkpoint: events commit before publishing; the current-state rows, signs
and InfluxDB outbox points follow (at once, or deferred to an idle moment), and a gateway
killed in between resumes by replaying the events after the last checkpoint."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import outbox
from gateway.journal import Journal, stored_signs
from gateway.live import LiveGateway, _Segment
from gateway.service import _OutboxHistory
from gateway.state import FREE
from parking import topics
from parking.states import SpaceState

SITE = "xinyuan"
T0 = 1_800_000_000.0


def _report(site, agent: str, bus: str, seq: int, states: dict[str, str], kind: str, now: float):
    return topics.edge_occupancy(SITE, agent), json.dumps(
        {
            "agent": agent,
            "source": bus,
            "boot": "b1",
            "seq": seq,
            "ts": now,
            "kind": kind,
            "spaces": [{"space": s, "state": st, "since": now} for s, st in states.items()],
        }
    ).encode()


def _outbox_space_points(db) -> int:
    conn = sqlite3.connect(str(db))
    try:
        q = "SELECT count(*) FROM outbox WHERE measurement='space_state'"
        return conn.execute(q).fetchone()[0]
    finally:
        conn.close()


def test_a_crash_before_the_checkpoint_loses_nothing(example_site, tmp_path):
    clock = [T0]
    db = tmp_path / "journal.sqlite"
    history = _OutboxHistory(example_site.id, None)
    journal = Journal(db, history)
    outbox.ensure_schema(journal.conn)
    sent: list[tuple[str, bytes]] = []
    gw = LiveGateway(
        example_site,
        journal,
        lambda t, p, q, r: sent.append((t, p)),
        clock=lambda: clock[0],
        history=history,
        defer_checkpoint=True,
    )
    gw.publish_all()
    bus = example_site.buses[0].id
    spaces = example_site.spaces_of_source(bus)
    gw.handle(
        *_report(
            example_site, "serial-bus-g", bus, 1, dict.fromkeys(spaces, "free"), "snapshot", T0
        )
    )
    gw.flush_checkpoint()
    assert journal.checkpoint_event() == journal.last_event_id() > 0
    points_at_checkpoint = _outbox_space_points(db)

    # changes committed and published, checkpoint not written yet: then kill -9
    clock[0] += 1
    taken = {s: "occupied" for s in spaces[:5]}
    sent.clear()
    gw.handle(*_report(example_site, "serial-bus-g", bus, 2, taken, "delta", clock[0]))
    # a closure committed the same way (control_space itself checkpoints at once: a
    # manager looks for it in the history straight away)
    with gw.lock:
        closed = gw.state.control(example_site.space_index[spaces[7]], True, clock[0])
        gw._commit_and_propagate([_Segment(closed, clock[0], "manager", "wang")], clock[0])
    assert any(t.endswith("/content") for t, _ in sent)  # the signs went out
    assert gw.checkpoint_due(0.0)
    # committed as one packed row each (the report, the closure), not yet expanded to events
    assert journal.conn.execute("SELECT count(*) FROM pending_changes").fetchone()[0] == 2
    packed = [
        json.loads(c)
        for (c,) in journal.conn.execute("SELECT changes FROM pending_changes ORDER BY id")
    ]
    assert packed[0] == [[s, "free", "occupied"] for s in spaces[:5]]
    assert packed[1] == [[spaces[7], "free", "closed"]]  # its source: the row's, "manager"
    assert journal.checkpoint_event() == journal.last_event_id()
    # the fast restart path must not republish signs older than the events
    assert stored_signs(db) == []
    before_state = gw.state.state.copy()
    before_closed = gw.state.closed.copy()
    before_signs = {d: [r.line for r in lines] for d, lines in gw._shown.items()}
    journal.conn.close()  # no flush: the process dies here

    clock[0] += 1
    journal2 = Journal(db, history)
    gw2 = LiveGateway(
        example_site, journal2, lambda *a: None, clock=lambda: clock[0], history=history
    )
    np.testing.assert_array_equal(gw2.state.state, before_state)
    np.testing.assert_array_equal(gw2.state.closed, before_closed)
    assert {d: [r.line for r in lines] for d, lines in gw2._shown.items()} == before_signs
    # the checkpoint is whole again: signs may be republished fast, the outbox got the points,
    # history has one event per change with its source, agent and seq
    assert journal2.checkpoint_event() == journal2.last_event_id()
    newest = journal2.events(len(taken) + 1)[::-1]
    assert [(e[2], e[3], e[4], e[5], e[6], e[7]) for e in newest] == [
        *((s, "free", "occupied", bus, "serial-bus-g", 2) for s in taken),
        (spaces[7], "free", "closed", "manager", "wang", None),
    ]
    assert len(stored_signs(db)) == len(example_site.displays)
    assert _outbox_space_points(db) == points_at_checkpoint + len(taken) + 1
    # sequences were committed with the events: a redelivered report is still a duplicate
    gw2.publish_all()
    gw2.handle(*_report(example_site, "serial-bus-g", bus, 2, taken, "delta", clock[0] - 1))
    assert gw2.rejections.counts.get("duplicate") == 1
    # reopening the closed space shows what the sensor said under the closure (free)
    gw2.control_space(spaces[7], "open", "wang", None)
    assert gw2.state.state[example_site.space_index[spaces[7]]] == FREE
    journal2.close()


def test_without_deferral_the_checkpoint_follows_every_message(example_site, tmp_path):
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    gw = LiveGateway(example_site, journal, lambda *a: None, clock=lambda: T0)
    bus = example_site.buses[0].id
    spaces = example_site.spaces_of_source(bus)
    gw.handle(
        *_report(
            example_site, "serial-bus-g", bus, 1, dict.fromkeys(spaces, "free"), "snapshot", T0
        )
    )
    assert not gw.checkpoint_due(0.0)
    assert journal.checkpoint_event() == journal.last_event_id() > 0
    rows = {r[0]: r for r in journal.spaces()}
    assert all(rows[s][1] == "free" for s in spaces)
    journal.close()


def _deferred_gateway(site, db, clock: list[float] | None = None):
    """A gateway that leaves its checkpoint to the caller, after a first snapshot of the
    first bus (all free), checkpointed: (journal, gateway, bus, its spaces)."""
    journal = Journal(db)
    # ``clock``: the gateway's time, [T0] unless the caller moves it (the gateway keeps no
    # since later than its own time: a report "at T0 + 1" moves a space only at T0 + 1)
    now = clock if clock is not None else [T0]
    gw = LiveGateway(site, journal, lambda *a: None, clock=lambda: now[0], defer_checkpoint=True)
    bus = site.buses[0].id
    spaces = site.spaces_of_source(bus)
    gw.handle(*_report(site, "serial-bus-g", bus, 1, dict.fromkeys(spaces, "free"), "snapshot", T0))
    gw.flush_checkpoint()
    return journal, gw, bus, spaces


def test_a_report_without_changes_is_checkpointed_too(example_site, tmp_path):
    """Its sequence is committed with the report; the checkpoint (and with it the fast
    republishing of the signs after a restart) must not wait for the next change."""
    db = tmp_path / "journal.sqlite"
    clock = [T0]
    journal, gw, bus, spaces = _deferred_gateway(example_site, db, clock)
    snapshot = dict.fromkeys(spaces, "free")
    assert stored_signs(db)
    clock[0] = T0 + 1
    gw.handle(
        *_report(example_site, "serial-bus-g", bus, 2, snapshot, "snapshot", T0 + 1)
    )  # no change
    assert gw.checkpoint_due(0.0)
    # its row changes nothing: the journaled signs are still current, a restart before the
    # checkpoint republishes them (a site's snapshots come every few seconds)
    assert journal.conn.execute("SELECT changes FROM pending_changes").fetchall() == [("[]",)]
    assert stored_signs(db)
    gw.flush_checkpoint()
    assert stored_signs(db)
    assert [(a.agent, a.seq) for a in journal.agents()] == [("serial-bus-g", 2)]
    journal.close()


def test_the_checkpoint_expands_a_backlog_step_by_step(example_site, tmp_path):
    """Under load the service flushes in steps, so a report arriving meanwhile waits for
    one small piece, not for the whole backlog: a few reports expanded per step, then the
    core's minima settled, then the rest of the checkpoint (spaces, signs, mark) last."""
    from gateway.live import EXPAND_STEP_ROWS

    journal, gw, bus, spaces = _deferred_gateway(example_site, tmp_path / "journal.sqlite")
    n_reports = 3 * EXPAND_STEP_ROWS + 1
    for k in range(n_reports):  # one car each
        gw.handle(
            *_report(
                example_site, "serial-bus-g", bus, 2 + k, {spaces[k]: "occupied"}, "delta", T0 + k
            )
        )

    def pending() -> int:
        return journal.conn.execute("SELECT count(*) FROM pending_changes").fetchone()[0]

    mark = journal.checkpoint_event()
    assert gw.core.unsettled > 0
    pieces = []
    while gw.checkpoint_due(0.0):
        before, unsettled = pending(), gw.core.unsettled
        gw.flush_checkpoint(step=True)
        if before:
            assert pending() == max(0, before - EXPAND_STEP_ROWS)
            assert gw.core.unsettled == unsettled  # one piece per step
            pieces.append("expand")
        elif unsettled:
            assert gw.core.unsettled == 0
            pieces.append("settle")
        else:
            pieces.append("write")
        if gw.checkpoint_due(0.0):
            assert journal.checkpoint_event() == mark  # spaces and signs wait for the last step
    assert pieces == ["expand"] * 4 + ["settle", "write"]
    assert journal.checkpoint_event() == journal.last_event_id() == mark + n_reports
    assert [(a.agent, a.seq) for a in journal.agents()] == [("serial-bus-g", 1 + n_reports)]
    rows = {r[0]: r[1] for r in journal.spaces()}
    assert [rows[s] for s in spaces[: n_reports + 1]] == ["occupied"] * n_reports + ["free"]
    journal.close()


def test_a_waiting_report_cuts_an_expansion_step_short(example_site, tmp_path):
    """The quiet step expands one report at a time and stops as soon as a message waits
    (``interrupted``), committing what it did; what is left goes in the next steps, and
    the checkpoint ends the same."""
    journal, gw, bus, spaces = _deferred_gateway(example_site, tmp_path / "journal.sqlite")
    n_reports = 7
    for k in range(n_reports):
        gw.handle(
            *_report(
                example_site, "serial-bus-g", bus, 2 + k, {spaces[k]: "occupied"}, "delta", T0 + k
            )
        )

    def pending() -> int:
        return journal.conn.execute("SELECT count(*) FROM pending_changes").fetchone()[0]

    asked = []

    def after_two() -> bool:  # a message arrives while the second report is expanded
        asked.append(1)
        return len(asked) >= 2

    gw.flush_checkpoint(step=True, rows=8, interrupted=after_two)
    assert len(asked) == 2 and pending() == n_reports - 2  # committed, not rolled back
    events = journal.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert events >= 2
    gw.flush_checkpoint(step=True, rows=8, interrupted=lambda: False)  # quiet: the rest
    assert pending() == 0
    assert journal.conn.execute("SELECT count(*) FROM events").fetchone()[0] == events + 5
    while gw.checkpoint_due(0.0):
        gw.flush_checkpoint(step=True, rows=8, interrupted=lambda: False)
    assert journal.checkpoint_event() == journal.last_event_id()
    assert [(a.agent, a.seq) for a in journal.agents()] == [("serial-bus-g", 1 + n_reports)]
    rows = {r[0]: r[1] for r in journal.spaces()}
    assert [rows[s] for s in spaces[: n_reports + 1]] == ["occupied"] * n_reports + ["free"]
    journal.close()


def test_a_restart_reuses_the_lane_distances(example_site, tmp_path):
    """The driving distances are kept in the journal: a restarted gateway skips Dijkstra
    and scipy's import (most of its start-up), with the same costs; another lane graph
    computes afresh."""
    import subprocess
    import sys

    from gateway.allocation import CoreLayout
    from parking.site import EXAMPLE_SITE

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    gw = LiveGateway(example_site, journal, lambda *a: None, clock=lambda: T0)
    fresh = CoreLayout.from_site(example_site)
    np.testing.assert_array_equal(gw.layout.cost, fresh.cost)
    journal.close()
    code = (
        "import hashlib, sys; from gateway.journal import Journal;"
        "from gateway.live import LiveGateway; from parking.site import load_site;"
        f"j = Journal({str(db)!r}); gw = LiveGateway(load_site({str(EXAMPLE_SITE)!r}), j,"
        " lambda *a: None); print('scipy' in sys.modules,"
        " hashlib.sha256(gw.layout.cost.tobytes()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out[0] == "False"  # scipy never loaded
    assert out[1] == hashlib.sha256(fresh.cost.tobytes()).hexdigest()


def test_a_managers_closure_is_in_the_history_at_once(example_site, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    gw = LiveGateway(
        example_site, journal, lambda *a: None, clock=lambda: T0, defer_checkpoint=True
    )
    gw.control_space("A-010", "close", "wang", "resurfacing")
    assert not gw.checkpoint_due(0.0)
    assert journal.events(1)[0][2:6] == ("A-010", "unknown", "closed", "manager")
    journal.close()


def _boot_reports(site):
    """bus-g's spaces, all of them free, and a report maker taking the boot id."""
    bus = site.buses[0].id
    spaces = site.spaces_of_source(bus)

    def rep(boot: str, seq: int, states: dict[str, str], kind: str = "snapshot"):
        topic, payload = _report(site, "serial-bus-g", bus, seq, states, kind, T0)
        return topic, payload.replace(b'"boot": "b1"', f'"boot": "{boot}"'.encode())

    return spaces, dict.fromkeys(spaces, "free"), rep


def test_boots_an_agent_replaced_stay_refused_after_a_restart(example_site, tmp_path):
    """A late replay of an old boot is refused by the restarted gateway as before, and it
    does not retire the agent's current boot; boots replaced within one unexpanded
    stretch of the journal are remembered too."""
    db = tmp_path / "journal.sqlite"
    gw = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: T0)
    spaces, free, rep = _boot_reports(example_site)

    gw.defer_checkpoint = True  # b1 and b2 only in pending rows when b3 arrives
    gw.handle(*rep("b1", 1, free))
    gw.handle(*rep("b2", 1, free))
    gw.handle(*rep("b3", 1, {**free, spaces[0]: "occupied"}))
    gw.flush_checkpoint()
    gw.journal.close()

    gw2 = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: T0 + 1)
    for boot in ("b1", "b2"):
        gw2.handle(*rep(boot, 2, free))
    assert gw2.rejections.counts == {"stale_boot": 2}
    assert gw2.accepted == 0
    assert gw2.state.state[example_site.space_index[spaces[0]]] != FREE
    gw2.handle(*rep("b3", 2, {spaces[1]: "occupied"}, kind="delta"))
    assert gw2.accepted == 1
    assert gw2.state.state[example_site.space_index[spaces[1]]] != FREE


def test_a_restart_remembers_when_an_unchanged_space_was_last_observed(example_site, tmp_path):
    """A report that only confirms a space moves its observation time; after a restart an
    observation older than that is still refused (and the TTL counts from it)."""
    db = tmp_path / "journal.sqlite"
    now = [T0]
    gw = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: now[0])
    bus = example_site.buses[0].id
    spaces = example_site.spaces_of_source(bus)
    gw.handle(
        *_report(
            example_site, "serial-bus-g", bus, 1, dict.fromkeys(spaces, "free"), "snapshot", T0
        )
    )
    now[0] = T0 + 10
    gw.handle(*_report(example_site, "serial-bus-g", bus, 2, {spaces[0]: "free"}, "delta", T0 + 10))
    gw.flush_checkpoint()
    gw.journal.close()

    gw2 = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: T0 + 11)
    s0 = example_site.space_index[spaces[0]]
    assert gw2.state.obs_since[s0] == T0 + 10
    assert gw2.state.last_seen[s0] == T0 + 10
    topic, late = _report(
        example_site, "serial-bus-g", bus, 3, {spaces[0]: "occupied"}, "delta", T0 + 5
    )
    gw2.handle(topic, late)
    assert gw2.rejections.counts == {"older_than_known": 1}
    assert gw2.state.state[s0] == FREE


def test_a_boot_replaced_while_its_successor_was_pending_does_not_jam_the_journal(tmp_path):
    """An agent restarted twice during a broker outage: its spooled reports of two new
    boots arrive, and the checkpoint expands them in steps. Retiring the middle boot
    again once used to fail every later checkpoint and every start (UNIQUE constraint)."""
    db = tmp_path / "journal.sqlite"
    j = Journal(db)
    j.add_changes(T0, "bus-g", "serial-bus-g", "b0", 1, "[]")
    with j.transaction():
        j.expand_pending()
    j.add_changes(T0 + 1, "bus-g", "serial-bus-g", "b1", 1, "[]")
    j.add_changes(T0 + 2, "bus-g", "serial-bus-g", "b2", 1, "[]")
    with j.transaction():
        assert not j.expand_pending(1)  # a report was waiting: one row, committed
    with j.transaction():
        assert j.expand_pending()
    j.close()
    j = Journal(db)  # and the journal opens again
    assert j.retired_boots() == {"serial-bus-g": ["b0", "b1"]}
    assert [(a.boot, a.seq) for a in j.agents()] == [("b2", 1)]
    j.close()


def test_every_replaced_boot_stays_refused(example_site, tmp_path):
    """However many restarts ago a boot was replaced, a late message of it does not take
    the agent over (it used to be forgotten after 16, then lock the live boot out)."""
    db = tmp_path / "journal.sqlite"
    gw = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: T0)
    spaces, free, rep = _boot_reports(example_site)

    for n in range(20):
        gw.handle(*rep(f"boot-{n}", 1, free))
    gw.handle(*rep("boot-0", 2, free))
    assert gw.rejections.counts == {"stale_boot": 1}
    gw.handle(*rep("boot-19", 2, {spaces[0]: "occupied"}, kind="delta"))
    assert gw.accepted == 21
    gw.journal.close()
    gw2 = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: T0 + 1)
    gw2.handle(*rep("boot-1", 3, free))
    assert gw2.rejections.counts == {"stale_boot": 1}
    gw2.handle(*rep("boot-19", 3, {spaces[1]: "occupied"}, kind="delta"))
    assert gw2.accepted == 1


def test_a_report_whose_times_are_refused_does_not_keep_those_spaces_alive(example_site, tmp_path):
    """An agent restarted with its clock behind: every observation it sends is refused as
    older than known. Its reports used to vouch for those spaces anyway, so the old state
    stayed up as live for ever; now the TTL makes them unknown."""
    wall, mono = [T0], [100.0]
    gw = LiveGateway(
        example_site,
        Journal(tmp_path / "journal.sqlite"),
        lambda *a: None,
        clock=lambda: wall[0],
        mono=lambda: mono[0],
    )
    bus = example_site.buses[0]
    spaces = example_site.spaces_of_source(bus.id)
    first, other = spaces[0], spaces[1]
    gw.handle(*_report(example_site, "serial-bus-g", bus.id, 1, dict.fromkeys(spaces, "occupied"),
                       "snapshot", T0))  # fmt: skip
    for seq in range(2, 2 + int(bus.ttl_s) + 5):  # a report a second, for longer than the TTL
        wall[0] += 1.0
        mono[0] += 1.0
        topic, payload = _report(
            example_site, "serial-bus-g", bus.id, seq, {first: "free"}, "delta", T0
        )
        body = json.loads(payload)
        body["spaces"][0]["since"] = T0 - 3600  # the clock an hour behind
        body["ts"] = wall[0]
        gw.handle(topic, json.dumps(body).encode())
        gw.tick()
    assert gw.rejections.counts.get("older_than_known", 0) >= bus.ttl_s
    index = example_site.space_index
    assert gw.state.state[index[first]] == SpaceState.UNKNOWN  # not "occupied", unvouched
    assert gw.state.state[index[other]] == SpaceState.OCCUPIED  # the rest still vouched for


def _snapshot(site, bus, seq: int, since: float, now: float):
    spaces = site.spaces_of_source(bus.id)
    report = {
        "agent": bus.agent, "source": bus.id, "boot": "b1", "seq": seq, "ts": now,
        "kind": "snapshot",
        "spaces": [{"space": s, "state": "free", "since": since} for s in spaces],
    }  # fmt: skip
    return topics.edge_occupancy(SITE, bus.agent), json.dumps(report).encode()


def test_a_snapshot_repeating_what_is_known_rewrites_no_space_row(example_site, tmp_path):
    """A quiet site's agents repeat their snapshots every few seconds: rows whose state,
    observation time and agent did not move are not rewritten at the checkpoint (a big
    site wrote ~36 GB a day to its disk that way), while a restart still knows every
    observation time it must refuse older ones against."""
    clock = [T0]
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    gw = LiveGateway(
        example_site, journal, lambda *a: None, clock=lambda: clock[0], defer_checkpoint=True
    )
    bus = max(example_site.buses, key=lambda b: len(example_site.spaces_of_source(b.id)))
    n = len(example_site.spaces_of_source(bus.id))
    assert n > 64  # the vectorized path; a delta below goes through the per-item one
    gw.handle(*_snapshot(example_site, bus, 1, T0 - 10, T0))
    gw.flush_checkpoint()
    for seq in (2, 3):
        clock[0] += 5
        gw.handle(*_snapshot(example_site, bus, seq, T0 - 10, clock[0]))
        assert not gw._dirty.any()
    first = example_site.spaces_of_source(bus.id)[0]
    clock[0] += 5
    one = {
        "agent": bus.agent, "source": bus.id, "boot": "b1", "seq": 4, "ts": clock[0],
        "kind": "delta", "spaces": [{"space": first, "state": "free", "since": T0 - 5}],
    }  # fmt: skip
    gw.handle(topics.edge_occupancy(SITE, bus.agent), json.dumps(one).encode())
    # the same state with a later observation time: that row moved (and only that one)
    assert np.flatnonzero(gw._dirty).tolist() == [example_site.space_index[first]]
    gw.flush_checkpoint()
    one["seq"], one["ts"] = 5, clock[0] + 1  # repeated as it is: nothing moved
    gw.handle(topics.edge_occupancy(SITE, bus.agent), json.dumps(one).encode())
    assert not gw._dirty.any()
    journal.close()
    gw2 = LiveGateway(example_site, Journal(db), lambda *a: None, clock=lambda: clock[0])
    assert gw2.state.obs_since[example_site.space_index[first]] == T0 - 5


def test_an_agent_the_site_file_no_longer_names_is_not_listed(example_site, tmp_path):
    """An agent renamed in the site file (its old id still in the journal, offline) is not
    one of the site's agents any more: it is not listed, so no alert says it is offline
    for good."""
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    with journal.transaction():
        journal.put_agent("b1-agent", "b0", 7, False, T0 - 60)
        journal.put_agent("serial-bus-g", "b1", 3, True, T0 - 1)
    gw = LiveGateway(example_site, journal, lambda *a: None, clock=lambda: T0)
    listed = {a.agent: a.online for a in gw.agents()}
    assert "b1-agent" not in listed
    assert listed["serial-bus-g"] is True


# the statement expand_pending used before (quadratic: an EXISTS scan per pending row)
_RETIRED_BY_EXISTS = (
    "SELECT b.agent, b.boot, max(b.ts) FROM (SELECT * FROM pending_changes{where}) b"
    " WHERE b.boot IS NOT NULL AND EXISTS (SELECT 1 FROM pending_changes n"
    " WHERE n.agent = b.agent AND n.id > b.id AND n.boot IS NOT b.boot"
    " AND n.boot IS NOT NULL) GROUP BY b.agent, b.boot"
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a1", "a2"]), st.sampled_from(["b0", "b1", "b2", None])),
        max_size=30,
    ),
    st.one_of(st.none(), st.integers(1, 30)),
)
def test_expanding_pending_rows_retires_the_boots_a_later_row_replaced(rows, limit):
    """Retiring boots in one pass gives what the per-row EXISTS statement gave, for any
    order of agents' boots (null boots: the gateway's own verdicts) and any step size."""
    with tempfile.TemporaryDirectory() as tmp:
        _check_retired_boots(Path(tmp) / "journal.sqlite", rows, limit)


def _check_retired_boots(db, rows, limit) -> None:
    j = Journal(db)
    for n, (agent, boot) in enumerate(rows):
        j.add_changes(T0 + n, "bus-g", agent, boot, n, "[]")
    where, params = "", ()
    if limit is not None:
        where = " WHERE id <= (SELECT max(id) FROM (SELECT id FROM pending_changes ORDER BY id LIMIT ?))"
        params = (limit,)
    want = set(j.conn.execute(_RETIRED_BY_EXISTS.format(where=where), params).fetchall())
    with j.transaction():
        j.expand_pending(limit)
    got = set(j.conn.execute("SELECT agent, boot, ts FROM retired_boots").fetchall())
    assert got == want
    j.close()


def test_the_wal_is_cut_back_after_a_burst(tmp_path, monkeypatch):
    """A burst that outruns the checkpoint grows the WAL; once checkpointed, the next commit
    cuts it back to the limit (it used to keep its largest size on disk until a restart)."""
    from gateway import journal as journal_module

    monkeypatch.setattr(journal_module, "WAL_SIZE_LIMIT_BYTES", 256 * 1024)
    db = tmp_path / "journal.sqlite"
    j = Journal(db)
    j.manual_checkpoints()  # as the service runs it: checkpoints from its own thread
    wal = Path(f"{db}-wal")
    changes = json.dumps([["A-001", "free", "occupied"]] * 200)
    for n in range(300):  # the burst: ~3 MB of reports before any checkpoint
        with j.transaction():
            j.add_changes(T0 + n, "bus-g", "serial-bus-g", "b", n, changes)
    assert wal.stat().st_size > 2_000_000
    j.checkpoint()
    with j.transaction():
        j.add_changes(T0 + 400, "bus-g", "serial-bus-g", "b", 400, "[]")
    assert wal.stat().st_size <= 256 * 1024
    j.close()


def test_reports_that_change_nothing_move_one_agent_row_at_most_every_half_minute(
    example_site, tmp_path
):
    """A quiet site's periodic snapshots each wrote a change row, its expansion and a
    checkpoint (~28 KB of writes, 40 MB an hour on an edge box's SD card); then each moved
    the agent's row (a commit, a WAL checkpoint and three fsyncs every few seconds). Now an
    agent's row moves at most every QUIET_JOURNAL_S, the newest report waiting in memory,
    written by the timer once that is over or by a clean stop. A gateway killed meanwhile
    resumes with the sequence journaled last: a replay of the later ones changes nothing."""
    from gateway_support import Clocks

    from gateway.live import QUIET_JOURNAL_S

    clocks = Clocks(T0)
    db = tmp_path / "j.sqlite"
    journal = Journal(db)
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    gw.publish_all()
    bus = example_site.buses[0]
    spaces = example_site.spaces_of_source(bus.id)
    since = clocks.wall

    def snapshot(g: LiveGateway, seq: int) -> None:  # all free, seen since ``since``
        report = {"agent": bus.agent, "source": bus.id, "boot": "b1", "seq": seq,
                  "ts": clocks.wall, "kind": "snapshot",
                  "spaces": [{"space": s, "state": "free", "since": since} for s in spaces]}  # fmt: skip
        g.handle(topics.edge_occupancy(SITE, bus.agent), json.dumps(report).encode())

    def row() -> tuple[str, int, float]:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT boot, seq, last_seen FROM agents WHERE agent = ?", (bus.agent,)
            ).fetchone()

    snapshot(gw, 1)  # the first: every space changes
    gw.flush_checkpoint()
    change_rows = []
    real_add = journal.add_changes
    journal.add_changes = lambda *row: (change_rows.append(row), real_add(*row))[1]  # type: ignore[method-assign]
    assert QUIET_JOURNAL_S == 30
    for seq in range(2, 13):  # every 5 s: journaled at 5 s (the first) and 35 s
        clocks.advance(5)
        snapshot(gw, seq)
        gw.tick()
    assert change_rows == []
    assert row() == ("b1", 8, T0 + 35)
    clocks.advance(10)  # silent since 55 s: at 65 s the timer journals the newest
    gw.tick()
    assert row() == ("b1", 12, T0 + 55)
    clocks.advance(1)
    snapshot(gw, 13)  # held again; a clean stop would write it (test_gateway_service)
    assert row()[1] == 12
    journal.close()  # killed: seq 13 is lost

    clocks.advance(2)
    gw2 = clocks.gateway(example_site, Journal(db), lambda *a: None)
    assert gw2.gate.sequence(bus.agent) == ("b1", 12)
    snapshot(gw2, 12)  # the broker's redelivery of one journaled: a repeat
    assert gw2.counters().rejected == {"duplicate": 1}
    snapshot(gw2, 13)  # one not journaled (the spaces are as it says): accepted, no gap
    assert gw2.reports_missed[bus.agent] == 0
    assert all(gw2.state.state[example_site.space_index[s]] == FREE for s in spaces)


def test_signs_heard_in_the_future_are_not_republished_fast(example_site, tmp_path):
    """An agent's last_seen keeps its maximum: after a clock that ran a day ahead was
    corrected, the stored signs were republished as if heard a day from now (valid for
    their whole expiry and more). When they were really last vouched for is not known."""
    db = tmp_path / "journal.sqlite"
    journal, _gw, _bus, _spaces = _deferred_gateway(example_site, db)
    journal.close()
    assert stored_signs(db, now=T0 + 1)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE agents SET last_seen = last_seen + 86400")
    assert stored_signs(db, now=T0 + 1) == []
