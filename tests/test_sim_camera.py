"""``parkguide sim camera``: cv2.VideoCapture reads its MJPEG, several clients at once,
console commands and faults, headless running and clean stops; and the real classifier
agrees with what the simulation says across a daylight day."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from camera_support import Proc, measure_day_agreement, parse_status, start_sim
from conftest import EXAMPLE_SITE, free_port, parkguide_cmd

from firmware_sim.camera import parse_console_line
from firmware_sim.commands import CommandError

AGREEMENT_FLOOR = 0.95


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def read_frames(url: str, count: int, out: list[np.ndarray]) -> None:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    try:
        for _ in range(count):
            ok, frame = cap.read()
            if not ok:
                return
            out.append(frame)
    finally:
        cap.release()


def test_videocapture_reads_the_stream_with_two_clients_headless(
    procs: list[Proc], tmp_path: Path
) -> None:
    port = free_port()
    # headless: no console at all
    sim = start_sim(
        port, tmp_path / "sim.log", "--speed", "60", "--start", "09:00",
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    procs.append(sim)
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    got: list[list[np.ndarray]] = [[], []]
    readers = [threading.Thread(target=read_frames, args=(url, 4, got[i])) for i in range(2)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(60)
    for frames in got:
        assert len(frames) == 4
        assert all(f.shape == (720, 1280, 3) for f in frames)
        # sensor noise: consecutive frames are never bit-identical
        assert not np.array_equal(frames[0], frames[1])

    status, ctype, body = http_get(f"http://127.0.0.1:{port}/snapshot.jpg")
    assert status == 200 and ctype == "image/jpeg"
    snap = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert snap is not None and snap.shape == (720, 1280, 3)
    assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404

    sim.proc.send_signal(signal.SIGINT)
    assert sim.proc.wait(10) == 0


def test_console_commands_faults_and_stdin_close(procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    sim = start_sim(
        port, tmp_path / "sim.log", "--scenario", "none", "--seed", "2", "--start", "12:00"
    )
    procs.append(sim)
    snapshot = f"http://127.0.0.1:{port}/snapshot.jpg"

    truth = parse_status(sim.ask("status"))
    assert len(truth) == 40
    assert sim.ask("set C-005 occupied") == "ok C-005 occupied"
    assert sim.ask("status C-005") == "ok C-005 occupied"
    assert parse_status(sim.ask("status"))["C-005"] is True
    assert sim.ask("set C-005 free") == "ok C-005 free"
    assert sim.ask("status C-005") == "ok C-005 free"
    assert sim.ask("set A-001 occupied").startswith("error: space 'A-001' is not watched")
    assert sim.ask("fault camera fog").startswith("error: unknown camera fault 'fog'")
    assert sim.ask("fault C-001 stuck").startswith("error: a camera has no detectors")
    assert sim.ask("fault node 1 dead").startswith("error: a camera has no detectors")
    assert sim.ask("clear node 1").startswith("error: a camera has no detectors")
    assert sim.ask("frobnicate").startswith("error: unknown command")
    # the camera's own help: only what it accepts (no bus-only faults), with `ok` as the bus
    helped = sim.ask("help")
    assert helped.startswith("ok commands: ")
    assert "fault camera black|frozen|blur|off" in helped and "clear camera" in helped
    assert not any(word in helped for word in ("stuck", "flap", "node", "slow", "crc"))

    # off: the stream ends, nothing new is served, until cleared
    cap = cv2.VideoCapture(f"http://127.0.0.1:{port}/stream.mjpg", cv2.CAP_FFMPEG)
    try:
        assert cap.read()[0]
        assert sim.ask("fault camera off") == "ok camera cam-c off"
        deadline = time.monotonic() + 15
        while cap.read()[0]:
            assert time.monotonic() < deadline, "stream kept going with the camera off"
    finally:
        cap.release()
    assert http_get(snapshot)[0] == 503
    assert sim.ask("clear camera") == "ok camera cam-c cleared"
    deadline = time.monotonic() + 10
    while http_get(snapshot)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    # black: frames are dark; frozen: the same bytes again and again
    assert sim.ask("fault camera black") == "ok camera cam-c black"
    time.sleep(1.0)
    black = cv2.imdecode(np.frombuffer(http_get(snapshot)[2], np.uint8), cv2.IMREAD_COLOR)
    assert black.mean() < 10
    assert sim.ask("fault camera frozen") == "ok camera cam-c frozen"
    time.sleep(1.0)
    first = http_get(snapshot)[2]
    time.sleep(1.0)
    assert http_get(snapshot)[2] == first
    assert sim.ask("clear all") == "ok camera cam-c cleared"
    time.sleep(1.0)
    assert http_get(snapshot)[2] != first

    # a service has no console: closing stdin leaves the camera running
    assert sim.proc.stdin is not None
    sim.proc.stdin.close()
    time.sleep(1.0)
    assert sim.proc.poll() is None
    assert http_get(snapshot)[0] == 200
    assert sim.terminate(10) == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("fault camera", "usage: fault camera"),
        ("fault camera black now", "usage: fault camera"),
        ("clear camera now", "usage: clear camera"),
    ],
)
def test_camera_console_syntax_errors(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_console_line(line)


@pytest.mark.parametrize("line", ["frobnicate", "fault C-001 stuck", "fault node 1 dead", "fault"])
def test_camera_console_refusals_offer_only_camera_commands(line: str) -> None:
    with pytest.raises(CommandError) as refused:
        parse_console_line(line)
    assert "stuck|flap" not in str(refused.value) and "node ADDR" not in str(refused.value)


def test_real_classifier_agrees_with_the_scenario_in_daylight() -> None:
    """The rendered frames are realistic enough for the classifier trained on photographs."""
    agreement, decisions = measure_day_agreement(seed=1, first_minute=8 * 60, last_minute=17 * 60,
                                                 step_min=60)  # fmt: skip
    assert decisions == 10 * 40
    assert agreement >= AGREEMENT_FLOOR, f"agreement {agreement:.3f} over {decisions} decisions"


def test_a_camera_without_spaces_is_refused(tmp_path: Path, capsys) -> None:
    """The camera agent refuses such a camera; so does its simulator, instead of serving an
    empty lot."""
    from parkguide.cli import main

    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    assert "cameras:\n" in text
    site = tmp_path / "site.yaml"  # a camera mounted, its rows not drawn yet
    empty = "cameras:\n  - {id: cam-empty, ttl_s: 15, resolution: [1280, 720]}\n"
    site.write_text(text.replace("cameras:\n", empty, 1), encoding="utf-8")
    argv = ["sim", "camera", "--site", str(site), "--camera", "cam-empty"]
    assert main([*argv, "--listen", f"127.0.0.1:{free_port()}"]) == 2
    assert "camera cam-empty has no spaces bound to it" in capsys.readouterr().err


def test_the_stream_is_served_on_ipv6(procs: list[Proc], tmp_path: Path) -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    port = free_port()
    argv = parkguide_cmd(
        "sim", "camera", "--site", str(EXAMPLE_SITE), "--camera", "cam-c",
        "--listen", f"[::1]:{port}", "--fps", "2",
    )  # fmt: skip
    sim = Proc(argv, tmp_path / "sim.log", stdin=subprocess.DEVNULL)
    procs.append(sim)
    assert f"serving http://[::1]:{port}/stream.mjpg" in sim.next_line(60)
    deadline = time.monotonic() + 10
    while True:
        try:
            status, ctype, body = http_get(f"http://[::1]:{port}/snapshot.jpg")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_the_replay_fault_loops_the_last_20_s_bit_for_bit() -> None:
    """``fault camera replay``: a recorder looping what the camera sent in its last 20 s,
    the same JPEG bytes in the same order, round and round, until cleared."""
    from firmware_sim.camera import REPLAY_S, CameraFault, FaultCamera, SimulatedCamera
    from firmware_sim.camera_render import CameraScene
    from firmware_sim.scenario import make_scenario
    from parking.site import load_site

    cam = load_site(EXAMPLE_SITE).camera("cam-c")
    spaces = list(cam.polygons)
    scenario = make_scenario("none", spaces, seed=1, start_minute=600, speed=1.0,
                             initial_occupancy=0.4)  # fmt: skip
    camera = SimulatedCamera("cam-c", CameraScene(cam.polygons, cam.resolution, seed=1),
                             scenario, 600, 1.0, 1, dynamic=False)  # fmt: skip
    fps = 2.0
    sent = [camera.render_jpeg(i / fps) for i in range(60)]  # 30 s
    assert len(set(sent)) == len(sent)  # live: every frame its own (sensor noise)
    camera.apply(FaultCamera(CameraFault.REPLAY), 30.0)
    looped = [camera.render_jpeg(30.0 + i / fps) for i in range(90)]
    last = sent[-int(REPLAY_S * fps) - 1 :]  # what was sent in the last 20 s
    assert looped[: len(last)] == last and looped[len(last) : 2 * len(last)] == last
    camera.apply(parse_console_line("clear camera"), 75.0)
    assert camera.render_jpeg(75.0) not in sent
