"""The gateway's lag behind its agents' reports (gateway.lag), as pure logic."""

import logging

from gateway.lag import BEHIND_LOG_INTERVAL_S, LAG_FRESH_S, ReportLag


def test_a_report_read_alone_sets_the_baseline_and_a_backlog_is_measured_against_it():
    lag = ReportLag()
    lag.note("bus-g", 0.4, alone=True, mono=100.0)  # clock offset + transit
    assert lag.behind(100.0) == 0.0
    lag.note("bus-g", 30.4, alone=False, mono=101.0)  # read from a backlog
    assert lag.current(101.0) == {"bus-g": 30.0}
    # a delay under the baseline is no lag (the agent's clock stepped back)
    lag.note("bus-g", 0.1, alone=False, mono=102.0)
    assert lag.behind(102.0) == 0.0


def test_an_agent_that_stops_reporting_is_not_waited_for_and_a_forgotten_one_starts_again():
    lag = ReportLag()
    lag.note("cam-c", 1.0, alone=True, mono=0.0)
    lag.note("cam-c", 21.0, alone=False, mono=1.0)
    assert lag.behind(1.0 + LAG_FRESH_S) == 20.0
    assert lag.behind(1.1 + LAG_FRESH_S) == 0.0  # stale: 0, not its last backlog
    lag.forget("cam-c")  # its last will
    assert lag.current(2.0) == {}
    lag.note("cam-c", 50.0, alone=False, mono=3.0)  # a new boot: its first delay is the base
    assert lag.behind(3.0) == 0.0


def test_being_behind_is_said_once_a_minute_and_catching_up_once():
    lag = ReportLag()
    lag.note("bus-g", 0.0, alone=True, mono=0.0)
    assert lag.to_say(0.0) is None
    lag.note("bus-g", 12.0, alone=False, mono=1.0)
    level, text = lag.to_say(1.0)
    assert level == logging.WARNING and "12 s behind agent bus-g" in text
    lag.note("bus-g", 15.0, alone=False, mono=2.0)
    assert lag.to_say(2.0) is None  # within the minute
    lag.note("bus-g", 15.0, alone=False, mono=1.0 + BEHIND_LOG_INTERVAL_S)
    assert lag.to_say(1.0 + BEHIND_LOG_INTERVAL_S)[0] == logging.WARNING
    lag.note("bus-g", 0.5, alone=False, mono=62.0)
    assert lag.to_say(62.0) == (logging.INFO, "the gateway has caught up with its agents' reports")
    assert lag.to_say(63.0) is None
