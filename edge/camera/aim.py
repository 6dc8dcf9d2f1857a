"""Does the camera still show the view its polygons were drawn on? (knocked, turned, re-zoomed)

Pure (numpy/OpenCV on arrays, no I/O). A camera knocked by a ladder or a lorry, turned by
someone looking for a scratched car, or left on another PTZ preset goes on delivering
sharp, bright, changing frames: every other check passes, and the classifier reads the
polygons' pixels confidently off the wrong ground. On the real UFPR05 frames a shift of
10 px keeps 99 % accuracy, 20 px down 94.5 %, 30 px 81 %, 60 px 75 %, mostly confident.

The view's signature is the normalised log gradient magnitude of a grey thumbnail
``SIGNATURE_WIDTH`` pixels wide: the lot's lines, kerbs, walls and trees, with little of
the light. Phase correlation of a frame's signature with the reference's gives the shift
between them and a response (how well they match once shifted). Measured:

- the same view matches with a response of 0.44-0.95 on the real UFPR05 frames (other days
  and hours, a grey "infrared" version with vignetting, 15 % brightness) and 0.11-0.58 on
  the simulator over a day and night with rain (the least at dusk against a view learned
  under the morning's low sun, once the thumbnail's noise is smoothed: 0.066 before, which
  a soak saw as another view); the shift found is within 5 px;
- a shifted view is found to the pixel (20-160 px, day, dark or infrared), matching as well;
- another view (turned 8 degrees or more, zoomed by 1.2 or 0.8, mirrored, upside down)
  matches with a median response of 0.03-0.04, at most 0.18 on single frames.

So a frame is *moved* when it matches the reference (response at least
``match_response``) shifted by more than ``max_shift_share`` of the frame's width, and
shows *another view* when it matches it nowhere. A zoom or a turn of a few per cent or
degrees still matches the whole picture near no shift (a PTZ camera back on its preset
with the zoom 5 % off: half its cars called free); so the picture is also compared in
3x3 tiles, and a similarity transform fitted to the tiles' shifts (RANSAC) gives its
scale and turn: past ``max_zoom_share`` or ``max_turn_deg`` it is another view. Measured:
the same real view (other days, infrared) fits within 0.4 % and 0.12 degrees, the
simulator's day and night with any reference never past the limits; zooms of 3-5 % and
turns of 2-4 degrees are found in 97-100 % of the frames. The verdict leaves (or comes back to)
*aligned* only after ``confirm_checks`` checks in a row say so (a lorry filling the
picture, a person at the lens), and checks run at most every ``check_every_s`` (one takes ~1.5 ms at 1280x720).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

SIGNATURE_WIDTH = 320


class Aim(Enum):
    ALIGNED = "aligned"
    MOVED = "moved"
    OTHER_VIEW = "other_view"


@dataclass(frozen=True)
class AimSettings:
    check_every_s: float = 0.25
    max_shift_share: float = 0.01
    """moved: shifted by more than this share of the frame's width (13 px at 1280)"""
    match_response: float = 0.10
    """a phase-correlation response below this matches nothing: another view"""
    max_zoom_share: float = 0.02
    """zoomed by more than this (corner bays then move over 1 % of the width): other view"""
    max_turn_deg: float = 1.0
    """turned by more than this: another view"""
    tile_response: float = 0.1
    """a tile whose match is weaker than this says nothing of the zoom and turn"""
    confirm_checks: int = 3
    """checks in a row that must agree before the verdict changes"""


@dataclass(frozen=True)
class AimCheck:
    """One comparison with the reference: its reading and the shift in frame pixels."""

    aim: Aim
    dx: float
    dy: float
    response: float
    zoom: float = 1.0
    """scale of the picture against the reference, from its tiles (1.0 when unknown)"""
    turn: float = 0.0
    """its rotation in degrees, likewise"""

    @property
    def shift(self) -> float:
        return math.hypot(self.dx, self.dy)


def view_thumbnail(frame: np.ndarray) -> np.ndarray:
    """Grey uint8 thumbnail ``SIGNATURE_WIDTH`` wide (what is kept as the reference)."""
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape[:2]
    height = max(1, round(h * SIGNATURE_WIDTH / max(w, 1)))
    return cv2.resize(grey, (SIGNATURE_WIDTH, height), interpolation=cv2.INTER_AREA)


TILES = 3  # per side


def tile_fit(
    reference: np.ndarray, current: np.ndarray, window: np.ndarray, min_response: float
) -> tuple[float, float] | None:
    """Zoom and turn (degrees) of ``current`` against ``reference`` (signatures), from the
    shifts of their TILES x TILES tiles; None when too few tiles match to tell."""
    h, w = reference.shape
    th, tw = h // TILES, w // TILES
    centres, moved = [], []
    for r in range(TILES):
        for c in range(TILES):
            part = np.s_[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            (dx, dy), response = cv2.phaseCorrelate(
                np.ascontiguousarray(reference[part]), np.ascontiguousarray(current[part]), window
            )
            if response >= min_response:
                centres.append((c * tw + tw / 2, r * th + th / 2))
                moved.append((c * tw + tw / 2 + dx, r * th + th / 2 + dy))
    if len(centres) < 5:
        return None
    fit, inliers = cv2.estimateAffinePartial2D(
        np.float32(centres), np.float32(moved), method=cv2.RANSAC, ransacReprojThreshold=2.0
    )
    if fit is None or inliers is None or int(inliers.sum()) < 5:
        return None
    return math.hypot(fit[0, 0], fit[1, 0]), math.degrees(math.atan2(fit[1, 0], fit[0, 0]))


SIGNATURE_BLUR = 0.7
"""Gaussian sigma (thumbnail pixels) taken off the sensor noise before the gradients: at
dusk and night the simulator's noise (and a real sensor's gain) outweighs the dim lot's
edges, and the view learned in the morning matched with 0.066-0.097 (other view: every
space unknown for seconds); smoothed, 0.106 or more, and another view no better."""


def signature(thumb: np.ndarray) -> np.ndarray:
    """Normalised log gradient magnitude of a grey thumbnail, its noise smoothed (float32)."""
    t = cv2.GaussianBlur(thumb.astype(np.float32), (0, 0), SIGNATURE_BLUR)
    mag = cv2.magnitude(cv2.Sobel(t, cv2.CV_32F, 1, 0), cv2.Sobel(t, cv2.CV_32F, 0, 1))
    mag = np.log1p(mag)
    return (mag - float(mag.mean())) / (float(mag.std()) + 1e-6)


class AimMonitor:
    """Compares one stream's frames with its reference view; keeps the confirmed verdict.

    Without a reference, or when the frame's shape differs from the reference's, the frame
    given to :meth:`check` becomes it (``learned`` is then set, for the caller to keep it).
    ``check(frame, now)`` returns None when it is not time for a check yet.
    """

    def __init__(self, settings: AimSettings | None = None, reference: np.ndarray | None = None):
        self.settings = settings or AimSettings()
        self.aim = Aim.ALIGNED
        self.last: AimCheck | None = None
        self.learned = False
        self._next = -math.inf
        self._run: list[Aim] = []
        self._reference: np.ndarray | None = None
        self._signature: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._tile_window: np.ndarray | None = None
        if reference is not None:
            self._set_reference(reference)

    @property
    def reference(self) -> np.ndarray | None:
        """The reference thumbnail (grey uint8), None until one is known."""
        return self._reference

    def _set_reference(self, thumb: np.ndarray) -> None:
        self._reference = thumb
        self._signature = signature(thumb)
        self._window = cv2.createHanningWindow((thumb.shape[1], thumb.shape[0]), cv2.CV_32F)
        tile = (thumb.shape[1] // TILES, thumb.shape[0] // TILES)
        self._tile_window = cv2.createHanningWindow(tile, cv2.CV_32F)

    def forget(self) -> None:
        """Learn the view anew from the next frame (the camera was re-aimed on purpose)."""
        self._reference = self._signature = self._window = self._tile_window = None
        self.aim, self.last, self._run, self._next = Aim.ALIGNED, None, [], -math.inf

    def check(self, frame: np.ndarray, now: float) -> AimCheck | None:
        if now < self._next:
            return None
        self._next = now + self.settings.check_every_s
        thumb = view_thumbnail(frame)
        if self._reference is None or thumb.shape != self._reference.shape:
            # none yet, or a stream of another shape (a squeezed substream instead of the
            # main stream): nothing to compare with, this is the view from now on
            self._set_reference(thumb)
            self.learned = True
            self.aim, self._run = Aim.ALIGNED, []
            self.last = AimCheck(Aim.ALIGNED, 0.0, 0.0, 1.0)
            return self.last
        assert self._signature is not None and self._window is not None
        assert self._tile_window is not None
        s = self.settings
        current = signature(thumb)
        (dx, dy), response = cv2.phaseCorrelate(self._signature, current, self._window)
        scale = frame.shape[1] / thumb.shape[1]
        dx, dy = dx * scale, dy * scale
        zoom, turn = 1.0, 0.0
        if response < s.match_response:
            aim = Aim.OTHER_VIEW
        elif math.hypot(dx, dy) > s.max_shift_share * frame.shape[1]:
            aim = Aim.MOVED
        else:
            fitted = tile_fit(self._signature, current, self._tile_window, s.tile_response)
            if fitted is not None:
                zoom, turn = fitted
            zoomed = abs(zoom - 1.0) > s.max_zoom_share or abs(turn) > s.max_turn_deg
            aim = Aim.OTHER_VIEW if zoomed else Aim.ALIGNED
        self.last = AimCheck(aim, dx, dy, float(response), zoom, turn)
        self._run = [*self._run, aim][-self.settings.confirm_checks :]
        if len(self._run) == self.settings.confirm_checks:
            if all(a is Aim.ALIGNED for a in self._run):
                self.aim = Aim.ALIGNED
            elif Aim.ALIGNED not in self._run:  # moved or another view: both blind it
                self.aim = aim
        return self.last
