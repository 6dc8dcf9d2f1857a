"""`parkguide demo` refuses what would not work before it starts anything, says what is
wrong with the broker or a part, fits a 80x24 terminal and ends quietly in a closed pipe;
its status view and the simulated drivers reach a TLS broker."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import free_port, parkguide_cmd, tls_broker

pytestmark = pytest.mark.timeout(120)


def _run(args: list[str], env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess:
    """The CLI in its own process group, all of it killed if it outlives ``timeout``."""
    proc = subprocess.Popen(
        parkguide_cmd(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args} still running after {timeout}s: {err[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--start", "abc", "--start 'abc': expected HH:MM, from 00:00 to 23:59"),
        ("--start", "25:00", "--start '25:00': expected HH:MM, from 00:00 to 23:59"),
        ("--speed", "0", "--speed 0.0: must be more than 0 and at most 3600"),
        ("--speed", "-5", "--speed -5.0: must be more than 0 and at most 3600"),
        ("--speed", "nan", "--speed nan: must be more than 0 and at most 3600"),
        # the gateway's --policy-clock bound: refused before anything starts
        ("--speed", "7200", "--speed 7200.0: must be more than 0 and at most 3600"),
    ],
)
def test_demo_refuses_a_bad_start_or_speed_at_once(flag, value, said, subprocess_env, tmp_path):
    started = time.monotonic()
    env = {**subprocess_env, "TMPDIR": str(tmp_path)}  # anything it leaves, it leaves there
    out = _run(["demo", "--http", f"127.0.0.1:{free_port()}", f"{flag}={value}"], env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == said
    assert out.stdout == ""  # no header, no dashboard advertised
    assert time.monotonic() - started < 15


def test_demo_refuses_a_broker_port_something_listens_on(subprocess_env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _run(
            ["demo", "--broker-port", str(port), "--http", f"127.0.0.1:{free_port()}"],
            {**subprocess_env, "TMPDIR": str(tmp_path)},
        )
    assert out.returncode == 2, out.stderr
    assert f"--broker-port {port}: 127.0.0.1:{port} is in use" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_port_problem_tells_in_use_from_unresolvable_and_unbindable():
    from parkguide.ports import port_free, port_problem

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_problem("127.0.0.1", port) == f"127.0.0.1:{port} is in use"
        assert not port_free("127.0.0.1", port)
    assert port_problem("127.0.0.1", free_port()) is None
    assert port_problem("nohost.invalid", 8765).startswith(
        "cannot resolve the host 'nohost.invalid'"
    )
    # TEST-NET-1 is nobody's own address: not "in use", cannot listen there
    assert port_problem("192.0.2.1", 8765).startswith("cannot listen on 192.0.2.1:8765 (")
    assert port_problem("127.0.0.1", 70000) == "port 70000 is out of range (1-65535)"


@pytest.mark.parametrize(
    ("http", "said"),
    [
        ("nohost.invalid:8765", "--http nohost.invalid:8765: cannot resolve the host"),
        ("192.0.2.1:8765", "--http 192.0.2.1:8765: cannot listen on 192.0.2.1:8765"),
    ],
)
def test_demo_http_that_cannot_be_listened_on_is_not_called_taken(http, said, capsys):
    from parkguide.cli import main

    assert main(["demo", "--http", http]) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "taken" not in err and "Traceback" not in err


def test_demo_start_waits_end_when_the_child_has_exited():
    """A part that exits while the demo waits for it ends the wait at once (no 15-20 s
    timeout), and a port that answers while the part is dead is not its start."""
    from parkguide.demo import _StartFailed, _wait_for

    def child(code: str):
        proc = subprocess.Popen([sys.executable, "-c", code])
        return type("Child", (), {"name": "sim-bus", "proc": proc})()

    gone = child("raise SystemExit(3)")
    gone.proc.wait()
    started = time.monotonic()
    with pytest.raises(_StartFailed) as failed:
        _wait_for(gone, lambda: False, 15)
    assert failed.value.child is gone and time.monotonic() - started < 2
    with pytest.raises(_StartFailed):
        _wait_for(gone, lambda: True, 15)  # someone else's listener
    alive = child("import time; time.sleep(30)")
    try:
        assert _wait_for(alive, lambda: True, 15) is True
        assert _wait_for(alive, lambda: False, 0.3) is False
    finally:
        alive.proc.kill()
        alive.proc.wait()


def test_a_server_part_whose_port_was_taken_meanwhile_starts_on_another(tmp_path, monkeypatch):
    """The demo picks a free port for the camera simulator, and another process on the
    machine may take it before the simulator listens (seen once in CI: the whole demo
    failed). The simulator is started again on another port."""
    import parkguide.demo as demo
    from parkguide.supervisor import Supervisor
    from parking.site import EXAMPLE_SITE

    taken = socket.socket()  # bound, not listening: nothing answers on it, as in CI
    taken.bind(("127.0.0.1", 0))
    ports = iter([taken.getsockname()[1], free_port()])
    monkeypatch.setattr(demo, "free_port", lambda: next(ports))
    sup = Supervisor(tmp_path)
    argv = ["sim", "camera", "--site", str(EXAMPLE_SITE), "--camera", "cam-c", "--listen"]
    try:
        child, port = demo._start_listening(
            sup, "sim-cam-c", lambda p: [*argv, f"127.0.0.1:{p}"], 30
        )
        assert port != taken.getsockname()[1] and child.proc.poll() is None
        assert sup.children == [child] and sup.dead() == []  # the first try is no dead part
        assert "Address already in use" in (tmp_path / "sim-cam-c.log").read_text()
    finally:
        sup.stop_all()
        taken.close()


def _msg(topic: str, payload: bytes):
    return type("Msg", (), {"topic": topic, "payload": payload})()


def _busy_board(site, port: int):
    """A status board with every zone and sign filled in (long sign lines)."""
    from parkguide.demo import StatusBoard
    from parking import topics
    from parking.broker import BrokerConfig

    board = StatusBoard(site.id, BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}"))
    now = time.time()
    for z in site.zones:
        counts = {"free": 3, "occupied": 77, "unknown": 0, "closed": 0, "total": 80}
        payload = json.dumps({"zone": z.id, **counts, "ts": now}).encode()
        board._on_message(None, None, _msg(topics.zone(site.id, z.id), payload))

    def line(label_zh, label_en, zh, en, arrow, status):
        return {
            "arrow": arrow,
            "count": None,
            "status": status,
            "label": {"zh": label_zh, "en": label_en},
            "text": {"zh": zh, "en": en},
        }

    for d in site.displays:
        content = {
            "display": d.id,
            "lines": [
                line("A区", "Zone A", "满", "FULL", "left", "full"),
                line("访客", "Visitors", "39", "39", "up", "ok"),
                line("地库B1", "Basement B1", "满", "FULL", "right", "full"),
            ],
            "ts": now,
            "expires": now + 600,
        }
        payload = json.dumps(content).encode()
        board._on_message(None, None, _msg(topics.display_content(site.id, d.id), payload))
    board._on_message(None, None, _msg(topics.gateway_availability(site.id), b"online"))
    board.assignments = 12
    board.last_assignment = {"class": "resident", "entrance": "gate-north", "space": "A-012"}
    assert len(board.zones) == len(site.zones) and len(board.displays) == len(site.displays)
    return board


HEADER = [
    "新苑小区 Xinyuan Community — dashboard http://127.0.0.1:8000",
    "login: demo-manager / m4kVmZwjqO-B   Ctrl-C to stop",
    "broker mqtt://127.0.0.1:33871   logs /tmp/parkguide-demo-cskq9y2y",
]


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 50)])
def test_demo_view_fits_the_terminal_with_every_sign_and_the_footer(example_site, width, height):
    from rich.console import Console

    from parkguide.demo import _render_rich

    board = _busy_board(example_site, free_port())
    try:
        board.notice("the simulated drivers exited (code -9)")
        console = Console(width=width, height=height, file=io.StringIO(), color_system=None)
        view = _render_rich(board, example_site, HEADER, console)
        lines = console.render_lines(view, console.options.update(height=None), pad=False)
        assert len(lines) <= height
        console.print(view)
        text = console.file.getvalue()
    finally:
        board.stop()
    for d in example_site.displays:
        assert f"{d.id} " in text
    for z in example_site.zones:
        assert f"{z.id} {z.name.zh}" in text
    assert "login: demo-manager / m4kVmZwjqO-B" in text
    words = " ".join(text.replace("│", " ").split())  # the footer may wrap
    assert "assignments: 12 last: resident at gate-north → A-012" in words
    assert "broker: " in text and "the simulated drivers exited" in words
    if height >= 40:  # room for the framed tables
        assert "Signs (as drivers see them)" in text


def test_demo_view_of_a_tiny_terminal_keeps_the_footer(example_site):
    from rich.console import Console

    from parkguide.demo import _render_rich

    board = _busy_board(example_site, free_port())
    try:
        console = Console(width=80, height=12, file=io.StringIO(), color_system=None)
        view = _render_rich(board, example_site, HEADER, console)
        assert len(console.render_lines(view, console.options.update(height=None))) <= 12
        console.print(view)
        text = console.file.getvalue()
    finally:
        board.stop()
    assert "more rows; every zone and sign is on the dashboard" in text
    assert "assignments: 12" in text


def test_the_status_board_says_when_the_broker_cannot_be_reached(example_site, caplog):
    from parkguide.demo import StatusBoard
    from parking.broker import BrokerConfig

    caplog.set_level(logging.WARNING, logger="parkguide.demo")
    port = free_port()
    board = StatusBoard(example_site.id, BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}"))
    try:
        deadline = time.monotonic() + 10
        while "cannot reach" not in board.broker_state and time.monotonic() < deadline:
            time.sleep(0.05)
        assert board.broker_state.startswith("cannot reach it (")
        assert "broker cannot reach it" in "\n".join(board.render_text(example_site))
    finally:
        board.stop()
    said = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert said and f"mqtt://127.0.0.1:{port}" in said[0]


def test_broker_link_logs_the_first_failure_then_once_a_minute(caplog):
    from firmware_sim.drivers import BrokerLink
    from parking.broker import BrokerConfig

    now = [1000.0]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    link = BrokerLink(client, BrokerConfig.from_url("mqtt://h:1"), "tester", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="firmware_sim.drivers")

    def fail():
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            client.on_connect_fail(client, None)  # as paho calls it

    fail()
    for _ in range(5):
        now[0] += 10
        fail()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "tester: broker mqtt://h:1: cannot reach it ([Errno 111] Connection refused); retrying"
    ]
    now[0] += 11
    fail()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and warnings[1].endswith("retrying (7 attempts so far)")
    assert link.state.startswith("cannot reach it")
    ok = type("RC", (), {"is_failure": False})()
    assert link.connected(ok) is True and link.state == "connected"
    assert any("connected to the broker" in r.getMessage() for r in caplog.records)
    refused = type("RC", (), {"is_failure": True, "__str__": lambda self: "Not authorized"})()
    assert link.connected(refused) is False
    assert link.state == "refused the connection (Not authorized); retrying"


def test_live_drivers_say_when_the_broker_cannot_be_reached(subprocess_env):
    proc = subprocess.Popen(
        parkguide_cmd("sim", "drivers", "--live", "--broker", f"mqtt://127.0.0.1:{free_port()}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env,
    )
    try:
        time.sleep(4)
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=30)[1]
    assert "cannot reach it" in err, err[-2000:]


def test_the_demo_tells_when_the_drivers_died_and_runs_on(caplog):
    from parkguide.demo import _run_status

    caplog.set_level(logging.ERROR, logger="parkguide.demo")
    drivers = type(
        "Child",
        (),
        {
            "name": "drivers",
            "proc": type("P", (), {"returncode": -9})(),
            "log_path": Path("/run/drivers.log"),
        },
    )()
    sup = type(
        "Sup", (), {"dead": lambda self: [drivers], "tail": lambda self, c: "set A-1 free"}
    )()
    notices: list[str] = []
    board = type(
        "Board",
        (),
        {"render_text": lambda self, site: [], "notice": lambda self, t: notices.append(t)},
    )()
    assert _run_status(board, None, [], threading.Event(), sup, 1.2) is False  # ran on
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and errors[0].startswith("drivers exited with code -9")
    assert len(notices) == 1 and "the simulated drivers exited (code -9)" in notices[0]


def test_the_demo_ends_quietly_when_its_output_pipe_closes(tmp_path, subprocess_env):
    """`parkguide demo | head -1`: no BrokenPipeError traceback; every part stopped and
    the temporary run directory removed all the same."""
    env = {**subprocess_env, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        parkguide_cmd(
            "demo",
            "--http",
            f"127.0.0.1:{free_port()}",
            "--no-camera",
            "--no-drivers",
            "--duration",
            "3",
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away, as `head -1` does
        err = proc.stderr.read().decode(errors="replace")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "dashboard" in first.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    assert proc.returncode == 0
    assert list(tmp_path.glob("parkguide-demo-*")) == []
    time.sleep(0.5)
    leftover = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(tmp_path) in (entry / "environ").read_bytes().decode(errors="replace"):
                    leftover.append(int(entry.name))
    assert leftover == []


def test_status_view_and_live_drivers_reach_a_tls_broker(tmp_path, example_site, monkeypatch):
    from firmware_sim.drivers import LiveDrivers
    from parkguide.demo import StatusBoard
    from parking import topics
    from parking.broker import BrokerConfig

    broker = tls_broker(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))  # trust the test CA
    config = BrokerConfig.from_url(f"mqtts://127.0.0.1:{broker.port}")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.tls_set(ca_certs=str(tmp_path / "ca.crt"))
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    zone = example_site.zones[0].id
    counts = {"zone": zone, "free": 5, "occupied": 75, "unknown": 0, "closed": 0, "total": 80}
    pub.publish(
        topics.zone(example_site.id, zone), json.dumps({**counts, "ts": time.time()}), 1, True
    ).wait_for_publish(5)
    board = StatusBoard(example_site.id, config)
    drivers = LiveDrivers(example_site, config, 7 * 60, 60.0, 1)
    drivers.client.loop_start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if zone in board.zones and drivers.client.is_connected():
                break
            time.sleep(0.05)
        assert board.zones.get(zone, {}).get("free") == 5
        assert drivers.client.is_connected()
    finally:
        drivers.client.loop_stop()
        drivers.client.disconnect()
        board.stop()
        pub.loop_stop()
        pub.disconnect()
        broker.stop()


def test_the_demo_runs_on_a_tls_broker_with_a_ca_file(tmp_path, subprocess_env):
    """--ca-file on the demo: its own clients and every part it starts (gateway, API,
    agents) trust the broker's private CA, with nothing else set; without --broker it
    is refused (the embedded broker has no TLS)."""
    broker = tls_broker(tmp_path)
    env = {
        k: v
        for k, v in subprocess_env.items()
        if k not in ("SSL_CERT_FILE", "PARKGUIDE_MQTT_CA_FILE")
    }
    run_dir = tmp_path / "run"
    try:
        done = subprocess.run(
            parkguide_cmd(
                "demo",
                "--broker",
                f"mqtts://127.0.0.1:{broker.port}",
                "--ca-file",
                str(tmp_path / "ca.crt"),
                "--http",
                f"127.0.0.1:{free_port()}",
                "--no-camera",
                "--no-drivers",
                "--duration",
                "8",
                "--run-dir",
                str(run_dir),
            ),  # fmt: skip
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=120,
        )
    finally:
        broker.stop()
    logs = "".join(p.read_text(errors="replace") for p in run_dir.glob("*.log"))
    assert done.returncode == 0, done.stderr.decode()[-2000:] + logs[-3000:]
    assert f"connected to mqtts://127.0.0.1:{broker.port}; zones and signs follow" in logs
    assert "not trusted" not in logs
    refused = subprocess.run(
        parkguide_cmd("demo", "--ca-file", str(tmp_path / "ca.crt")),
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode == 2 and b"only with --broker mqtts://" in refused.stderr
