"""`parkguide demo`: the whole community from one command, from any directory, with no
terminal, with port 1883 taken; SIGTERM stops it and leaves nothing running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, parkguide_cmd

pytestmark = pytest.mark.timeout(240)


def _descendants(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_demo(proc: subprocess.Popen, run_dir: Path) -> None:
    """A test's demo and whatever it started in ``run_dir``, gone whatever the test did."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in _processes_mentioning(str(run_dir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_demo_runs_everything_and_stops_cleanly(tmp_path, subprocess_env):
    run_dir = tmp_path / "demo-run"
    http = free_port()
    blocker = socket.socket()
    with contextlib.suppress(OSError):  # 1883 taken, as on a laptop with a broker installed
        blocker.bind(("127.0.0.1", 1883))
        blocker.listen()
    proc = subprocess.Popen(
        parkguide_cmd(
            "demo", "--http", f"127.0.0.1:{http}", "--run-dir", str(run_dir), "--speed", "30"
        ),
        cwd=tmp_path,
        stdin=subprocess.PIPE,  # a technician's commands (below)
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=subprocess_env,
    )
    try:
        zones = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            try:
                zones = httpx.get(f"http://127.0.0.1:{http}/api/v1/zones", timeout=2).json()
                if len(zones) == 6 and all(z["free"] + z["occupied"] == z["total"] for z in zones):
                    break  # every zone live: buses, camera, agents and gateway all up
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        else:
            pytest.fail(f"the demo's zones never all came live: {zones}")
        assert {z["zone"] for z in zones} == {"A", "B", "C", "D", "E", "F"}
        children = _descendants(proc.pid)
        # broker, 2 bus simulators, 2 serial agents, camera simulator and agent, gateway, drivers
        assert len(children) >= 9, children
        # a technician breaks it on purpose: the camera's stream cut from the demo's stdin
        # (the camera zone goes unknown: its sign shows --), a typo is answered, and the
        # stream restored brings the zone back
        proc.stdin.write(b"cam-c fault camera off\nbogus\n")
        proc.stdin.flush()
        _wait_zone(http, "C", lambda z: z["unknown"] == z["total"], proc)
        proc.stdin.write(b"cam-c clear camera\n")
        proc.stdin.flush()
        _wait_zone(http, "C", lambda z: z["unknown"] == 0, proc)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
        assert proc.returncode == 0, out[-3000:]
        assert "'bogus' is not a command here" in out
        assert "login: demo-manager / " in out
        assert "nothing left running" in out
        time.sleep(0.5)
        assert _alive(children) == set()
        assert _processes_mentioning(str(run_dir)) == []
    finally:
        blocker.close()
        _kill_demo(proc, run_dir)


def _wait_zone(http: int, zone: str, ok, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    z = None
    while time.monotonic() < deadline:
        assert proc.poll() is None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            zones = httpx.get(f"http://127.0.0.1:{http}/api/v1/zones", timeout=2).json()
            z = next(x for x in zones if x["zone"] == zone)
            if ok(z):
                return
        time.sleep(0.5)
    pytest.fail(f"zone {zone} never became as expected: {z}")


def _msg(topic: str, payload: bytes):
    return type("Msg", (), {"topic": topic, "payload": payload})()


def test_the_demo_view_shows_signs_in_both_languages_and_skips_bad_content():
    """Content that is not the contract's is counted and left out (never a crash of the
    view); a sign line reads in Chinese and English, as the driver sees it."""
    from parkguide.demo import StatusBoard
    from parking import topics
    from parking.broker import BrokerConfig
    from parking.site import EXAMPLE_SITE, load_site

    site = load_site(EXAMPLE_SITE)
    board = StatusBoard(site.id, BrokerConfig.from_url(f"mqtt://127.0.0.1:{free_port()}"))
    try:
        sign = topics.display_content(site.id, site.displays[0].id)
        for bad in (b'{"expires": 9999999999}', b"[1]", b"not json", b'{"zone": 1}'):
            board._on_message(None, None, _msg(sign, bad))
        board._on_message(None, None, _msg(topics.zone(site.id, site.zones[0].id), b"[]"))
        assert board.bad_payloads == 5
        assert not board.displays and not board.zones
        now = time.time()
        line = {"arrow": "left", "count": None, "status": "full"}
        content = {
            "display": site.displays[0].id,
            "lines": [
                {
                    **line,
                    "label": {"zh": "A区", "en": "Zone A"},
                    "text": {"zh": "满", "en": "FULL"},
                },
                {
                    **line,
                    "count": 12,
                    "status": "ok",
                    "label": {"zh": "B区", "en": "Zone B"},
                    "text": {"zh": "12", "en": "12"},
                },
            ],
            "ts": now,
            "expires": now + 60,
        }
        board._on_message(None, None, _msg(sign, json.dumps(content).encode()))
        text = "\n".join(board.render_text(site))
        assert "A区/Zone A← 满 FULL" in text
        assert "B区/Zone B← 12" in text and "bad payloads 5" in text
        board._on_message(None, None, _msg(sign, b""))  # cleared, not bad
        assert not board.displays and board.bad_payloads == 5
    finally:
        board.stop()


def test_the_demo_refuses_a_bad_broker_url(capsys):
    from parkguide.cli import main

    rc = main(["demo", "--broker", "foo://bar", "--http", f"127.0.0.1:{free_port()}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--broker" in err and "Traceback" not in err


def test_the_demo_says_when_a_part_died():
    """The status loop ends at once with True when a part (not the drivers) has died, so
    the demo exits non-zero and keeps its logs."""
    from parkguide.demo import _run_status

    child = type(
        "Child",
        (),
        {"name": "gateway", "proc": type("P", (), {"returncode": -9}), "log_path": "gateway.log"},
    )
    sup = type("Sup", (), {"dead": lambda self: [child], "tail": lambda self, c: "killed"})()
    board = type("Board", (), {"render_text": lambda self, site: []})()
    started = time.monotonic()
    assert _run_status(board, None, "", threading.Event(), sup, None) is True
    assert time.monotonic() - started < 5
    quiet = type("Sup", (), {"dead": lambda self: [], "tail": lambda self, c: ""})()
    assert _run_status(board, None, "", threading.Event(), quiet, 1.0) is False


GRACE_S = 3.0
# the gateway of the demo under test hears an agent as never seen after GRACE_S, not a minute
_GRACE_HOOK = f"""
import sys

if sys.argv[1:2] == ["gateway"]:
    import api.alerts
    import api.live

    api.alerts.NEVER_SEEN_GRACE_S = api.live.NEVER_SEEN_GRACE_S = {GRACE_S}
"""


def test_the_demo_without_camera_raises_no_alert_for_the_camera_it_left_out(
    tmp_path, subprocess_env
):
    """Reproduced: `parkguide demo --no-camera` raised a critical agent_never_seen for the
    camera agent it was told not to start, a minute after the start. The demo runs on the
    site without its cameras: the gateway lists only the agents it started."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_GRACE_HOOK)
    path = [str(hooks), *filter(None, [subprocess_env.get("PYTHONPATH")])]
    env = {**subprocess_env, "PYTHONPATH": os.pathsep.join(path)}
    run_dir = tmp_path / "demo-run"
    http = free_port()
    base = f"http://127.0.0.1:{http}/api/v1"
    proc = subprocess.Popen(
        parkguide_cmd(
            "demo",
            "--http",
            f"127.0.0.1:{http}",
            "--run-dir",
            str(run_dir),
            "--speed",
            "30",
            "--no-camera",
        ),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True
    )
    reader.start()
    try:
        zones = password = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(lines).decode(errors="replace")[-3000:]
            said = b"".join(lines).decode(errors="replace")
            if password is None and "login: demo-manager / " in said:
                password = said.split("login: demo-manager / ", 1)[1].split()[0]
            try:
                zones = {z["zone"]: z for z in httpx.get(f"{base}/zones", timeout=2).json()}
                live = [z for zid, z in zones.items() if zid != "C"]
                if len(zones) == 6 and all(z["free"] + z["occupied"] == z["total"] for z in live):
                    break  # both buses, their agents and the gateway up
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        else:
            pytest.fail(f"the demo's bus zones never all came live: {zones}")
        assert password
        # zone C is the camera's: its spaces have no sensor, unknown
        assert zones["C"]["total"] == 40 and zones["C"]["free"] + zones["C"]["occupied"] == 0
        with httpx.Client(base_url=base, timeout=5) as client:
            r = client.post("/auth/login", json={"name": "demo-manager", "password": password})
            assert r.status_code == 200, r.text
            headers = {"Authorization": f"Bearer {r.json()['token']}"}
            time.sleep(GRACE_S + 2)  # well past the grace since the gateway reached the broker
            alerts = client.get("/alerts", headers=headers).json()
            assert [a["id"] for a in alerts if a["kind"] == "agent_never_seen"] == []
            agents = client.get("/agents", headers=headers).json()
            assert {a["agent"] for a in agents} == {"serial-bus-b1", "serial-bus-g"}
            assert all(a["heard"] for a in agents)
        assert (run_dir / "site-no-camera.yaml").exists()
        proc.send_signal(signal.SIGHUP)  # its terminal closed: the same clean stop
        proc.wait(timeout=30)
        reader.join(5)
        out = b"".join(lines).decode(errors="replace")
        assert proc.returncode == 0, out[-3000:]
        assert "nothing left running" in out
    finally:
        _kill_demo(proc, run_dir)
