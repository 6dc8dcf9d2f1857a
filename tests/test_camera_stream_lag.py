"""A reader short of CPU on a stream decoded frame by frame falls behind the camera: the
lag read from the stream's timestamps (pure), then through the real FFmpeg backend on an
MPEG-4 stream served over HTTP, once at the camera's pace and once slower than its
timestamps (which is what a reader that cannot keep up sees)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera.stream import FrameReader, StreamLag

FPS = 25
SECONDS = 16


def test_a_stream_read_at_its_pace_is_not_behind() -> None:
    lag = StreamLag()
    # the first second arrives in a burst (buffered before the reader started), then live
    for k in range(25):
        lag.observe(100.0 + 0.004 * k, 5.0 + k / 25)
    for k in range(25, 250):
        assert lag.observe(100.1 + (k - 25) / 25 + 0.01 * (k % 3), 5.0 + k / 25) < 0.05


def test_a_reader_slower_than_the_stream_falls_behind_by_what_it_lost() -> None:
    lag = StreamLag()
    for k in range(100):  # decodes 10 frames a second of a 25 frames/s camera
        behind = lag.observe(10.0 + k / 10, 2.0 + k / 25)
    assert behind == pytest.approx(99 / 10 - 99 / 25)


def test_timestamps_that_restart_or_are_missing_tell_nothing() -> None:
    lag = StreamLag()
    for k in range(50):
        lag.observe(k / 10, 1.0 + k / 25)
    assert lag.behind_s > 2.0
    assert lag.observe(5.0, 0.5) == 0.0  # the encoder restarted: counted afresh
    assert lag.observe(5.1, 500.0) == 0.0  # ... or leapt ahead
    fresh = StreamLag()
    assert fresh.observe(1.0, 0.0) == 0.0 and fresh.observe(9.0, float("nan")) == 0.0


# -- the real backend ---------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """SECONDS of MPEG-4 Part 2 at FPS frames/s in AVI (decoded frame by frame by FFmpeg,
    like H.264; the wheels' OpenCV encodes no H.264)."""
    path = tmp_path_factory.mktemp("lag") / "camera.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 180))
    assert writer.isOpened(), "OpenCV cannot write MPEG-4 here"
    rng = np.random.default_rng(0)
    for k in range(FPS * SECONDS):
        frame = rng.integers(60, 90, (180, 320, 3), dtype=np.uint8)
        cv2.putText(frame, str(k), (40, 120), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6)
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def serve(data: bytes, pace: float) -> Iterator[str]:
    """An HTTP server sending ``data`` at ``pace`` times its play rate."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "video/x-msvideo")
            self.end_headers()
            per_s = len(data) / SECONDS * pace
            start, sent = time.monotonic(), 0
            try:
                while sent < len(data):
                    self.wfile.write(data[sent : sent + 4096])
                    sent += 4096
                    time.sleep(max(0.0, start + sent / per_s - time.monotonic()))
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/camera.avi"
    finally:
        server.shutdown()
        server.server_close()


def read_for(url: str, seconds: float, max_behind_s: float) -> FrameReader:
    reader = FrameReader(url, max_fps=5, max_behind_s=max_behind_s, backoff_base_s=0.1)
    reader.start()
    worst, end = 0.0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(0.1)
            worst = max(worst, reader.behind_s)
    finally:
        reader.stop()
    reader.worst = worst  # type: ignore[attr-defined]
    return reader


def test_a_stream_at_the_cameras_pace_is_read_live(video: bytes) -> None:
    url = next(gen := serve(video, pace=1.0))
    try:
        reader = read_for(url, 6.0, max_behind_s=1.5)
    finally:
        gen.close()
    assert reader.frames >= 20 and not reader.raw
    assert reader.fell_behind == 0 and reader.worst < 0.5  # type: ignore[attr-defined]


def test_frames_falling_behind_are_dropped_by_reopening(video: bytes) -> None:
    """Frames come at 40 % of the pace their timestamps say: 0.6 s lost a second. The
    reader says how far behind it is, and past 1.5 s drops the backlog and reopens."""
    url = next(gen := serve(video, pace=0.4))
    try:
        reader = read_for(url, 7.0, max_behind_s=1.5)
    finally:
        gen.close()
    assert reader.fell_behind >= 1 and reader.reconnects >= 1
    assert reader.worst > 1.0  # type: ignore[attr-defined]
    assert reader.frames >= 10


def test_the_agent_says_it_is_behind(tmp_path: Path) -> None:
    """The health counts it and is degraded past a second behind (the reader's figures
    are taken at every publish)."""
    from camera_support import AGENT, SITE_ID
    from conftest import EXAMPLE_SITE, free_port

    from edge.camera.classifier import SpaceClassifier
    from edge.camera_agent import CameraAgent
    from edge.publisher import ReportPublisher
    from firmware_sim.camera_render import CameraScene
    from parking.broker import BrokerConfig
    from parking.site import load_site

    cam = load_site(EXAMPLE_SITE).camera("cam-c")
    scene = CameraScene(cam.polygons, cam.resolution, seed=2)
    publisher = ReportPublisher(
        BrokerConfig("127.0.0.1", free_port()), SITE_ID, AGENT, cam.id, spool_dir=tmp_path
    )
    agent = CameraAgent(cam, SpaceClassifier.load(), publisher)
    frame = scene.render(10 * 60, 0.0)
    for k in range(30):
        agent.on_frame(frame, 1000.0 + k * 0.1, k * 0.1)
    assert agent.status() in ("ok", "degraded")
    agent.behind_s, agent.fell_behind = 2.4, 1
    health = agent.health(1003.0, 3.0, reconnects=1)
    assert health.status == "degraded"
    assert health.counters["behind_ms"] == 2400 and health.counters["fell_behind"] == 1
