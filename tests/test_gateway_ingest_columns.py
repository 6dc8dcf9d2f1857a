"""The gateway's column-wise report path (ReportGate.accept) gives exactly the verdict of
the long way (pydantic's OccupancyReport, then ReportGate.check), for valid reports and
for every kind of malformed one; and it really is the path the usual report takes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ingest import AcceptedReport, Rejection, ReportGate, decode_report
from parking.site import EXAMPLE_SITE, load_site

SITE = load_site(EXAMPLE_SITE)
SOURCE = "bus-g"
OWN = sorted(SITE.spaces_of_source(SOURCE))
OTHER = sorted(set(SITE.space_index) - set(OWN))
AGENT = "serial-bus-g"
T = 1_000_000.0

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=2), st.just({}))
space_ids = st.one_of(
    st.sampled_from(OWN), st.sampled_from(OTHER), st.sampled_from(["Z-999", "bad id", "", 7])
)
states = st.sampled_from(["free", "occupied", "unknown", "closed", "FREE", "busy", 1, None])
times = st.one_of(
    st.floats(T - 10, T + 10),
    st.integers(0, 2 * int(T)),
    st.sampled_from([-1.0, 5e9, 1e300, True, "1", None, 2**80]),
)


@st.composite
def observations(draw) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "space": draw(st.sampled_from(OWN[:16])),
        "state": draw(st.sampled_from(["free", "occupied"])),
        "since": draw(st.floats(T - 5, T + 5)),
    }
    for key, values in (("space", space_ids), ("state", states), ("since", times)):
        if draw(st.integers(0, 9)) == 0:
            obs[key] = draw(values)
    extra = draw(st.integers(0, 19))
    if extra == 0:
        obs["confidence"] = draw(st.one_of(st.floats(0, 1), json_scalars))
    elif extra == 1:
        obs["note"] = 1
    elif extra == 2:
        del obs[draw(st.sampled_from(["space", "state", "since"]))]
    return obs


@st.composite
def reports(draw) -> tuple[str, bytes]:
    obs = draw(st.lists(observations(), max_size=12, unique_by=lambda o: repr(o.get("space"))))
    if obs and draw(st.integers(0, 7)) == 0:
        obs.append(dict(obs[0]))  # a space listed twice
    body: dict[str, Any] = {
        "agent": AGENT,
        "source": SOURCE,
        "boot": draw(st.sampled_from(["b1", "b2", "b0"])),
        "seq": draw(st.integers(0, 6)),
        "ts": draw(st.floats(T - 5, T + 5)),
        "kind": draw(st.sampled_from(["delta", "delta", "snapshot"])),
        "spaces": obs,
    }
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*body, "v", "extra"]))
        if draw(st.booleans()):
            body[key] = draw(json_values)
        else:
            body.pop(key, None)
    if draw(st.integers(0, 5)) == 0:
        body["v"] = draw(st.sampled_from([1, 1.0, True, 2]))
    if draw(st.integers(0, 5)) == 0:
        body["source"] = draw(st.sampled_from(["cam-c", "nowhere", "bad id"]))
    agent = draw(st.sampled_from([AGENT, AGENT, "other-agent"]))
    raw = json.dumps(body).encode()
    if draw(st.integers(0, 15)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]  # cut short: not JSON
    return agent, raw


def long_way(gate: ReportGate, agent: str, payload: bytes, known: np.ndarray):
    report = decode_report(agent, payload)
    if isinstance(report, Rejection):
        return report
    return gate.check(report, known)


def same(a: AcceptedReport | Rejection, b: AcceptedReport | Rejection) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, Rejection):
        assert a == b
        return
    assert isinstance(b, AcceptedReport)
    for name in ("agent", "source", "boot", "seq", "ts", "kind", "gap", "rejected"):
        assert getattr(a, name) == getattr(b, name), name
    for name, dtype in (("spaces", np.int64), ("states", np.int8), ("since", np.float64)):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reports(),
    st.sampled_from([None, ("b1", 2), ("b2", 0)]),
    st.lists(st.sampled_from([SITE.space_index[s] for s in OWN[:8]]), max_size=4),
)
def test_the_columns_give_the_verdict_of_the_long_way(report, sequence, newer):
    agent, payload = report
    gate = ReportGate(SITE)
    if sequence is not None:
        gate.restore(AGENT, *sequence)
        if sequence[0] == "b2":
            gate.commit(
                AcceptedReport(AGENT, SOURCE, "b3", 0, T, "delta", *([np.zeros(0)] * 3), False)
            )  # b2 retired: its reports are stale
            gate.restore(AGENT, "b3", 0)
            gate._sequences[AGENT].retired.add("b2")
    known = np.full(len(SITE.spaces), T - 100.0)
    known[newer] = T + 100.0  # these spaces were seen later than the report says
    expected = long_way(gate, agent, payload, known)
    same(gate.accept(agent, payload, known), expected)
    fast = gate._accept_usual(agent, payload, known, False)
    if fast is not None:
        same(fast, expected)


def test_the_usual_report_takes_the_columns():
    gate = ReportGate(SITE)
    for kind in ("delta", "snapshot"):
        body = {
            "agent": AGENT,
            "source": SOURCE,
            "boot": "b1",
            "seq": 1,
            "ts": T,
            "kind": kind,
            "spaces": [{"space": s, "state": "occupied", "since": T} for s in OWN[:50]],
        }
        payload = json.dumps(body).encode()
        known = np.zeros(len(SITE.spaces))
        fast = gate._accept_usual(AGENT, payload, known, False)
        assert isinstance(fast, AcceptedReport)
        same(fast, long_way(gate, AGENT, payload, known))
        if kind == "snapshot":  # the spaces it leaves out are unknown
            assert len(fast.spaces) == len(OWN)


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda b: b.update(seq=1), "duplicate"),
        (lambda b: b.update(boot="b0"), "stale_boot"),
        (lambda b: b.update(source="nowhere"), "unknown_source"),
        # wrong types are errors, not guesses (strict decoding)
        (lambda b: b.update(seq="2"), "invalid"),
        (lambda b: b.update(seq=True), "invalid"),
        (lambda b: b.update(seq=2.0), "invalid"),
        (lambda b: b.update(ts=str(T)), "invalid"),
        (lambda b: b["spaces"][0].update(since=str(T)), "invalid"),
        (lambda b: b.update(seq=2**63), "invalid"),  # beyond what the journal can keep
        (lambda b: b.update(extra=1), "invalid"),
        (lambda b: b["spaces"][0].update(space="Z-999"), "unknown_space"),
        (lambda b: b["spaces"][0].update(space=OTHER[0]), "foreign_space"),
        (lambda b: b["spaces"][0].update(since=1.0), "older_than_known"),
    ],
)
def test_the_unusual_report_is_explained_the_long_way(change, reason):
    gate = ReportGate(SITE)
    gate.restore(AGENT, "b1", 1)
    gate._sequences[AGENT].retired.add("b0")
    body = {
        "agent": AGENT,
        "source": SOURCE,
        "boot": "b1",
        "seq": 2,
        "ts": T,
        "kind": "delta",
        "spaces": [{"space": s, "state": "free", "since": T} for s in OWN[:3]],
    }
    change(body)
    payload = json.dumps(body).encode()
    known = np.full(len(SITE.spaces), 10.0)
    assert gate._accept_usual(AGENT, payload, known, False) is None
    verdict = gate.accept(AGENT, payload, known)
    same(verdict, long_way(gate, AGENT, payload, known))
    if reason is None:
        assert isinstance(verdict, AcceptedReport)
    elif isinstance(verdict, Rejection):
        assert verdict.reason == reason
    else:
        assert [r.reason for r in verdict.rejected] == [reason]
