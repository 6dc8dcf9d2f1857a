# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""The events CSV as a residents' committee opens it: in Excel on a Chinese Windows (UTF-8 only
with a byte order mark; without one it reads the file as GBK) and by the site's days."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from api_support import (  # noqa: F401
    PASSWORD,
    GatewayHarness,
    client,
    harness,
    journal_with_users,
    settings,
    tokens,
    users,
)
from fastapi.testclient import TestClient

import api.journal
from api.app import create_app
from parking.site import EXAMPLE_SITE, load_site

REASON = "地锁损坏，等待维修"
BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def closed_with_reason(client, tokens, harness):
    harness.fill()
    h = tokens["manager"]
    r = client.post("/api/v1/spaces/D-004/close", json={"reason": REASON}, headers=h)
    assert r.status_code == 202, r.text
    assert client.post("/api/v1/spaces/D-004/open", headers=h).status_code == 202
    return "D-004"


def rows_of(body: bytes) -> tuple[list[str], list[dict[str, str]]]:
    text = body.decode("utf-8-sig")
    header = next(csv.reader(io.StringIO(text)))
    return header, list(csv.DictReader(io.StringIO(text)))


def test_csv_starts_with_a_bom_and_keeps_a_chinese_reason(client, tokens, closed_with_reason):
    r = client.get(
        "/api/v1/events.csv", params={"space": closed_with_reason}, headers=tokens["viewer"]
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    body = r.content
    assert body.startswith(BOM)
    assert body.count(BOM) == 1
    header, rows = rows_of(body)
    assert header == [
        "id", "time_utc", "time_local", "ts", "space", "zone", "old", "new", "source", "agent",
        "seq", "reason", "zone_closure",
    ]  # fmt: skip
    assert [(row["new"], row["reason"]) for row in rows[-2:]] == [("closed", REASON), ("free", "")]
    # what Excel shows for the file: the BOM makes it UTF-8, not the ANSI code page
    assert REASON in body.decode("utf-8-sig")


def test_time_local_is_the_same_instant_in_the_site_time_zone(
    client, tokens, harness, closed_with_reason
):
    assert harness.site.timezone == "Asia/Shanghai"
    r = client.get("/api/v1/events.csv", headers=tokens["viewer"])
    _, rows = rows_of(r.content)
    assert rows
    shanghai = ZoneInfo("Asia/Shanghai")
    for row in rows:
        utc = datetime.fromisoformat(row["time_utc"])
        local = datetime.fromisoformat(row["time_local"])
        assert row["time_local"].endswith("+08:00"), row
        assert local.utcoffset() == timedelta(hours=8)
        assert local == utc  # one instant, two clocks
        assert local == utc.astimezone(shanghai)
        assert abs(local.timestamp() - float(row["ts"])) < 1e-6  # to the microsecond
    # an event at 23:30 UTC is on the next day in Shanghai: the export carries that day
    late = datetime(2025, 6, 1, 23, 30, tzinfo=ZoneInfo("UTC"))
    assert late.astimezone(shanghai).isoformat().startswith("2025-06-02T07:30")


def test_paged_export_has_one_bom_and_the_truncated_trailer(
    client, tokens, harness, closed_with_reason, monkeypatch
):
    """Several journal pages and several streamed chunks: one BOM, rows in order, and the
    ``# truncated`` line last when a limit cuts the export short."""
    monkeypatch.setattr(api.journal, "EXPORT_PAGE", 7)
    for n in range(3):
        harness.fill({s.id for s in harness.site.spaces[n::3]})
    whole = client.get("/api/v1/events.csv", headers=tokens["viewer"]).content
    assert whole.startswith(BOM) and whole.count(BOM) == 1
    _, rows = rows_of(whole)
    ids = [int(row["id"]) for row in rows]
    assert len(ids) > 600 and ids == sorted(ids)  # more than one chunk of 500 rows
    assert all(row["time_local"].endswith("+08:00") for row in rows)
    assert REASON in {row["reason"] for row in rows}

    limit = len(ids) - 1
    cut = client.get(
        "/api/v1/events.csv", params={"limit": limit}, headers=tokens["viewer"]
    ).content
    assert cut.startswith(BOM) and cut.count(BOM) == 1
    lines = cut.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("id,time_utc,time_local,ts,")
    assert len(lines) == 1 + limit + 1
    assert lines[-1].startswith("# truncated: more than")


@pytest.mark.parametrize(
    "text",
    ["=1+1", "+1", "-1+2", "@SUM(A1)", " =1+1", '\t=HYPERLINK("x")', "\r=1", "＝1+1"],
)
def test_a_cell_a_spreadsheet_would_run_as_a_formula_is_quoted(text):
    from api.routes.events import _cell

    assert _cell(text) == "'" + text
    assert _cell(REASON) == REASON and _cell("A-001") == "A-001" and _cell(-1.5) == -1.5


def test_a_reason_with_control_characters_is_refused_and_a_formula_exported_inert(
    client, tokens, harness
):
    """A tab or CR in front of a formula got past the export's guard: such a reason is now
    refused (422, nothing journaled); one a blank in front of '=' (stored without it) is
    exported quoted."""
    harness.fill()
    h = tokens["manager"]
    bad = client.post("/api/v1/spaces/D-005/close", json={"reason": "\t=1+1"}, headers=h)
    assert bad.status_code == 422 and "U+0009" in bad.text
    for sneaky in ("a\u202e=1+1", "line\nbreak"):  # a bidi override, a line break
        r = client.post("/api/v1/spaces/D-005/close", json={"reason": sneaky}, headers=h)
        assert r.status_code == 422, sneaky
    assert client.get("/api/v1/spaces/D-005", headers=h).json()["state"] != "closed"
    r = client.post("/api/v1/spaces/D-005/close", json={"reason": " =1+1"}, headers=h)
    assert r.status_code == 202, r.text
    assert client.post("/api/v1/spaces/D-005/open", headers=h).status_code == 202
    _, rows = rows_of(
        client.get("/api/v1/events.csv", params={"space": "D-005"}, headers=h).content
    )
    assert [row["reason"] for row in rows if row["reason"]][0] == "'=1+1"


def test_reasons_keep_the_spaces_managers_type(client, tokens, harness):
    """A Chinese input method's full-width space, a no-break space pasted from a chat, an
    emoji joined with ZWJ: all ordinary text, taken as typed."""
    harness.fill()
    h = tokens["manager"]
    for reason in ("传感器损坏\u3000待修", "broken\u00a0lock", "👨\u200d🔧 on the way"):
        r = client.post("/api/v1/spaces/D-006/close", json={"reason": reason}, headers=h)
        assert r.status_code == 202, (reason, r.text)
        assert client.post("/api/v1/spaces/D-006/open", headers=h).status_code == 202
    _, rows = rows_of(
        client.get("/api/v1/events.csv", params={"space": "D-006"}, headers=h).content
    )
    assert "传感器损坏\u3000待修" in [row["reason"] for row in rows]


SHARED_TS = 1765083931.9925373
"""One instant for a whole snapshot's events, whose milliseconds round up (.993)."""


def test_an_export_resumed_from_a_row_loses_nothing_at_one_instant(tmp_path):
    """A limit cuts the export inside a run of events sharing one ts: resumed with
    ``since=`` the last row's ``ts`` or with ``after=`` the id the trailer names, every
    event is there; ``ts`` is the stored time exactly and ``time_utc`` the same instant."""
    db = journal_with_users(tmp_path)
    harness = GatewayHarness(load_site(EXAMPLE_SITE), db, clock=lambda: SHARED_TS)
    try:
        harness.fill()  # every space from unknown to free, at SHARED_TS
        with TestClient(create_app(harness.gateway, settings(), db_path=str(db))) as client:
            r = client.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            client.cookies.clear()

            def export(**params) -> tuple[list[dict[str, str]], str]:
                r = client.get("/api/v1/events.csv", params=params, headers=h)
                assert r.status_code == 200, r.text
                rows = [row for row in rows_of(r.content)[1] if not row["id"].startswith("#")]
                return rows, r.content.decode("utf-8-sig").splitlines()[-1]

            whole, _ = export()
            ids = [int(row["id"]) for row in whole]
            assert len(ids) > 30
            for row in whole:
                assert float(row["ts"]) == SHARED_TS  # the stored float, not rounded
                utc = datetime.fromisoformat(row["time_utc"])
                assert abs(utc.timestamp() - SHARED_TS) < 1e-6, row  # one instant
                assert datetime.fromisoformat(row["time_local"]) == utc

            first, trailer = export(limit=10)
            last = int(first[-1]["id"])
            assert trailer.startswith("# truncated") and f"resume with after={last}" in trailer
            by_ts, _ = export(since=first[-1]["ts"])
            assert sorted({int(r["id"]) for r in first + by_ts}) == ids  # since is inclusive
            by_id, _ = export(after=last)
            assert [int(r["id"]) for r in first + by_id] == ids  # neither lost nor repeated
            assert export(after=ids[-1])[0] == []
    finally:
        harness.close()
