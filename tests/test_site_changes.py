"""A site file edited between two starts of the gateway on one journal (gateway.site_changes,
LiveGateway's start, ``parkguide gateway`` and ``site check --db``)."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from pathlib import Path

import pytest

from gateway.journal import Journal, stored_signs
from gateway.live import LiveGateway
from gateway.site_changes import SITE_FILE_BY, compare, outline
from parkguide import site_check
from parking import topics
from parking.site import parse_site
from tests.conftest import parkguide_cmd
from tests.gateway_support import Collector, snapshot_all_free

SMALL = (Path(__file__).resolve().parents[1] / "examples" / "small-site.yaml").read_text("utf-8")
Q_LINE = "  - {ids: Q-001..Q-008, zone: Q, kinds: [visitor], access: [L2],\n"
assert Q_LINE in SMALL
T0 = 1_800_000_000.0


def closing(first: int, last: int) -> str:
    """The small site with Q-{first}..Q-{last} closed by the site file."""
    parts = []
    if first > 1:
        parts.append(
            f"  - {{ids: Q-001..Q-{first - 1:03d}, zone: Q, kinds: [visitor], access: [L2],\n"
            "     layout: {origin: [30, -8], step: [2.5, 0]}}\n"
        )
    parts.append(
        f"  - {{ids: Q-{first:03d}..Q-{last:03d}, zone: Q, kinds: [visitor], access: [L2],"
        f" closed: true,\n     layout: {{origin: [{30 + 2.5 * (first - 1)}, -8], step: [2.5, 0]}}}}\n"
    )
    if last < 8:
        parts.append(
            f"  - {{ids: Q-{last + 1:03d}..Q-008, zone: Q, kinds: [visitor], access: [L2],\n"
            f"     layout: {{origin: [{30 + 2.5 * last}, -8], step: [2.5, 0]}}}}\n"
        )
    text = SMALL.replace(
        Q_LINE + "     layout: {origin: [30, -8], step: [2.5, 0]}}\n", "".join(parts)
    )
    assert text != SMALL
    return text


def renamed() -> str:
    """Zone Q is zone V now, and display main-gate is gate-east."""
    text = (
        SMALL.replace("{id: Q, ", "{id: V, ")
        .replace("zone: Q,", "zone: V,")
        .replace("zones: [Q]", "zones: [V]")
        .replace("  - id: main-gate\n", "  - id: gate-east\n")
    )
    assert text.count("gate-east") == 1 and "zone: V," in text
    return text


class Run:
    """Starts of an in-process gateway on one journal, each with a site file's text."""

    def __init__(self, tmp_path: Path):
        self.db = tmp_path / "journal.sqlite3"
        self.sent: list[tuple[str, bytes, bool]] = []
        self.gw: LiveGateway | None = None

    def start(self, text: str) -> LiveGateway:
        if self.gw is not None:
            self.gw.journal.close()
        self.sent.clear()
        self.gw = LiveGateway(parse_site(text), Journal(self.db), self._publish, clock=lambda: T0)
        self.gw.publish_all()
        return self.gw

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, retain))

    def closed(self) -> set[str]:
        gw = self.gw
        assert gw is not None
        return {s.id for s in gw.site.spaces if gw.state.closed[gw.site.space_index[s.id]]}

    def zone(self, zone: str) -> dict:
        gw = self.gw
        assert gw is not None
        return next(z for z in gw.zone_counts() if z.zone == zone).model_dump()

    def close(self) -> None:
        if self.gw is not None:
            self.gw.journal.close()


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    yield r
    r.close()


def test_compare_names_every_kind_of_change():
    old = outline(parse_site(closing(1, 2)))
    new = parse_site(renamed())
    changes = compare(old, new)
    assert changes.moved_zone == {f"Q-00{i}": ("Q", "V") for i in range(1, 9)}
    assert changes.opened_by_file == ["Q-001", "Q-002"]
    assert changes.zones_removed == ["Q"] and changes.displays_removed == ["main-gate"]
    assert changes.retired_topics == [
        topics.zone("courtyard", "Q"),
        topics.display_content("courtyard", "main-gate"),
    ]
    lines = "\n".join(changes.lines())
    assert "Q-001 Q->V" in lines and "zones removed: Q" in lines and "main-gate" in lines
    assert not compare(outline(new), new) and compare(None, new).lines() == []


def test_a_closure_added_to_the_site_file_closes_the_spaces_at_the_next_start(run):
    """It was ignored: the journal's row (open) won over the file, and cars were sent to
    the spaces the file closed."""
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, T0)
    gw = run.start(closing(1, 4))
    assert run.closed() == {"Q-001", "Q-002", "Q-003", "Q-004"}
    assert run.zone("Q")["closed"] == 4 and run.zone("Q")["free"] == 4
    events = [e for e in gw.journal.events(50) if e[6] == SITE_FILE_BY]
    assert sorted((e[2], e[4]) for e in events) == [(f"Q-00{i}", "closed") for i in range(1, 5)]
    # the reviewer's car was sent to Q-004: the nearest free visitor space is Q-005 now
    for _ in range(4):
        gw.handle(topics.arrival("courtyard", "main"), json.dumps({"class": "visitor"}).encode())
    answers = [json.loads(p) for t, p, _ in run.sent if t == topics.assignment("courtyard", "main")]
    assert [a["space"] for a in answers] == ["Q-005", "Q-006", "Q-007", "Q-008"]


def test_a_closure_taken_out_of_the_site_file_opens_the_spaces_but_not_a_managers(run):
    """It was ignored too: the spaces stayed closed with nothing in the audit to say why."""
    gw = run.start(closing(1, 4))
    snapshot_all_free(gw, gw.site, T0)
    gw.control_space("Q-005", "close", "alice", "oil on the floor")
    gw = run.start(closing(1, 8))  # Q-005 already closed: the file changes nothing there
    assert run.closed() == {f"Q-00{i}" for i in range(1, 9)}
    run.start(SMALL)
    assert run.closed() == {"Q-005"}  # the manager's closure stands
    assert run.zone("Q")["closed"] == 1


def test_a_managers_opening_of_a_file_closed_space_stands_while_the_file_is_unchanged(run):
    gw = run.start(closing(1, 4))
    gw.control_space("Q-001", "open", "alice", None)
    run.start(closing(1, 4))
    assert run.closed() == {"Q-002", "Q-003", "Q-004"}


def test_retained_topics_the_site_file_dropped_are_cleared_once(run, caplog):
    """zones/Q and displays/main-gate/content stayed retained with their last counts for good,
    and the removed display's content was republished at every start."""
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, T0)
    old_zone, old_sign = (
        topics.zone("courtyard", "Q"),
        topics.display_content("courtyard", "main-gate"),
    )
    assert old_sign in {t for t, _, _ in stored_signs(run.db)}
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        run.start(renamed())
    cleared = [(t, p, r) for t, p, r in run.sent if p == b""]
    assert sorted(cleared) == sorted([(old_zone, b"", True), (old_sign, b"", True)])
    assert old_sign not in {t for t, _, _ in stored_signs(run.db)}
    assert "zones removed: Q" in caplog.text and "displays removed: main-gate" in caplog.text
    run.start(renamed())
    assert not [m for m in run.sent if m[1] == b""]  # journaled: not again


def test_a_new_site_id_retires_every_topic_of_the_old_one(run, caplog):
    run.start(SMALL)
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        run.start(SMALL.replace("id: courtyard", "id: courtyard-new"))
    cleared = {t for t, p, _ in run.sent if p == b""}
    assert cleared == {
        topics.zone("courtyard", "P"),
        topics.zone("courtyard", "Q"),
        topics.display_content("courtyard", "main-gate"),
    }
    assert "site id changed from 'courtyard'" in caplog.text


def test_site_check_with_the_journal_says_what_the_gateway_will_find(run, tmp_path, capsys):
    run.start(SMALL)
    run.close()
    edited = tmp_path / "edited.yaml"
    edited.write_text(closing(3, 3).replace("zones: [Q]", "zones: [P, Q]"), encoding="utf-8")
    args = argparse.Namespace(file=str(edited), json=True, db=str(run.db))
    assert site_check.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changes"] == ["closed by the site file now: Q-003"]
    args.db = str(tmp_path / "missing.sqlite3")
    assert site_check.main(args) == 2
    assert "no such journal" in capsys.readouterr().err


def test_a_refused_site_file_publishes_nothing_and_a_removed_display_is_not_republished(
    run, tmp_path, mosquitto, subprocess_env
):
    """The start-up fast path republished the journal's signs before the site file was
    read: a refused file still sent them, and so did a file without the display."""
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, time.time())
    run.close()
    sign_topic = topics.display_content("courtyard", "main-gate")
    watcher = Collector(mosquitto.port, topics.displays_all("courtyard"))
    try:
        bad = tmp_path / "bad.yaml"
        bad.write_text(SMALL.replace("zones: [Q]", "zones: [NOPE]"), encoding="utf-8")
        cmd = parkguide_cmd("gateway", "--site", str(bad), "--broker", mosquitto.url)
        done = subprocess.run(
            [*cmd, "--db", str(run.db)], env=subprocess_env, capture_output=True, timeout=60
        )
        assert done.returncode == 2 and b"site file refused" in done.stderr
        time.sleep(0.5)
        assert watcher.messages == []
        good = tmp_path / "renamed.yaml"
        good.write_text(renamed(), encoding="utf-8")
        cmd = parkguide_cmd("gateway", "--site", str(good), "--broker", mosquitto.url)
        proc = subprocess.Popen(
            [*cmd, "--db", str(run.db)], env=subprocess_env, stderr=subprocess.PIPE
        )
        try:
            watcher.wait_for(topics.display_content("courtyard", "gate-east"), timeout=30)
        finally:
            proc.terminate()
            proc.wait(10)
        assert [m.payload for m in watcher.on(sign_topic)] in ([], [b""])
    finally:
        watcher.stop()


def test_events_keep_the_zone_of_their_time_when_a_space_moves(run):
    """History and exports filed a moved space's past under its new zone."""
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, T0)
    gw.control_space("P-021", "close", "alice", None)
    moved = SMALL.replace("P-001..P-024", "P-001..P-020").replace(
        Q_LINE,
        "  - {ids: P-021..P-024, zone: Q, kinds: [visitor], access: [L2],\n"
        "     layout: {origin: [20, -8], step: [2.5, 0]}}\n" + Q_LINE,
    )
    assert parse_site(moved).space("P-021").zone == "Q"
    gw = run.start(moved)
    gw.control_space("P-021", "open", "alice", None)
    gw.flush_checkpoint()
    rows = gw.journal.conn.execute(
        "SELECT new, zone FROM events WHERE space = 'P-021' ORDER BY id"
    ).fetchall()
    assert rows == [("free", "P"), ("closed", "P"), ("free", "Q")]


def test_a_managers_closure_of_a_space_the_file_closes_too_stands_without_a_reason(run):
    """Closing an already closed space without a reason journaled nothing, so when the
    file stopped closing it the manager's closure was lost and the space reopened."""
    gw = run.start(closing(1, 4))
    gw.control_space("Q-001", "close", "alice", None)
    run.start(SMALL)
    assert run.closed() == {"Q-001"}


def test_a_journal_of_another_site_is_refused_unless_the_rename_is_asked_for(
    run, tmp_path, mosquitto, subprocess_env
):
    """A second site's gateway started on the first one's journal (a unit copied without
    changing --db) took it over as a rename: it cleared the first site's retained signs
    and zone counts, took its broker session and wrote its events into the first site's
    history. It is refused now, with what to do; a real rename says so with a flag."""
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, time.time())
    run.close()
    kept = topics.zone("courtyard", "Q")
    watcher = Collector(
        mosquitto.port, topics.zones_all("courtyard"), f"{topics.PREFIX}/+/gateway/+"
    )
    try:
        watcher.client.publish(kept, b'{"zone": "Q"}', qos=1, retain=True).wait_for_publish(5)
        watcher.wait_for(kept)
        other = tmp_path / "other.yaml"
        other.write_text(SMALL.replace("id: courtyard", "id: orchard"), encoding="utf-8")
        cmd = parkguide_cmd("gateway", "--site", str(other), "--broker", mosquitto.url)
        done = subprocess.run(
            [*cmd, "--db", str(run.db)], env=subprocess_env, capture_output=True, timeout=60
        )
        err = done.stderr.decode()
        assert done.returncode == 2, err
        assert "belongs to site 'courtyard', not 'orchard'" in err, err
        assert "--rename-site-from courtyard" in err
        time.sleep(0.5)
        assert [m.payload for m in watcher.on(kept)] == [b'{"zone": "Q"}']  # not cleared
        assert watcher.on(topics.gateway_availability("orchard")) == []
        assert Journal(run.db).meta("site_id") == "courtyard"
        # a rename named for another old id is refused as well
        wrong = subprocess.run(
            [*cmd, "--db", str(run.db), "--rename-site-from", "elsewhere"],
            env=subprocess_env,
            capture_output=True,
            timeout=60,
        )
        assert wrong.returncode == 2 and b"belongs to site 'courtyard'" in wrong.stderr
        proc = subprocess.Popen(
            [*cmd, "--db", str(run.db), "--rename-site-from", "courtyard"],
            env=subprocess_env,
            stderr=subprocess.PIPE,
        )
        try:
            watcher.wait_for(
                topics.gateway_availability("orchard"), lambda p: p == "online", timeout=30
            )
            watcher.wait_for(kept, lambda p: p == "", timeout=10)  # retired, as a rename
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        watcher.stop()


def test_one_gateway_per_journal(tmp_path, mosquitto, subprocess_env):
    """A second gateway on a running one's journal is refused and changes nothing; the
    lock goes with the process, so a restart after kill -9 is not blocked."""
    site = tmp_path / "small.yaml"
    site.write_text(SMALL, encoding="utf-8")
    db = tmp_path / "journal.sqlite3"
    cmd = [
        *parkguide_cmd("gateway", "--site", str(site), "--broker", mosquitto.url),
        "--db",
        str(db),
    ]
    availability = topics.gateway_availability("courtyard")
    watcher = Collector(mosquitto.port, availability)
    first = subprocess.Popen(cmd, env=subprocess_env, stderr=subprocess.DEVNULL)
    later = None
    try:
        watcher.wait_for(availability, lambda p: p == "online", timeout=30)
        second = subprocess.run(cmd, env=subprocess_env, capture_output=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"another gateway (pid {first.pid}) has it open".encode() in second.stderr
        time.sleep(1.0)
        assert first.poll() is None
        assert [m.payload for m in watcher.on(availability)] == [b"online"]  # never thrown off
        first.kill()
        first.wait(10)
        later = subprocess.Popen(cmd, env=subprocess_env, stderr=subprocess.DEVNULL)
        n = len(watcher.on(availability))
        watcher.wait_for(availability, lambda p: p == "online", timeout=30, after=n)
    finally:
        for proc in (first, later):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        watcher.stop()


def test_the_journal_lock_holds_through_a_symlink_and_a_root_run(tmp_path):
    """A second path to the same journal (a symlink) is the same journal; a lock file a
    one-off root run made belongs to the journal's owner, so the service's user can take
    it afterwards."""
    import os

    from gateway.journal import JournalInUse, lock_journal

    real = tmp_path / "data" / "journal.sqlite"
    real.parent.mkdir()
    Journal(real).close()
    alias = tmp_path / "alias.sqlite"
    alias.symlink_to(real)
    with (
        lock_journal(real),
        pytest.raises(JournalInUse, match=f"pid {os.getpid()}"),
        lock_journal(alias),
    ):
        pass
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)  # nobody's journal, locked by a root run
        lock = real.with_name("journal.sqlite.lock")
        lock.unlink()
        with lock_journal(real):
            pass
        assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534)


def _stored_closures(gw: LiveGateway) -> dict:
    """The zone closures in the journal, as the stand-alone API reads them."""
    from parking.closures import ZONE_CLOSURES_KEY, load

    return load(gw.journal.meta(ZONE_CLOSURES_KEY))


def test_a_space_moved_out_of_a_closed_zone_leaves_its_closure_and_stays_closed(run, caplog):
    """Zone P closed, then the file moves P-021..P-024 to zone Q: they stay closed (on
    their own), P's closure no longer lists them, and opening P leaves them closed."""
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, T0)
    gw.control_zone("P", "close", "alice", "cleaning")
    assert len(gw.zone_closures()["P"].spaces) == 24
    moved = SMALL.replace("P-001..P-024", "P-001..P-020").replace(
        Q_LINE,
        "  - {ids: P-021..P-024, zone: Q, kinds: [visitor], access: [L2],\n"
        "     layout: {origin: [20, -8], step: [2.5, 0]}}\n" + Q_LINE,
    )
    caplog.set_level(logging.WARNING, logger="gateway.live")
    gw = run.start(moved)
    p_now = {f"P-{i:03d}" for i in range(1, 21)}
    moved_out = {f"P-{i:03d}" for i in range(21, 25)}
    assert gw.zone_closures()["P"].spaces == p_now
    assert _stored_closures(gw)["P"].spaces == p_now  # GET /zones/closures counts 20
    assert run.closed() == p_now | moved_out  # a closed space does not open by itself
    said = [r.getMessage() for r in caplog.records if "zone P's closure" in r.getMessage()]
    assert len(said) == 1 and "4 of its 24 spaces" in said[0] and "P-021" in said[0]

    caplog.clear()
    gw = run.start(moved)  # said once: the journal keeps the closure as it is now
    assert not [r for r in caplog.records if "closure" in r.getMessage()]
    gw.control_zone("P", "open", "alice", None)
    assert run.closed() == moved_out
    assert gw.zone_closures() == {} and _stored_closures(gw) == {}


def test_the_closure_of_a_zone_the_site_file_dropped_is_dropped(run, caplog):
    gw = run.start(SMALL)
    snapshot_all_free(gw, gw.site, T0)
    gw.control_zone("Q", "close", "alice", "event")
    caplog.set_level(logging.WARNING, logger="gateway.live")
    gw = run.start(renamed())  # zone Q is zone V now
    assert gw.zone_closures() == {} and _stored_closures(gw) == {}
    assert run.closed() == {f"Q-{i:03d}" for i in range(1, 9)}  # they stay closed
    said = [r.getMessage() for r in caplog.records if "zone Q's closure" in r.getMessage()]
    assert len(said) == 1 and "no longer has zone Q" in said[0]
