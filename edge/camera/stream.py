"""Frames from a camera: a reader thread around ``cv2.VideoCapture``.

Sources: an RTSP or HTTP (MJPEG) URL, a video file, or a device index (a
string of digits). The thread keeps only the newest frame (a slow consumer
must see the present, not a backlog). When the stream is lost (open fails, a
read fails) it releases the capture and reopens it after a capped exponential
backoff with jitter; the delay resets after a good frame. A file is paced at
its own frame rate; when it ends the reader ends (``ended``), or, with
``loop_file``, plays it again from the start (a recording replayed as a live
camera must be asked for: it re-announces old scenes as news).

The consumer decides what a missing frame means (``last_frame_age``): the
camera agent turns its spaces ``unknown`` after a timeout.

A network stream decoded frame by frame (H.264 over RTSP) is decoded in ``grab``: a
reader short of CPU falls behind the camera, the backlog waiting in the socket and the
decoder, and hands out ever older pictures as if they were the present. The stream's own
timestamps tell (:class:`StreamLag`): ``behind_s`` is how far they have fallen behind
the wall clock since the session began; past ``max_behind_s`` the reader drops the
backlog by reopening the stream.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time

import cv2
import numpy as np

from parking.broker import backoff_delay
from parking.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0


class FrameRate:
    """At most ``max_fps`` frames a second on average (0: every frame), without losing
    frames to jitter: a frame up to half a period early is taken, and the schedule moves
    on by whole periods, so a camera running at the limit keeps every frame."""

    def __init__(self, max_fps: float):
        self.interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._due = -float("inf")

    def take(self, now: float) -> bool:
        """Is the frame seen at ``now`` (monotonic seconds) one to use?"""
        if not self.interval:
            return True
        if now < self._due - self.interval / 2:
            return False
        # never behind ``now``: a pause earns no burst afterwards
        self._due = max(self._due + self.interval, now + self.interval)
        return True


def quiet_backends() -> None:
    """OpenCV's and FFmpeg's own messages off (errors of OpenCV stay), unless the
    environment asks for them: they bypass ``logging`` and would write two lines to
    stderr at every reopen of a lost stream (hundreds an hour), while the reader says
    the same once a minute. Read by OpenCV when it first uses FFmpeg, so call this
    before the first capture; ``OPENCV_FFMPEG_LOGLEVEL=24`` brings FFmpeg's back."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        logging_module = getattr(cv2.utils, "logging", None)  # OpenCV 4.13 and later
        if logging_module is not None:
            logging_module.setLogLevel(logging_module.LOG_LEVEL_ERROR)
        else:  # OpenCV 4.9-4.12 (pyproject's lower bound)
            cv2.setLogLevel(2)  # LOG_LEVEL_ERROR


def parse_source(source: str) -> str | int:
    """A device index for a string of digits, else the URL or path unchanged."""
    text = source.strip()
    return int(text) if text.isdigit() else text


def is_file_source(source: str | int) -> bool:
    return isinstance(source, str) and "://" not in source and os.path.exists(source)


def source_problem(source: str | int) -> str | None:
    """:func:`file_problem` for a source that names a file (not a URL, not a device
    index): a mistyped path is said as such, not as a stream that gave no frame."""
    if isinstance(source, str) and "://" not in source:
        return file_problem(source)
    return None


def file_problem(path: str) -> str | None:
    """Why a file named as the source is not a video OpenCV can read, or None. A URL or a
    device may come back after a failure; a wrong file never will, so it is said at once."""
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "a directory, not a video file"
    if first_frame_size(path) is None:
        return "not a video OpenCV can read"
    return None


def first_frame_size(path: str) -> tuple[int, int] | None:
    """(width, height) of a video file's (or picture's) first frame, None if none reads."""
    quiet_backends()
    cap = cv2.VideoCapture(path)
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    finally:
        cap.release()
    return (int(frame.shape[1]), int(frame.shape[0])) if ok and frame is not None else None


_SECRET_IN_PATH = re.compile(r"(?i)(pass|pwd|password|token|key|auth)[=:]")


def carries_secret(source: str | int) -> bool:
    """Whether the source names a login or a secret (which :func:`describe` hides): a device
    index never does."""
    return isinstance(source, str) and describe(source) != source


def describe(source: str | int) -> str:
    """The source for logs, without any credentials in a URL: its login, and its query and
    fragment (many cameras take ``?user=admin&pwd=...``), as ``***``; a path that names a
    password (``/user=admin_password=x_channel=1.sdp``, ``/cgi;pwd=x``) is hidden whole."""
    if isinstance(source, int):
        return f"device {source}"
    if "://" not in source:
        return source
    scheme, rest = source.split("://", 1)
    if "@" in rest:
        # everything up to the LAST "@" may be the login (FFmpeg reads it so, and a
        # password may hold "/" or "@"): masked whole, even if that hides some path
        login, rest = rest.rsplit("@", 1)
        if "?" in login or "#" in login:
            # the "@" may be in the query (?user=a@b&pwd=...): what follows may be too
            return f"{scheme}://***"
        shown = f"{scheme}://***@"
    else:
        shown = f"{scheme}://"
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        rest = f"{rest[:cut]}{rest[cut]}***"
    host, slash, path = rest.partition("/")
    if _SECRET_IN_PATH.search(path):
        rest = f"{host}{slash}***"
    return shown + rest


class StreamLag:
    """How far a stream's frames fall behind the present, from their timestamps (pure).

    ``observe(now, pts_s)`` with the wall clock's ``now`` and the frame's presentation
    time, both in seconds: the lag is the wall time gone by since the first frame minus
    the stream time gone by. The frames buffered before the first one read (a burst at
    the start) make it negative; the least lag seen is the present, and ``behind_s`` is
    the lag beyond it. A timestamp going back or leaping ahead (a camera's encoder
    restarting) starts the count again."""

    LEAP_S = 60.0

    def __init__(self) -> None:
        self.behind_s = 0.0
        self._origin: tuple[float, float] | None = None
        self._least = 0.0
        self._last_pts = 0.0

    def observe(self, now: float, pts_s: float) -> float:
        if not np.isfinite(pts_s) or pts_s <= 0.0:
            return self.behind_s  # no timestamps on this stream: nothing to tell
        if self._origin is None or not 0.0 <= pts_s - self._last_pts <= self.LEAP_S:
            self._origin, self._least = (now, pts_s), 0.0
        self._last_pts = pts_s
        lag = (now - self._origin[0]) - (pts_s - self._origin[1])
        self._least = min(self._least, lag)
        self.behind_s = lag - self._least
        return self.behind_s


class Frame:
    """One frame as the reader handed it out: decoded, or (an MJPEG stream read raw) its
    JPEG bytes, decoded when the consumer first looks at it, so a reader short of CPU
    never falls behind the stream decoding frames nobody will use."""

    __slots__ = ("_image", "_jpeg", "seq", "received")

    def __init__(
        self, image: np.ndarray | None, seq: int, received: float, jpeg: np.ndarray | None = None
    ):
        self._image, self._jpeg = image, jpeg
        self.seq = seq
        """counts frames delivered since the reader started"""
        self.received = received
        """time.monotonic() when the frame was read"""

    @property
    def image(self) -> np.ndarray | None:
        """The picture (BGR); None when its JPEG does not decode (a frame cut short)."""
        if self._image is None and self._jpeg is not None:
            self._image = cv2.imdecode(self._jpeg, cv2.IMREAD_COLOR)
            self._jpeg = None
        return self._image


class FrameReader:
    """Reads a source on a daemon thread; ``latest`` hands out the newest frame."""

    def __init__(
        self,
        source: str | int,
        *,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        open_timeout_ms: int = OPEN_TIMEOUT_MS,
        read_timeout_ms: int = READ_TIMEOUT_MS,
        max_fps: float = 0.0,
        loop_file: bool = False,
        max_behind_s: float = math.inf,
    ):
        self.source = source
        self.loop_file = loop_file
        self.max_fps = max_fps
        """frames beyond this rate are read (the stream keeps flowing) but not handed out.
        An MJPEG stream is read raw, so only the frames the agent uses are decoded (by it);
        other codecs (H.264 over RTSP) decode every frame in ``grab``: there the camera's
        own frame rate is what costs"""
        self.max_behind_s = max_behind_s
        """a network stream whose frames fall this far behind the present is reopened"""
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.open_timeout_ms = open_timeout_ms
        self.read_timeout_ms = read_timeout_ms
        self.file_source = is_file_source(source)
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._last_grab: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(log)
        self.connected = False
        self.reconnects = 0
        """times the stream was lost and reopened (or attempted)"""
        self.ended = False
        """a file source reached its end (without ``loop_file``): no more frames"""
        self.frames = 0
        """frames decoded and handed out"""
        self.grabbed = 0
        """frames read from the stream (decoded or skipped by ``max_fps``)"""
        self.raw = False
        """the stream is MJPEG read raw: only the frames used are decoded"""
        self.behind_s = 0.0
        """how far the frames read fall behind the present (streams with timestamps)"""
        self.fell_behind = 0
        """times the stream was reopened for being more than ``max_behind_s`` behind"""

    # -- consumer side -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to stop; a read blocked in the backend ends at its timeout."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def latest(self, after_seq: int, timeout: float) -> Frame | None:
        """The newest frame with ``seq > after_seq``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                frame = self._frame
                if frame is not None and frame.seq > after_seq:
                    return frame
                if self.ended:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    def last_frame_age(self, now: float | None = None) -> float | None:
        """Seconds since the stream last delivered a frame (monotonic), None if none yet."""
        if self._last_grab is None:
            return None
        return (time.monotonic() if now is None else now) - self._last_grab

    # -- reader thread --------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture:
        quiet_backends()
        if isinstance(self.source, str) and "://" in self.source:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                self.open_timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                self.read_timeout_ms,
            ]
            return cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(self.source)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                got_frames = self._session()
            except Exception:  # a backend error must not kill the reader
                log.exception("camera %s: reader error", describe(self.source))
                got_frames = False
            self.connected = False
            if self._stop.is_set():
                break
            if self.file_source and not self.loop_file:
                log.info("camera %s: end of the file", describe(self.source))
                with self._cond:
                    self.ended = True
                    self._cond.notify_all()
                break
            attempt = 0 if got_frames else attempt + 1
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s)
            self.reconnects += 1
            self._log(
                "reopen",
                logging.INFO,
                "camera %s: stream lost; reopening in %.1f s",
                describe(self.source),
                delay,
            )
            self._stop.wait(delay)

    def _read_raw(self, cap: cv2.VideoCapture) -> bool:
        """Read an MJPEG network stream without decoding (JPEG bytes per frame): True when
        the backend agreed."""
        if self.file_source or not isinstance(self.source, str) or "://" not in self.source:
            return False
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little", signed=False)
        return fourcc == b"MJPG" and bool(cap.set(cv2.CAP_PROP_FORMAT, -1))

    def _fell_behind(self, lag: StreamLag, now: float, cap: cv2.VideoCapture) -> bool:
        """Follow the stream's lag; True (said, counted) when the backlog must go."""
        self.behind_s = lag.observe(now, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        if self.behind_s <= self.max_behind_s:
            return False
        self.fell_behind += 1
        self._log(
            "behind",
            logging.WARNING,
            "camera %s: its frames are %.1f s behind the live picture (decoding slower than "
            "the camera sends them: give the box more CPU, or the camera a lower frame rate "
            "or resolution); dropping the backlog",
            describe(self.source),
            self.behind_s,
        )
        return True

    def _session(self) -> bool:
        """Open, read until the stream fails or we stop; True if any frame arrived."""
        cap = self._open()
        got = False
        try:
            if not cap.isOpened():
                # once a minute: an outage of hours retries every few seconds
                self._log("open", logging.WARNING, "camera %s: cannot open", describe(self.source))
                return False
            self.connected = True
            # a looping file reopens at every end: said once, not twice a second
            self._log("opened", logging.INFO, "camera %s: stream open", describe(self.source))
            raw = self.raw = self._read_raw(cap)
            period = 0.0
            if self.file_source:
                fps = cap.get(cv2.CAP_PROP_FPS)
                period = 1.0 / fps if fps and 0 < fps < 1000 else 0.04
            next_at = time.monotonic()
            rate = FrameRate(self.max_fps)
            network = isinstance(self.source, str) and "://" in self.source
            lag = StreamLag() if network and not raw else None
            self.behind_s = 0.0
            while not self._stop.is_set():
                if not cap.grab():
                    if self.file_source:
                        return got  # its end (the caller says so), not a failure
                    self._log(
                        "read",
                        logging.WARNING,
                        "camera %s: read failed or stream ended",
                        describe(self.source),
                    )
                    return got
                got = True
                now = time.monotonic()
                self._last_grab = now
                self.grabbed += 1
                if lag is not None and self._fell_behind(lag, now, cap):
                    return got
                if rate.take(now):
                    ok, data = cap.retrieve()
                    if not ok or data is None:
                        log.warning("camera %s: cannot decode a frame", describe(self.source))
                        return got
                    self.frames += 1
                    frame = (
                        Frame(None, self.frames, now, jpeg=data.reshape(-1).copy())
                        if raw
                        else Frame(data, self.frames, now)
                    )
                    with self._cond:
                        self._frame = frame
                        self._cond.notify_all()
                if period:
                    next_at += period
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            cap.release()
        return got
