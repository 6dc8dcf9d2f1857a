"""Live state arrays (gateway.state, pure) and the journal (gateway.journal, real SQLite files)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.state as gateway_state
from gateway.journal import Journal, stored_signs
from gateway.state import CLOSED, FREE, OCCUPIED, UNKNOWN, LiveState
from parking.site import EXAMPLE_SITE, load_site

SITE = load_site(EXAMPLE_SITE)
N = len(SITE.spaces)


def recount(state: LiveState) -> np.ndarray:
    z = len(state.zone_ids)
    return np.bincount(state.zone * 4 + state.state, minlength=z * 4).reshape(z, 4)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("observe"),
            st.lists(st.integers(0, N - 1), min_size=1, max_size=20, unique=True),
            st.sampled_from([UNKNOWN, FREE, OCCUPIED]),
            st.sampled_from(["a1", "a2"]),
        ),
        st.tuples(st.just("control"), st.integers(0, N - 1), st.booleans()),
        st.tuples(st.just("offline"), st.sampled_from(["a1", "a2"])),
        st.tuples(st.just("expire"), st.floats(0, 40)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_zone_counts_and_changes_stay_consistent(sequence):
    s = LiveState(SITE)
    t = 0.0
    for op in sequence:
        t += 1.0
        before = s.state.copy()
        if op[0] == "observe":
            idx = np.array(op[1], dtype=np.int64)
            ch = s.observe(
                idx, np.full(len(idx), op[2], dtype=np.int8), np.full(len(idx), t), op[3], t, t
            )
        elif op[0] == "control":
            ch = s.control(op[1], op[2], t)
        elif op[0] == "offline":
            ch = s.agent_offline(op[1], t)
        else:
            t += op[1]
            ch = s.expire(t, t)
        # the reported changes are exactly the public differences
        moved = np.flatnonzero(before != s.state)
        assert sorted(ch.spaces.tolist()) == moved.tolist()
        assert (before[ch.spaces] == ch.old).all() and (s.state[ch.spaces] == ch.new).all()
        assert (s.zone_counts == recount(s)).all()
        # closed wins over what the sensor says; silence never shows free
        assert (s.state[s.closed] == CLOSED).all()
        assert (s.state[~s.closed] == s.sensed[~s.closed]).all()


few_ops = st.lists(
    st.tuples(
        st.lists(st.integers(0, N - 1), min_size=1, max_size=16, unique=True),
        st.lists(st.sampled_from([UNKNOWN, FREE, OCCUPIED]), min_size=16, max_size=16),
        st.sampled_from(["a1", "a2"]),
        st.booleans(),  # close the first space before the report
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(few_ops)
def test_few_observations_item_by_item_match_the_array_path(sequence):
    """observe() takes a per-item path for a few observations: same arrays, same changes."""
    few, arrays = LiveState(SITE), LiveState(SITE)
    t = 0.0
    for spaces, states, agent, close in sequence:
        t += 1.0
        for s in (few, arrays):
            s.control(spaces[0], close, t)
        idx = np.array(spaces, dtype=np.int64)
        codes = np.array(states[: len(spaces)], dtype=np.int8)
        since = np.full(len(spaces), t - 0.5)
        a = few.observe(idx, codes, since, agent, t, t + 100)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gateway_state, "SMALL", 0)
            b = arrays.observe(idx, codes, since, agent, t, t + 100)
        for field in ("spaces", "old", "new", "touched", "zones"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and x.tolist() == y.tolist(), field
        for name in ("sensed", "state", "since", "obs_since", "last_seen", "seen_mono", "agent"):
            assert (getattr(few, name) == getattr(arrays, name)).all(), name
        assert (few.zone_counts == arrays.zone_counts).all()
        assert (few.zone_counts == recount(few)).all()


def test_ttl_expiry_and_last_will():
    s = LiveState(SITE)
    a = np.array([SITE.space_index["A-001"], SITE.space_index["A-002"]])
    b1 = np.array([SITE.space_index["B1-E-001"]])
    s.observe(
        a, np.array([FREE, OCCUPIED], dtype=np.int8), np.zeros(2), "serial-bus-g", 100.0, 10.0
    )
    s.observe(b1, np.array([FREE], dtype=np.int8), np.zeros(1), "serial-bus-b1", 100.0, 10.0)
    assert len(s.expire(114.0, 24.0)) == 0  # bus TTL is 15 s
    ch = s.expire(116.0, 26.0)
    assert sorted(ch.spaces.tolist()) == sorted([*a.tolist(), *b1.tolist()])
    assert (s.state[a] == UNKNOWN).all()
    s.observe(a, np.array([FREE, FREE], dtype=np.int8), np.zeros(2), "serial-bus-g", 120.0, 30.0)
    s.observe(b1, np.array([OCCUPIED], dtype=np.int8), np.zeros(1), "serial-bus-b1", 120.0, 30.0)
    ch = s.agent_offline("serial-bus-g", 121.0)
    assert sorted(ch.spaces.tolist()) == sorted(a.tolist())
    assert s.state[b1[0]] == OCCUPIED  # another agent's space is untouched


def test_restored_silence_still_counts_against_the_ttl():
    s = LiveState(SITE)
    i = SITE.space_index["A-003"]
    # seen 10 s (wall) before the restart; TTL 15 s: 5 s left after the restart
    s.restore(i, FREE, False, 90.0, 90.0, 100.0, "serial-bus-g", wall=110.0, mono=1000.0)
    s.finish_restore()
    assert s.state[i] == FREE and s.zone_counts[s.zone[i], FREE] == 1
    assert len(s.expire(114.0, 1004.0)) == 0
    assert s.expire(116.0, 1006.0).spaces.tolist() == [i]


def test_journal_is_wal_and_a_failed_transaction_leaves_nothing(tmp_path):
    j = Journal(tmp_path / "j.db")
    assert j.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with j.transaction():
        j.add_changes(1.0, "bus-g", "serial-bus-g", "b", 1, '[["A-001", "unknown", "free"]]')
        j.expand_pending()
    with pytest.raises(RuntimeError), j.transaction():
        j.add_changes(2.0, "bus-g", "serial-bus-g", "b", 2, '[["A-001", "free", "occupied"]]')
        j.expand_pending()
        raise RuntimeError("crash between the two writes")
    with j.transaction():
        j.put_signs([("gate-north", "t/gate-north", '{"display":"gate-north"}', 60.0)])
    j.manual_checkpoints()
    j.checkpoint()
    j.close()
    with sqlite3.connect(tmp_path / "j.db") as conn:
        rows = conn.execute("SELECT ts, new FROM events").fetchall()
    assert rows == [(1.0, "free")]
    assert stored_signs(tmp_path / "j.db") == [("t/gate-north", '{"display":"gate-north"}', 60.0)]
    assert stored_signs(tmp_path / "missing.db") == []
    # the last report was heard at ts 1.0: within the sign's 60 s expiry it may show again,
    # after a longer stop it is too old (the gateway renders afresh instead)
    # (for what is left of its validity: restarts that keep failing never extend it)
    assert stored_signs(tmp_path / "j.db", now=41.0) == [
        ("t/gate-north", '{"display":"gate-north"}', 20.0)
    ]
    assert stored_signs(tmp_path / "j.db", now=61.0) == []
    # nor past the site's shortest source TTL: its spaces would have gone unknown by then,
    # so the counts are no longer vouched for (after a 20 s stop: old counts for 0.4 s)
    assert stored_signs(tmp_path / "j.db", now=10.0, ttl_s=15.0) == [
        ("t/gate-north", '{"display":"gate-north"}', 6.0)
    ]
    assert stored_signs(tmp_path / "j.db", now=21.0, ttl_s=15.0) == []
    assert stored_signs(tmp_path / "j.db", now=41.0, ttl_s=None) != []
