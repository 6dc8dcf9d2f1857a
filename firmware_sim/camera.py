"""``parkguide sim camera``: a synthetic lamp-post camera serving MJPEG over HTTP.

It shows one camera's spaces of the site file (``firmware_sim.camera_render``)
driven by the same occupancy scenario and console language as the bus
simulator, so what it shows agrees with what the simulation says. Endpoints:

- ``/stream.mjpg``: ``multipart/x-mixed-replace`` JPEG stream, what
  ``cv2.VideoCapture("http://HOST:PORT/stream.mjpg")`` reads; any number of
  clients at once, each gets the newest frame;
- ``/snapshot.jpg``: the newest frame;
- ``/``: a page showing the stream.

Console (stdin), on top of the shared commands (``set SPACE occupied|free``,
``status [SPACE]``, ``help``, ``clear all``); a camera has no detectors or
nodes, so the bus's ``fault SPACE ...`` and ``fault node ...`` are refused.
Every answer is one line, ``ok ...`` or ``error: reason`` (as the bus's)::

    fault camera black    lens capped: black frames with read noise
    fault camera frozen   the encoder repeats one frame bit for bit
    fault camera blur     lens covered or smeared: heavy blur
    fault camera off      no stream: open connections close, new ones get 503
    fault camera replay   a recorder looping the last 20 s of the stream, bit for bit
    clear camera          back to normal

The simulator keeps running when stdin closes (a service has no console) and
stops cleanly on SIGTERM/SIGINT. stdout carries the listening line and one
answer per console line; everything else goes to the log.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from firmware_sim.camera_render import (
    CameraScene,
    black_frame,
    covered_frame,
    moved_frame,
    rain_at,
    turned_frame,
)
from firmware_sim.commands import (
    Answers,
    ClearAll,
    ClearNode,
    ClearSpace,
    CommandError,
    FaultNode,
    FaultSpace,
    Help,
    SetBattery,
    SetSpace,
    Status,
    parse_command,
)
from firmware_sim.scenario import (
    Scenario,
    add_scenario_arguments,
    make_scenario,
    start_minute,
)
from parking.signals import stop_event_on_signals
from parking.site import SiteError, load_site

log = logging.getLogger(__name__)

BOUNDARY = "frame"
JPEG_QUALITY = 85
RECOMPOSE_SIM_MIN = 2.0
"""re-draw shadows and cars after this many simulated minutes (the sun moves)"""
MAX_LINE = 4096


class CameraFault(Enum):
    BLACK = "black"
    FROZEN = "frozen"
    BLUR = "blur"
    OFF = "off"
    MOVED = "moved"
    """knocked: the view shifted by a few per cent"""
    TURNED = "turned"
    """turned and zoomed: another view (a PTZ camera left on another preset)"""
    REPLAY = "replay"
    """a recorder or proxy looping the last REPLAY_S of the stream"""


REPLAY_S = 20.0
FAULT_WORDS = "|".join(f.value for f in CameraFault)
CAMERA_HELP = (
    f"commands: set SPACE occupied|free; fault camera {FAULT_WORDS}; "
    "clear camera|SPACE|all; status [SPACE]; help"
)
"""what this console accepts: the shared words a camera can act on, and its own faults"""
_NO_DETECTORS = f"a camera has no detectors or nodes; {CAMERA_HELP}"


@dataclass(frozen=True)
class FaultCamera:
    fault: CameraFault


@dataclass(frozen=True)
class ClearCamera:
    pass


def parse_console_line(line: str) -> object | None:
    """Camera-only commands first, then the shared language of ``firmware_sim.commands``
    (refusing, with this console's own help, the bus's words a camera cannot act on)."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    verb = words[0].lower()
    if len(words) >= 2 and words[1].lower() == "camera":
        if verb == "fault":
            if len(words) != 3:
                raise CommandError(f"usage: fault camera {FAULT_WORDS}")
            try:
                return FaultCamera(CameraFault(words[2].lower()))
            except ValueError:
                raise CommandError(
                    f"unknown camera fault {words[2]!r} ({', '.join(f.value for f in CameraFault)})"
                ) from None
        if verb == "clear":
            if len(words) != 2:
                raise CommandError("usage: clear camera")
            return ClearCamera()
    if verb == "fault":
        if len(words) == 1:
            raise CommandError(f"usage: fault camera {FAULT_WORDS}")
        raise CommandError(_NO_DETECTORS)
    if verb == "clear" and len(words) >= 2 and words[1].lower() == "node":
        raise CommandError(_NO_DETECTORS)
    if verb not in ("set", "clear", "status", "help"):
        raise CommandError(f"unknown command {words[0]!r}; {CAMERA_HELP}")
    return parse_command(line)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--camera", required=True, help="id of the camera to simulate")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8554",
        help="HOST:PORT to serve HTTP on (default %(default)s)",
    )
    parser.add_argument(
        "--fps", type=float, default=5.0, help="frames per second to render (default 5)"
    )
    add_scenario_arguments(parser)


class FrameHub:
    """The newest JPEG and its sequence number; stream handlers wait on it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0
        self.off = False
        self.stopping = False

    def publish(self, jpeg: bytes | None) -> None:
        with self.cond:
            self.off = jpeg is None
            if jpeg is not None:
                self.jpeg = jpeg
                self.seq += 1
            self.cond.notify_all()

    def wait_next(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """(seq, jpeg) newer than ``after``; jpeg None when off, stopping or timed out."""
        with self.cond:
            self.cond.wait_for(
                lambda: self.stopping or self.off or self.seq > after, timeout=timeout
            )
            if self.stopping or self.off or self.seq <= after:
                return self.seq, None
            return self.seq, self.jpeg

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class SimulatedCamera:
    """Ground truth (scenario + console), the scene, the fault; renders frames."""

    def __init__(
        self,
        camera_id: str,
        scene: CameraScene,
        scenario: Scenario,
        start_minute: float,
        speed: float,
        seed: int,
        dynamic: bool,
    ):
        self.camera_id = camera_id
        self.scene = scene
        self.scenario = scenario
        self.start_minute = start_minute
        self.speed = speed
        self.seed = seed
        self.dynamic = dynamic
        self.lock = threading.Lock()
        self.fault: CameraFault | None = None
        self.occupied = dict(scenario.initial())
        for space, occ in self.occupied.items():
            scene.set_occupied(space, occ)
        self.rng = np.random.default_rng(seed + 99)
        self._scene_cache: np.ndarray | None = None
        self._scene_minute = -1e9
        self._frozen: bytes | None = None
        self._last_jpeg: bytes | None = None
        self._recent: deque[tuple[float, bytes]] = deque()  # (elapsed s, JPEG), REPLAY_S
        self._replay: list[bytes] = []  # what the replay fault loops, and where it is
        self._replay_at = 0

    def minute_of_day(self, elapsed_s: float) -> float:
        return (self.start_minute + elapsed_s * self.speed / 60.0) % (24 * 60)

    # -- truth -----------------------------------------------------------------------
    def step(self, elapsed_s: float) -> None:
        """Advance the scenario to ``elapsed_s`` real seconds after the start."""
        if not self.dynamic:
            return
        with self.lock:
            for space, occ in self.scenario.step(elapsed_s):
                self._set(space, occ)

    def _set(self, space: str, occupied: bool) -> None:
        if self.occupied.get(space) == occupied:
            return
        self.occupied[space] = occupied
        self.scene.set_occupied(space, occupied)
        self._scene_cache = None

    def apply(self, command: object, elapsed_s: float) -> str:
        """Apply a console command; the answer line (raises CommandError when refused)."""
        with self.lock:
            if isinstance(command, SetSpace):
                self._check_space(command.space)
                self.scenario.set(command.space, command.occupied)
                self._set(command.space, command.occupied)
                return f"ok {command.space} {'occupied' if command.occupied else 'free'}"
            if isinstance(command, FaultCamera):
                self.fault = command.fault
                self._frozen = self._last_jpeg if command.fault is CameraFault.FROZEN else None
                self._replay = [j for _, j in self._recent]
                self._replay_at = 0
                return f"ok camera {self.camera_id} {command.fault.value}"
            if isinstance(command, ClearCamera | ClearAll):
                self.fault = None
                self._frozen = None
                return f"ok camera {self.camera_id} cleared"
            if isinstance(command, ClearSpace):
                self._check_space(command.space)
                return f"ok {command.space} has no fault (a camera has no per-space faults)"
            if isinstance(command, FaultSpace | FaultNode | SetBattery | ClearNode):
                raise CommandError(_NO_DETECTORS)
            if isinstance(command, Status):
                return "ok " + self._status(command.space, elapsed_s)
            if isinstance(command, Help):
                return f"ok {CAMERA_HELP}"
        raise CommandError(f"unsupported command; {CAMERA_HELP}")

    def _check_space(self, space: str) -> None:
        if space not in self.occupied:
            raise CommandError(f"space {space!r} is not watched by camera {self.camera_id}")

    def _status(self, space: str | None, elapsed_s: float) -> str:
        if space is not None:
            self._check_space(space)
            return f"{space} {'occupied' if self.occupied[space] else 'free'}"
        m = int(self.minute_of_day(elapsed_s))
        occupied = sorted(s for s, o in self.occupied.items() if o)
        return (
            f"camera {self.camera_id} time {m // 60:02d}:{m % 60:02d} "
            f"fault {self.fault.value if self.fault else 'none'} "
            f"occupied {len(occupied)}/{len(self.occupied)}: {' '.join(occupied)}"
        )

    def truth(self) -> dict[str, bool]:
        with self.lock:
            return dict(self.occupied)

    # -- pixels ----------------------------------------------------------------------
    def render_jpeg(self, elapsed_s: float) -> bytes | None:
        """The next frame as JPEG; None while the camera is off."""
        with self.lock:
            fault = self.fault
            if fault is CameraFault.OFF:
                return None
            if fault is CameraFault.FROZEN and self._frozen is not None:
                return self._frozen
            if fault is CameraFault.REPLAY and self._replay:
                jpeg = self._replay[self._replay_at % len(self._replay)]
                self._replay_at += 1
                return jpeg
            minute = self.minute_of_day(elapsed_s)
            if self._scene_cache is None or abs(minute - self._scene_minute) >= RECOMPOSE_SIM_MIN:
                self._scene_cache = self.scene.compose(minute)
                self._scene_minute = minute
            scene = self._scene_cache
        frame = self.scene.render(
            minute, elapsed_s, rain=rain_at(minute, self.seed), rng=self.rng, scene=scene
        )
        if fault is CameraFault.BLACK:
            frame = black_frame((frame.shape[1], frame.shape[0]), self.rng)
        elif fault is CameraFault.BLUR:
            frame = covered_frame(frame, self.rng)
        elif fault is CameraFault.MOVED:
            frame = moved_frame(frame)
        elif fault is CameraFault.TURNED:
            frame = turned_frame(frame)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        jpeg = buf.tobytes()
        with self.lock:
            self._last_jpeg = jpeg
            self._recent.append((elapsed_s, jpeg))
            while self._recent[0][0] < elapsed_s - REPLAY_S:
                self._recent.popleft()
            if self.fault is CameraFault.FROZEN and self._frozen is None:
                self._frozen = jpeg
        return jpeg


def _make_handler(hub: FrameHub) -> type[BaseHTTPRequestHandler]:
    class CameraHandler(BaseHTTPRequestHandler):
        server_version = "parkguide-sim-camera/1"
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http %s: " + format, self.client_address[0], *args)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/stream.mjpg":
                    self._stream()
                elif path == "/snapshot.jpg":
                    self._snapshot()
                elif path in ("/", "/index.html"):
                    body = b'<html><body style="margin:0;background:#000">'
                    body += b'<img src="/stream.mjpg" style="max-width:100%"></body></html>'
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8", body)
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                log.debug("http %s: client went away", self.client_address[0])

        def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _snapshot(self) -> None:
            with hub.cond:
                jpeg = None if hub.off else hub.jpeg
            if jpeg is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"camera off\n")
                return
            self._send(HTTPStatus.OK, "image/jpeg", jpeg)

        def _stream(self) -> None:
            seq, jpeg = hub.wait_next(0, timeout=5.0)
            if jpeg is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"camera off\n")
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            log.info("http %s: stream client connected", self.client_address[0])
            while jpeg is not None:
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                )
                self.wfile.write(jpeg)
                self.wfile.write(b"\r\n")
                self.wfile.flush()
                seq, jpeg = hub.wait_next(seq, timeout=5.0)
            log.info("http %s: stream closed (camera off or stopping)", self.client_address[0])

    return CameraHandler


class CameraHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted simulator takes its port back at once


class CameraHTTPServer6(CameraHTTPServer):
    address_family = socket.AF_INET6  # --listen [::1]:8554


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Console(Answers):
    """Reads stdin lines without blocking shutdown; a closed stdin leaves the camera running."""

    def __init__(self, camera: SimulatedCamera, t0: float):
        super().__init__()
        self.camera = camera
        self.t0 = t0

    def handle(self, line: str) -> None:
        try:
            command = parse_console_line(line)
            if command is None:
                return
            answer = self.camera.apply(command, time.monotonic() - self.t0)
        except CommandError as exc:
            log.info("console: %r refused: %s", line.strip()[:80], exc)
            self.say(f"error: {exc}")
            return
        log.info("console: %s -> %s", line.strip()[:80], answer[:120])
        self.say(answer)

    def run(self, stop: threading.Event) -> None:
        try:
            fd: int | None = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        buf = b""
        while not stop.is_set():
            if fd is None:
                stop.wait(0.5)
                continue
            try:
                readable, _, _ = select.select([fd], [], [], 0.25)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                fd = None
                continue
            if not readable:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError as exc:
                log.warning("stdin unreadable (%s); running on without a console", exc)
                fd = None
                continue
            if not data:
                log.info("stdin closed; running on without a console")
                if buf.strip():
                    self.handle(buf.decode("utf-8", "replace"))
                fd, buf = None, b""
                continue
            buf += data
            *lines, buf = buf.split(b"\n")
            if len(buf) > MAX_LINE:
                self.say(f"error: line longer than {MAX_LINE} characters ignored")
                buf = b""
            for raw in lines:
                self.handle(raw.decode("utf-8", "replace"))


def _render_loop(
    camera: SimulatedCamera, hub: FrameHub, fps: float, t0: float, stop: threading.Event
) -> None:
    period = 1.0 / fps
    next_at = time.monotonic()
    while not stop.is_set():
        elapsed = time.monotonic() - t0
        try:
            camera.step(elapsed)
            hub.publish(camera.render_jpeg(elapsed))
        except Exception:  # one bad frame must not end the camera
            log.exception("render failed")
        next_at += period
        delay = next_at - time.monotonic()
        if delay < -period:  # fell behind (busy machine): skip, do not burst
            next_at = time.monotonic()
        stop.wait(max(0.0, delay))


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
        camera_cfg = site.camera(args.camera)
        first_minute = start_minute(args.start, site.timezone)
        host, port = _parse_listen(args.listen)
        if not (args.fps > 0 and math.isfinite(args.fps)):
            raise ValueError(f"--fps must be a positive number, not {args.fps}")
        spaces = list(camera_cfg.polygons)
        if not spaces:  # the camera agent refuses it too
            raise ValueError(f"camera {camera_cfg.id} has no spaces bound to it")
        scenario = make_scenario(
            args.scenario,
            spaces,
            seed=args.seed,
            start_minute=first_minute,
            speed=args.speed,
            initial_occupancy=args.initial_occupancy,
        )
    except (SiteError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    scene = CameraScene(camera_cfg.polygons, camera_cfg.resolution, seed=args.seed)
    camera = SimulatedCamera(
        camera_cfg.id,
        scene,
        scenario,
        first_minute,
        args.speed,
        args.seed,
        dynamic=args.scenario != "none",
    )
    hub = FrameHub()
    t0 = time.monotonic()
    hub.publish(camera.render_jpeg(0.0))  # a frame ready before the first client
    try:
        server_class = CameraHTTPServer6 if ":" in host else CameraHTTPServer
        server = server_class((host, port), _make_handler(hub))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    stop = stop_event_on_signals(log)
    threads = [
        threading.Thread(target=server.serve_forever, args=(0.25,), name="http", daemon=True),
        threading.Thread(
            target=_render_loop, args=(camera, hub, args.fps, t0, stop), name="render", daemon=True
        ),
    ]
    for t in threads:
        t.start()
    console = Console(camera, t0)
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    console.say(f"camera {camera_cfg.id} serving http://{shown}:{bound_port}/stream.mjpg")
    log.info(
        "camera %s: %d spaces, scenario %s, speed %g, start %02d:%02d, %g fps",
        camera_cfg.id,
        len(spaces),
        args.scenario,
        args.speed,
        first_minute // 60,
        first_minute % 60,
        args.fps,
    )
    try:
        console.run(stop)
    finally:
        stop.set()
        hub.stop()
        server.shutdown()
        server.server_close()
        for t in threads:
            t.join(2.0)
    return 0
