"""The alert book across restarts and a database that refuses writes (api.alerts, api.live)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from api.alerts import AGENT_REJOIN_S, Alert, AlertBook
from api.live import AlertMonitor, LiveHub
from gateway.readside import AgentStatus
from parking.payloads import HealthReport, NodeHealth
from parking.site import EXAMPLE_SITE, load_site

DEAD = Alert("node_dead:bus-b1/2", "node_dead", "bus-b1/2", None)


class _View:
    """What the monitor asks of a live view, set by the test."""

    def __init__(self) -> None:
        self.agent_list: list[AgentStatus] = []
        self.up, self.back = True, None
        self.site = load_site(EXAMPLE_SITE)

    def spaces(self):
        return []

    def recent_refusals(self):
        return {}

    def agents(self):
        return self.agent_list

    def broker_connected(self) -> bool:
        return self.up

    def broker_back_since(self):
        return self.back


def _dead_node_health(now: float) -> HealthReport:
    node = NodeHealth(address=2, status="dead")
    return HealthReport(agent="serial-bus-b1", source="bus-b1", ts=now, nodes=[node])


def test_a_restart_keeps_an_acknowledged_episode_while_the_view_settles(tmp_path):
    """Just after a start the retained health has not arrived: the open, acknowledged
    episode is kept (not ended and raised again as new); once the view knows, it clears
    only if the condition is gone."""
    db = str(tmp_path / "alerts.sqlite")
    book = AlertBook(db)
    now = time.time()
    book.update([DEAD], now - 100)
    book.acknowledge(DEAD.id, "mgr", "on it", now - 90)

    restarted = AlertBook(db)  # the API restarts
    view = _View()
    monitor = AlertMonitor(view, restarted, LiveHub(view), 1.0, 3600)  # type: ignore[arg-type]
    raised, cleared = monitor.check()  # nothing heard yet
    assert (raised, cleared) == ([], [])
    (rec,) = restarted.current()
    assert rec.acked_by == "mgr" and rec.since == pytest.approx(now - 100)

    view.agent_list = [AgentStatus("serial-bus-b1", True, now, _dead_node_health(now))]
    monitor.check()  # the retained health came: still dead, the same episode
    (rec,) = restarted.current()
    assert rec.acked_by == "mgr" and rec.since == pytest.approx(now - 100)

    view.agent_list = [AgentStatus("serial-bus-b1", True, now, None)]
    monitor._started -= AGENT_REJOIN_S  # settled: what is gone now clears
    assert monitor.check()[1] == [DEAD.id]
    assert restarted.current() == []


def test_while_the_broker_is_lost_open_episodes_stay(tmp_path):
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    view = _View()
    monitor = AlertMonitor(view, book, LiveHub(view), 1.0, 3600)  # type: ignore[arg-type]
    monitor._started -= AGENT_REJOIN_S
    now = time.time()
    view.agent_list = [AgentStatus("serial-bus-b1", True, now, _dead_node_health(now))]
    monitor.check()
    book.acknowledge(DEAD.id, "mgr", None, now)
    view.up = False  # no agent alert is derived while it lasts: the episode stays
    lost = monitor.check()[0]  # the broker_lost alert, and only it, is raised
    assert [r.alert.id for r in lost] == ["broker_lost:mqtt"]
    view.up, view.back = True, time.time()
    assert monitor.check()[1] == ["broker_lost:mqtt"]  # back: cleared at once
    assert [r.acked_by for r in book.current() if r.alert.id == DEAD.id] == ["mgr"]


def test_an_acknowledgement_the_database_refuses_is_not_shown(tmp_path):
    db = tmp_path / "alerts.sqlite"
    book = AlertBook(str(db))
    book.update([DEAD], time.time())
    book._connect = lambda: sqlite3.connect(f"file:{db}?mode=ro", uri=True)  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        book.acknowledge(DEAD.id, "mgr", "disk full", time.time())
    (rec,) = book.current()
    assert rec.acked_by is None and rec.note is None
    # a new alert while the database refuses: shown (and pushed), its history short
    other = Alert("node_dead:bus-b1/3", "node_dead", "bus-b1/3", None)
    raised, _ = book.update([DEAD, other], time.time())
    assert [r.alert.id for r in raised] == [other.id]
    assert {r.alert.id for r in book.current()} == {DEAD.id, other.id}
