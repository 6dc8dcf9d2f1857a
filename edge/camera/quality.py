"""Is this camera frame fit to classify? Black, frozen and covered/blurred frames.

Pure (numpy/OpenCV on arrays, no I/O). A frame that fails any check makes all
of the camera's spaces ``unknown`` rather than a guess (issue 4).

- **black**: the brightest 1 % of the (downsampled) image is still below
  ``black_p99``: lens cap, dead sensor, a night with no light at all.
- **blurred / covered**: little fine detail left relative to the brightness.
  The measure is the variance of the Laplacian of a 160-pixel-wide thumbnail
  divided by the squared mean brightness (so a dim night scene, whose edges
  are dimmer too, is not mistaken for a blurred one). The thumbnail averages
  sensor noise away, so noise on a covered lens does not look like detail.
  Below ``min_sharpness`` a frame is blurred on any camera; below
  ``relative_sharpness`` of this camera's own recent normal (the median of
  its good frames over the last half hour) it is blurred too: a lens smeared
  by rain keeps a third of its detail, which no one number fits for every
  camera, while the classifier already misreads cars on it with confidence.
  A haze or a light mist is not blur, though: it lowers the contrast and lifts
  the brightness, so the measure falls (a 20 % veil keeps 0.45) while the
  classifier still reads every car. So, between ``hard_relative_sharpness``
  and ``relative_sharpness`` of the normal, a frame is read only if its detail
  against its own contrast (``contrast_sharpness``: the Laplacian's variance
  over the squared 5th-95th percentile spread) keeps ``veil_detail_share`` of
  its normal: a veil keeps all of it (0.98-1.01), a lens smeared as far
  (Gaussian sigma 2.5-3.2 px) 0.39-0.57, heavy rain 0.40.
  A softness that lasts ``rebaseline_s`` (floodlights switched off, a new
  housing) becomes the new normal, so the camera is not blind for ever, but only
  while it keeps ``keep_share`` of the camera's *best* normal (the highest half-hour
  median seen, kept across restarts by the agent): heavy rain on the dome keeps a
  quarter of the detail, and taken as the normal it was read with confidence, three
  cars in four called free. Below that share a frame is blurred at any time, also
  before a fresh start has learnt its normal.
- **frozen**: real sensors never deliver two bit-identical frames; read noise
  alone changes most pixels by a grey level or more. The raw pixels (not
  downsampled: that would average the noise away) are compared with the
  previous frame's in tiles of 64x64; a frame in which at most
  ``frozen_changed_share`` of the tiles differ by more than
  ``frozen_tolerance`` on average is "identical" (a camera whose picture hung
  while its encoder still burns in a ticking clock changes only the clock's
  tiles); the stream is frozen once only identical frames have arrived for
  longer than ``frozen_s``. The time threshold, not a frame count, because
  H.264 encoders skip static macroblocks and may repeat a whole frame between
  key frames, and because the frame rate varies.
- **replayed**: for the same reason a live camera never shows a frame it has shown
  before, while a recording looped as the stream (a recorder or a proxy replaying the
  last minutes while the camera is gone, a test stream left running) does, bit for bit,
  on every pass: it re-announces old scenes as news. The raw sample of every frame is
  remembered by its hash for ``replay_window_s``; a frame equal to one seen more than
  ``replay_min_age_s`` ago (not the frame before: that is the frozen check's) is a
  repeat, and the stream is replayed while ``replay_repeats`` repeats come within
  ``replay_s``. The age rule spares the few seconds a server
  may resend from its cache after a reconnect. A replay re-encoded on the way (each
  pass decoding to other pixels) is not seen.
- **covered spaces** (``covered_spaces``, per space, on the patches the
  classifier reads): a patch whose brightest 1 % is below ``space_dark_p99``
  or whose grey levels hardly vary (``space_flat_std``: a sticker or a hand on
  part of the lens, a corner blown out by a floodlight) shows nothing: that
  space is ``unknown`` while the rest of the picture is read. On the real
  UFPR05 and CNRPark patches the least varied has a standard deviation of 4.2,
  the darkest a p99 of 38; the simulator's night 2.2 and 27.
- **smeared parts** (``FrameQuality.smeared``, per cell of a grid over the picture): a
  smear, a drop or a leaf on part of the lens leaves the rest of the frame sharp, so the
  frame's measures above hardly move while the classifier reads the cars under it as free
  with confidence. A ``SMEAR_WIDTH`` thumbnail is cut into ``SMEAR_GRID`` cells, each
  measured twice (``cell_measures``): its **detail** (how much there is to see) and its
  **keenness** (how much of its gradient a little more blur would take, over a band of
  scales above the pixel noise: in a dark picture the sensor's noise, added after any
  smear, is the sharpest thing there and would make a smeared cell look keen). Each has a normal per
  cell (the median of its samples, taken with the frame's). Detail alone cannot tell a
  smear from a car driving off (a cell's detail is mostly its cars: one leaving took 0.14
  of it, and its spaces were unknown for the best part of an hour); keenness can (the
  asphalt left is as sharp as the car was). So a cell is smeared only while it keeps
  under ``smear_share`` of its normal detail *and* under ``smear_keen_share`` of its
  normal keenness, and the spaces mostly in such cells are ``unknown``. Measured, the
  larger of the two shares, over every judged cell: the real UFPR05 frames of each day in
  time order (cars leaving and coming) never under 0.80; the simulator's residential days
  at their own pace, a frame every 10 s, flagged nothing (noon to 18:00, 21:00 to 03:00,
  midnight to 06:00); a quarter of the lens blurred with a Gaussian of 8 px: 10-12 of its
  12 cells found by day on the real frames, of 20 px all; at night in the simulator, with
  read noise, 7-9 of 12 (a corner quarter: 3-7), of 6 px by day 4-9. A cell whose normal keenness is under ``smear_min_keen`` (sky, a soft plain wall)
  is not judged. A cell soft for ``rebaseline_s`` (a floodlight off) is learnt afresh, as
  the frame's normal is.
- **geometry** (``shape_matches``): frames of another shape than the site
  file's ``resolution`` (a rotated "corridor" mode, a cropped stream) would
  stretch the polygons off their bays: every space ``unknown``.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

THUMB_WIDTH = 160
FROZEN_STRIDE = 4
"""Compare every 4th raw pixel in each direction: 1/16 of the frame is plenty
for noise statistics and keeps the check well under a millisecond."""
FROZEN_TILE = 16
"""Tiles of the compared sample, in its pixels (64x64 of the frame)."""
SHAPE_TOLERANCE = 0.02
"""Width/height ratio off the site file's by more than this: another picture."""
SMEAR_GRID = (8, 6)
"""Cells (columns, rows) of the picture judged for smeared parts: 40x30 pixels of a
``SMEAR_WIDTH`` thumbnail each for a 16:9 picture (160x120 of a 1280x720 frame)."""
KEEN_SIGMAS = (1.0, 1.5)
"""Keenness compares a cell's gradient after blurs of these sigmas (thumbnail pixels, the
second on top of the first): the band a smear removes and pixel noise does not reach."""
SMEAR_WIDTH = 320
"""Width of the thumbnail the cells are measured on: a smear of a few pixels of the frame
must still show as blur there."""


class FrameFault(Enum):
    BLACK = "black"
    FROZEN = "frozen"
    BLURRED = "blurred"
    GEOMETRY = "geometry"
    MOVED = "moved"
    """the view is shifted from the one the polygons were drawn on (edge.camera.aim)"""
    OTHER_VIEW = "other_view"
    """the picture matches that view nowhere: turned, zoomed, another preset"""
    REPLAYED = "replayed"
    """frames the camera showed before come again: a recording looped as the stream"""


@dataclass(frozen=True)
class QualitySettings:
    black_p99: float = 24.0
    """grey level the brightest 1 % of pixels must exceed for the frame to show anything"""
    min_sharpness: float = 20.0
    """1000 * var(Laplacian) / (mean + 5)^2 of the thumbnail; sharp scenes (day or night)
    measure about 80-160, a lens covered or smeared (Gaussian sigma 15 px) about 1"""
    frozen_tolerance: float = 0.05
    """mean absolute grey-level difference below which a tile of two frames is unchanged"""
    frozen_changed_share: float = 0.05
    """two frames are identical when at most this share of their tiles changed"""
    space_dark_p99: float = 16.0
    """a space's patch whose brightest 1 % is below this grey level shows nothing"""
    space_flat_std: float = 1.5
    """nor does one whose grey levels vary by less than this (standard deviation)"""
    relative_sharpness: float = 0.5
    """blurred below this share of the camera's recent normal sharpness (measured on the
    real UFPR05 frames: Gaussian blur sigma 2 px keeps 0.62 of it, 3 px 0.40, 4 px 0.24;
    the same camera over a day varies by less than 0.75)"""
    hard_relative_sharpness: float = 0.3
    """below this share of the normal, blurred whatever the contrast (a 45 % fog veil
    keeps 0.22 and the classifier misses a car in ten there)"""
    veil_detail_share: float = 0.6
    """between the two, read only while the detail against the contrast keeps this share
    of its normal (a haze: yes; a smear: no)"""
    baseline_every_s: float = 10.0
    """a good frame's sharpness joins the camera's normal at most this often"""
    baseline_samples: int = 180
    """the normal is the median of this many samples (half an hour at 10 s)"""
    baseline_min_samples: int = 30
    """the relative check starts once this many are in (five minutes)"""
    rebaseline_s: float = 1800.0
    """a softness that lasts this long is the new normal (the samples start again)"""
    keep_share: float = 0.35
    """... if it keeps this share of the camera's best normal; below it a frame is blurred
    whatever lasts (measured on the real UFPR05 frames with the lens effects simulated:
    heavy rain keeps 0.25, 120 drops 0.63, an infrared night 0.51-0.67, a 20 % haze 0.45,
    snow 0.49; the simulator's day with a shower keeps 0.54 or more)"""
    frozen_s: float = 20.0
    """identical frames for longer than this -> frozen. Generous: with 3D noise reduction
    and an H.264 encoder skipping static macroblocks, a still night scene can decode
    bit-identical until the next key frame, and key frames may be 10 s apart."""
    smear_share: float = 0.6
    """a cell of the picture is smeared when it keeps less than this share of its own
    normal detail ... (see the module docstring for the measured margins)"""
    smear_keen_share: float = 0.6
    """... and less than this share of its normal keenness (a car leaving takes the
    detail, not the keenness: that alone is no smear)"""
    smear_min_keen: float = 0.1
    """a cell whose normal keenness is below this (sky, a soft plain wall: little to lose
    to blur) is not judged (the real UFPR05 cells measure 0.2-0.45)"""
    replay_check: bool = True
    """False for a recording replayed on purpose (the agent's ``--loop``)"""
    replay_window_s: float = 1200.0
    """frames are remembered this long: a loop up to 20 minutes long is seen"""
    replay_min_age_s: float = 10.0
    """a frame equal to one seen longer ago than this is a repeat (a server's cache
    resent after a reconnect is younger)"""
    replay_repeats: int = 3
    """this many repeats within ``replay_s`` -> replayed (a live camera shows none)"""
    replay_s: float = 10.0
    """... counted over this long (a loop read at a third of its frame rate repeats in
    about one frame of three from its first replayed pass on, more on each pass)"""


@dataclass(frozen=True)
class FrameQuality:
    """The verdict for one frame and the measures behind it (for health and logs)."""

    fault: FrameFault | None
    brightness: float
    p99: float
    sharpness: float
    difference: float | None
    """mean absolute difference to the previous frame (None for the first frame)"""
    smeared: np.ndarray | None = None
    """bool[rows, cols] of SMEAR_GRID: cells that lost their detail (None: not judged)"""

    @property
    def ok(self) -> bool:
        return self.fault is None


def _grey(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def thumbnail(frame: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """Grey, area-averaged thumbnail ``width`` pixels wide (keeps the aspect ratio)."""
    grey = _grey(frame)
    h, w = grey.shape[:2]
    height = max(1, round(h * width / max(w, 1)))
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)


def brightness_stats(thumb: np.ndarray) -> tuple[float, float]:
    """Mean grey level and the 99th percentile of the thumbnail."""
    return float(thumb.mean()), float(np.percentile(thumb, 99))


def sharpness(thumb: np.ndarray, lap: np.ndarray | None = None) -> float:
    """Brightness-normalised fine detail of a thumbnail (see the module docstring);
    ``lap``: its Laplacian, when already computed."""
    lap = cv2.Laplacian(thumb, cv2.CV_32F) if lap is None else lap
    mean = float(thumb.mean())
    return 1000.0 * float(lap.var()) / (mean + 5.0) ** 2


def contrast_sharpness(thumb: np.ndarray, lap: np.ndarray | None = None) -> float:
    """Fine detail against the picture's own contrast (its 5th-95th percentile spread,
    which glare or a veil hardly moves); a haze keeps it, a smeared lens does not."""
    lo, hi = np.percentile(thumb, (5, 95))
    lap = cv2.Laplacian(thumb, cv2.CV_32F) if lap is None else lap
    return 1000.0 * float(lap.var()) / max(float(hi - lo), 8.0) ** 2


def cell_measures(
    frame: np.ndarray, grid: tuple[int, int] = SMEAR_GRID, width: int = SMEAR_WIDTH
) -> np.ndarray:
    """float[2, rows, cols] over a ``grid`` (columns, rows) of cells of a ``width``-pixel
    grey thumbnail: each cell's **detail** (mean gradient magnitude over its brightness:
    how much there is to see, which a car leaving takes away as surely as a smear) and its
    **keenness** (the share of that gradient one more pixel of blur removes: a smeared
    picture has little left to lose, a sharp one, full or empty, loses a third; a car
    leaving does not change it). The remainder pixels past the last whole cell are left
    out."""
    cols, rows = grid
    thumb = thumbnail(frame, width).astype(np.float32)
    h, w = thumb.shape[:2]
    ch, cw = max(1, h // rows), max(1, w // cols)
    if h < rows or w < cols:  # too small a picture to cut: nothing judged (all zero)
        return np.zeros((2, rows, cols))

    def grad(img: np.ndarray) -> np.ndarray:
        g = np.abs(cv2.Sobel(img, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(img, cv2.CV_32F, 0, 1))
        return g[: rows * ch, : cols * cw].reshape(rows, ch, cols, cw).sum(axis=(1, 3))

    sharp = grad(thumb)
    # keenness over a band above the pixel noise: sensor noise added after a smear is
    # the sharpest thing in a dark picture, and one pixel of blur takes it as readily
    # from a smeared cell as from a sharp one
    fine = cv2.GaussianBlur(thumb, (0, 0), KEEN_SIGMAS[0])
    g_fine = grad(fine)
    g_coarse = grad(cv2.GaussianBlur(fine, (0, 0), KEEN_SIGMAS[1]))
    means = thumb[: rows * ch, : cols * cw].reshape(rows, ch, cols, cw).mean(axis=(1, 3))
    detail = sharp / (ch * cw) / (means + 5.0)
    keen = 1.0 - g_coarse / np.maximum(g_fine, 1e-6)
    return np.stack([detail, keen])


def noise_sample(frame: np.ndarray, stride: int = FROZEN_STRIDE) -> np.ndarray:
    """Raw pixels (first channel) on a sparse grid, for the frozen check."""
    plane = frame if frame.ndim == 2 else frame[:, :, 0]
    return np.ascontiguousarray(plane[::stride, ::stride])


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two equally shaped uint8 samples; inf if shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    return float(cv2.absdiff(a, b).mean())


def changed_share(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:
    """Share of FROZEN_TILE tiles whose mean absolute difference exceeds ``tolerance``
    (1.0 when the samples differ in shape)."""
    if a.shape != b.shape:
        return 1.0
    diff = cv2.absdiff(a, b)
    rows, cols = diff.shape[0] // FROZEN_TILE, diff.shape[1] // FROZEN_TILE
    if rows == 0 or cols == 0:  # a tiny picture: one tile
        return float(diff.mean() > tolerance)
    tiles = diff[: rows * FROZEN_TILE, : cols * FROZEN_TILE].reshape(
        rows, FROZEN_TILE, cols, FROZEN_TILE
    )
    return float((tiles.mean(axis=(1, 3)) > tolerance).mean())


def covered_spaces(patches: np.ndarray, settings: QualitySettings) -> np.ndarray:
    """Which ``(N, S, S, 3)`` uint8 patches show nothing: too dark, or featureless. Read on
    every other pixel (a quarter of a millisecond for 40 spaces), in sums of the three
    channels (three times the grey level)."""
    if len(patches) == 0:
        return np.zeros(0, dtype=bool)
    sub = patches[:, ::2, ::2]
    grey3 = sub.reshape(len(sub), -1, sub.shape[-1]).sum(axis=2, dtype=np.uint16)
    # the brightest 1 % below the threshold: at most 1 % of the pixels reach it
    bright = (grey3 >= 3 * settings.space_dark_p99).sum(axis=1)
    dark = bright <= 0.01 * grey3.shape[1]
    flat = grey3.astype(np.float32).std(axis=1) < 3 * settings.space_flat_std
    return dark | flat


def space_cells(
    polygons: list[np.ndarray], size: tuple[int, int], grid: tuple[int, int] = SMEAR_GRID
) -> np.ndarray:
    """float[spaces, rows * cols]: the share of each polygon (in pixels of a ``size``
    (w, h) frame) that lies in each cell of :func:`cell_measures`'s grid over that
    frame's thumbnail (0 everywhere for a polygon wholly outside the cells)."""
    cols, rows = grid
    w, h = size
    th = max(1, round(h * SMEAR_WIDTH / max(w, 1)))
    ch, cw = th // rows, SMEAR_WIDTH // cols
    out = np.zeros((len(polygons), rows * cols))
    if ch < 1 or cw < 1:  # too small a picture: nothing judged (cell_measures)
        return out
    up = 4  # rasterised at 4x the thumbnail's resolution
    scale = np.array([SMEAR_WIDTH / w, th / h]) * up
    for i, poly in enumerate(polygons):
        mask = np.zeros((rows * ch * up, cols * cw * up), np.uint8)
        pts = np.round(np.asarray(poly, np.float64) * scale).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
        per_cell = mask.reshape(rows, ch * up, cols, cw * up).sum(axis=(1, 3), dtype=np.int64)
        total = per_cell.sum()
        if total:
            out[i] = per_cell.ravel() / total
    return out


def smeared_spaces(
    weights: np.ndarray, smeared: np.ndarray | None, share: float = 0.5
) -> np.ndarray:
    """Spaces (rows of :func:`space_cells`) with at least ``share`` of their area in
    smeared cells."""
    if smeared is None or not smeared.any():
        return np.zeros(len(weights), dtype=bool)
    return weights @ smeared.ravel().astype(np.float64) >= share


def shape_matches(size: tuple[int, int], configured: tuple[int, int]) -> bool:
    """Frames of ``size`` (w, h) have the site file's ``configured`` shape (a substream of
    another size but the same shape is fine: the polygons are scaled)."""
    (w, h), (cw, ch) = size, configured
    if min(w, h, cw, ch) <= 0:
        return False
    return abs((w / h) / (cw / ch) - 1.0) <= SHAPE_TOLERANCE


class FrameQualityMonitor:
    """Checks each frame of one stream; remembers what the frozen check needs.

    ``check(frame, now)`` with ``now`` in seconds (any monotonic clock).
    """

    def __init__(self, settings: QualitySettings | None = None, best: float | None = None):
        self.settings = settings or QualitySettings()
        self.best = best
        """the camera's best normal sharpness so far (None until one is learnt); the agent
        keeps it across restarts, so a restart in the rain does not learn the rain"""
        self._previous: np.ndarray | None = None
        self._last_change: float | None = None
        self._seen: dict[int, float] = {}  # hash of a frame's sample -> when last seen
        self._seen_order: deque[tuple[float, int]] = deque()  # (when, hash), oldest first
        self._previous_hash: int | None = None
        self._repeats: deque[float] = deque()  # when repeats came, within replay_s
        self._normal: deque[float] = deque(maxlen=self.settings.baseline_samples)
        self._normal_contrast: deque[float] = deque(maxlen=self.settings.baseline_samples)
        self._next_sample = -math.inf
        self._soft_since: float | None = None
        # per cell: samples (NaN while a cell is learnt afresh) and since when soft
        self._cell_normal: deque[np.ndarray] = deque(maxlen=self.settings.baseline_samples)
        self._cell_soft_since = np.full(SMEAR_GRID[::-1], np.nan)  # per cell, since when soft
        self._cell_norm: np.ndarray | None = None  # the shares x each cell's normals
        self._cell_median = np.full((2, *SMEAR_GRID[::-1]), np.nan)  # each cell's normals
        self.new_cell_normals = 0
        """cells whose lasting softness was taken as their new normal (said by the caller)"""
        self.new_normals = 0
        """times a lasting softness was taken as the new normal (the caller says so)"""
        self.refused_normals = 0
        """times a lasting softness was too soft to be taken as the new normal"""

    def reset(self) -> None:
        """Forget the previous frame (after a reconnect the stream starts afresh); the
        frames seen before are still remembered (a replay may begin with a reconnect)."""
        self._previous = None
        self._last_change = None
        self._previous_hash = None

    def check(self, frame: np.ndarray, now: float) -> FrameQuality:
        s = self.settings
        sample = noise_sample(frame)
        difference = None
        changed = 1.0
        if self._previous is not None:
            difference = mean_abs_difference(sample, self._previous)
            changed = changed_share(sample, self._previous, s.frozen_tolerance)
        if changed > s.frozen_changed_share or self._last_change is None:
            self._last_change = now
        self._previous = sample
        frozen = now - self._last_change > s.frozen_s
        replayed = s.replay_check and self._replayed(hash(sample.tobytes()), now)

        thumb = thumbnail(frame)
        mean, p99 = brightness_stats(thumb)
        lap = cv2.Laplacian(thumb, cv2.CV_32F)
        sharp = sharpness(thumb, lap)
        detail = contrast_sharpness(thumb, lap)
        fault: FrameFault | None = None
        if p99 < s.black_p99:
            fault = FrameFault.BLACK
        elif frozen:
            fault = FrameFault.FROZEN
        elif replayed:
            fault = FrameFault.REPLAYED
        elif sharp < s.min_sharpness or self._too_soft(sharp, detail, now):
            fault = FrameFault.BLURRED
        cells = None if fault is not None else cell_measures(frame)
        smeared = None if cells is None else self._smeared_cells(cells, now)
        if fault is None and now >= self._next_sample:
            self._normal.append(sharp)
            self._normal_contrast.append(detail)
            # a smeared cell's sample would teach it the smear: its normal stands in for it
            # (not NaN: half an hour of those would leave the cell unlearnt, then learn it)
            assert cells is not None
            if smeared is not None and smeared.any():
                cells = np.where(smeared, self._cell_median, cells)
            self._cell_normal.append(cells)
            self._cell_norm = None  # recomputed at the next frame
            self._next_sample = now + s.baseline_every_s
        return FrameQuality(fault, mean, p99, sharp, difference, smeared)

    def _smeared_cells(self, cells: np.ndarray, now: float) -> np.ndarray | None:
        """Which cells keep less than their shares of both their normals, detail and
        keenness (None until the normals are learnt); a cell soft for ``rebaseline_s`` is
        learnt afresh. ``cells`` is always ``cell_measures``' fixed grid."""
        s = self.settings
        if len(self._cell_normal) < s.baseline_min_samples:
            return None
        if self._cell_norm is None:  # a new sample since: the medians again (not per frame)
            history = np.stack(self._cell_normal)
            learnt = (~np.isnan(history[:, 0])).sum(axis=0) >= s.baseline_min_samples
            with warnings.catch_warnings():  # all-NaN cells: being learnt afresh
                warnings.simplefilter("ignore", RuntimeWarning)
                normal = np.nanmedian(history, axis=0)
            judged = learnt & (normal[1] >= s.smear_min_keen)
            self._cell_median = normal
            shares = np.array([s.smear_share, s.smear_keen_share])[:, None, None]
            self._cell_norm = np.where(judged, shares * normal, -np.inf)
        soft: np.ndarray = np.logical_and.reduce(cells < self._cell_norm, axis=0)  # both less
        since = self._cell_soft_since
        since[~soft] = np.nan
        since[soft & np.isnan(since)] = now
        lasting = soft & (now - since > s.rebaseline_s)
        if lasting.any():  # it has stayed so: its new normal, learnt from here on
            for sample in self._cell_normal:
                sample[:, lasting] = np.nan
            self._cell_norm = None
            since[lasting] = np.nan
            soft &= ~lasting
            self.new_cell_normals += int(lasting.sum())
        return soft

    def _replayed(self, digest: int, now: float) -> bool:
        """Note a frame's sample hash; True while repeats of older frames keep coming."""
        s = self.settings
        while self._seen_order and self._seen_order[0][0] < now - s.replay_window_s:
            when, old = self._seen_order.popleft()
            if self._seen.get(old) == when:
                del self._seen[old]
        if digest != self._previous_hash:  # the frame before again: the frozen check's
            self._previous_hash = digest
            seen = self._seen.get(digest)
            if seen is not None and now - seen > s.replay_min_age_s:
                self._repeats.append(now)
            self._seen[digest] = now
            self._seen_order.append((now, digest))
        while self._repeats and self._repeats[0] < now - s.replay_s:
            self._repeats.popleft()
        return len(self._repeats) >= s.replay_repeats

    def normal_sharpness(self) -> float | None:
        """This camera's recent normal sharpness (None until enough good frames); the
        best of them is remembered."""
        if len(self._normal) < self.settings.baseline_min_samples:
            return None
        normal = float(np.median(self._normal))
        if self.best is None or normal > self.best:
            self.best = normal
        return normal

    def _softer_than_normal(self, sharp: float, detail: float) -> bool:
        s = self.settings
        normal = self.normal_sharpness()
        if normal is None or sharp >= s.relative_sharpness * normal:
            return False
        if sharp < s.hard_relative_sharpness * normal:
            return True
        # between the two: blur, unless the detail against the contrast says a veil
        return detail < s.veil_detail_share * float(np.median(self._normal_contrast))

    def _too_soft(self, sharp: float, detail: float, now: float) -> bool:
        """Softer than the camera's normal allows, or than its best ever does; a softness
        that lasts becomes the new normal only in the first case."""
        s = self.settings
        below_best = self.best is not None and sharp < s.keep_share * self.best
        if not below_best and not self._softer_than_normal(sharp, detail):
            self._soft_since = None
            return False
        if self._soft_since is None:
            self._soft_since = now
        elif now - self._soft_since > s.rebaseline_s:
            if below_best:  # no normal for a camera: a lens to clean (said again later)
                self.refused_normals += 1
                self._soft_since = now
                return True
            self._normal.clear()  # it has stayed so: the new normal, learnt from here on
            self._normal_contrast.clear()
            self._soft_since = None
            self.new_normals += 1
            return False
        return True
