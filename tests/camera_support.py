"""Helpers for the camera tests: the simulated camera and the camera agent as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from conftest import EXAMPLE_SITE, parkguide_cmd, wait_port

CAMERA = "cam-c"
AGENT = f"camera-{CAMERA}"
SITE_ID = "xinyuan"


def test_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PARKGUIDE_LOG_LEVEL", "INFO")
    # keep the shared 2-core machine usable: one OpenCV thread per process
    env["OMP_NUM_THREADS"] = "1"
    env["OPENCV_FOR_THREADS_NUM"] = "1"
    return env


class Proc:
    """A parkguide subprocess with stdout lines on a queue and stderr in a log file."""

    def __init__(self, argv: list[str], log: Path, stdin: int | None = subprocess.PIPE):
        self.argv = argv
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=test_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))

    def next_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output line in {timeout}s; log:\n{self.log_tail()}") from None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def ask(self, line: str, timeout: float = 10.0) -> str:
        """Send a console line and return the answer line."""
        self.send(line)
        return self.next_line(timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code (a hang is killed and fails the caller)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.argv[3:5]} did not stop on SIGTERM in {timeout}s"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._log.close()


def start_sim(
    port: int, log: Path, *extra: str, stdin: int | None = subprocess.PIPE, fps: float = 4
) -> Proc:
    """``parkguide sim camera`` on ``port``; waits for its listening line."""
    argv = parkguide_cmd(
        "sim", "camera", "--site", str(EXAMPLE_SITE), "--camera", CAMERA,
        "--listen", f"127.0.0.1:{port}", "--fps", str(fps), *extra,
    )  # fmt: skip
    sim = Proc(argv, log, stdin=stdin)
    try:
        line = sim.next_line(60)
        assert "serving http://" in line, line
        wait_port(port, 10)
    except BaseException:
        sim.close()
        raise
    return sim


def start_agent(broker_url: str, port: int, tmp: Path, *extra: str) -> Proc:
    argv = parkguide_cmd(
        "edge", "camera", "--site", str(EXAMPLE_SITE), "--camera", CAMERA,
        "--source", f"http://127.0.0.1:{port}/stream.mjpg", "--broker", broker_url,
        "--spool-dir", str(tmp / "spool"), *extra,
    )  # fmt: skip
    return Proc(argv, tmp / "agent.log", stdin=subprocess.DEVNULL)


def parse_status(line: str) -> dict[str, bool]:
    """The sim's ``status`` answer -> {space: occupied} for the 40 spaces of cam-c."""
    assert line.startswith(f"ok camera {CAMERA} "), line
    head, _, listed = line.partition(": ")
    occupied = set(listed.split())
    return {f"C-{i:03d}": f"C-{i:03d}" in occupied for i in range(1, 41)}


def fold_states(reports: list[dict[str, Any]]) -> dict[str, str]:
    """Apply snapshots and deltas of the newest boot in order: space -> state."""
    if not reports:
        return {}
    boot = reports[-1]["boot"]
    states: dict[str, str] = {}
    for r in sorted((r for r in reports if r["boot"] == boot), key=lambda r: r["seq"]):
        if r["kind"] == "snapshot":
            states = {}
        for obs in r["spaces"]:
            states[obs["space"]] = obs["state"]
    return states


def expected_states(truth: dict[str, bool]) -> dict[str, str]:
    return {s: "occupied" if occ else "free" for s, occ in truth.items()}


def occupancy_reports(recorder: Any) -> list[dict[str, Any]]:
    return recorder.json_on("/occupancy")


def latest_health(recorder: Any) -> dict[str, Any] | None:
    health = recorder.json_on("/health")
    return health[-1] if health else None


def wait_states(recorder: Any, want: dict[str, str], timeout: float, tolerance: int = 0) -> None:
    """Until the folded agent states cover every space of ``want`` and at most
    ``tolerance`` differ from it (``unknown`` counts as different): a real classifier on
    a realistic scene may be unsure of one car for a while, e.g. a grey car under a
    passing cloud's shadow."""
    deadline = time.monotonic() + timeout
    got: dict[str, str] = {}
    diff: dict[str, tuple[str | None, str]] = {}
    while time.monotonic() < deadline:
        got = fold_states(occupancy_reports(recorder))
        diff = {s: (got.get(s), w) for s, w in want.items() if got.get(s) != w}
        if set(got) == set(want) and len(diff) <= tolerance:
            return
        time.sleep(0.2)
    raise AssertionError(f"agent states differ from expected (got, want): {json.dumps(diff)}")


def measure_day_agreement(
    seed: int, first_minute: int, last_minute: int, step_min: float
) -> tuple[float, int]:
    """Render the residential scenario's day on cam-c as the simulator does (same scene,
    same JPEG), classify every frame with the real classifier, and return the fraction
    of (frame, space) decisions that agree with the scenario, and how many there were."""
    import cv2
    import numpy as np

    from edge.camera.classifier import SpaceClassifier
    from firmware_sim.camera import JPEG_QUALITY
    from firmware_sim.camera_render import CameraScene, rain_at
    from firmware_sim.scenario import ResidentialScenario
    from parking.site import load_site

    cam = load_site(EXAMPLE_SITE).camera(CAMERA)
    spaces = list(cam.polygons)
    classifier = SpaceClassifier.load()
    plan = classifier.plan([np.asarray(p, np.float32) for p in cam.polygons.values()])
    speed = 60.0  # one simulated minute per real second
    scenario = ResidentialScenario(spaces, seed=seed, start_minute=first_minute, speed=speed)
    scene = CameraScene(cam.polygons, cam.resolution, seed=seed)
    for space, occupied in scenario.initial().items():
        scene.set_occupied(space, occupied)
    rng = np.random.default_rng(seed)
    agree = total = 0
    minute = float(first_minute)
    while minute <= last_minute:
        elapsed = (minute - first_minute) * 60.0 / speed
        for space, occupied in scenario.step(elapsed):
            scene.set_occupied(space, occupied)
        frame = scene.render(minute, elapsed, rain=rain_at(minute, seed), rng=rng)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        occupied, _confidence = classifier.classify(cv2.imdecode(buf, cv2.IMREAD_COLOR), plan)
        truth = np.array([scenario.occupied[scenario.index[s]] for s in spaces])
        agree += int((occupied == truth).sum())
        total += len(spaces)
        minute += step_min
    return agree / total, total
