"""Turn space polygons of a frame into normalised, upright square patches.

Each polygon's minimum-area rotated rectangle is resized by ``margin`` (a
fraction of each side added on every side: positive adds context, negative
insets; the default adds 10 % of context) and warped to an upright
``size x size`` patch with the rectangle's long axis vertical (pointing down
the image). The margin is part of a model's recipe (stored in its metadata):
docs/camera.md has the measured effect of insets on unseen cameras. Geometry is fixed per camera, so the
affine matrices are computed once (:func:`precompute`) and reused for every
frame (:func:`extract`). All patches of a frame are sampled by one ``cv2.remap`` at twice the
patch size and area-averaged down (less aliasing), so patches from full frames
look like whole-patch datasets resized with ``INTER_AREA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_SIZE = 32
DEFAULT_MARGIN = 0.10
SUPERSAMPLE = 2


@dataclass(frozen=True)
class CropPlan:
    """Precomputed sampling maps for one camera geometry.

    All patches are sampled by ONE ``cv2.remap`` into a vertical mosaic at
    ``supersample`` times the patch size, then area-averaged down to ``size``.
    """

    size: int
    supersample: int
    count: int
    map1: np.ndarray  # fixed-point maps for cv2.remap (mosaic of count patches)
    map2: np.ndarray

    def __len__(self) -> int:
        return self.count


def rect_axes(polygon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Centre, down/right unit vectors and long/short side lengths of the min-area rect.

    ``down`` is the long axis oriented towards +y (image down); ``right`` is
    ``down`` rotated so that (right, down) keeps the image's handedness.
    """
    pts = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError("a polygon needs at least 3 points")
    rect = cv2.minAreaRect(pts)
    box = cv2.boxPoints(rect).astype(np.float64)
    e0, e1 = box[1] - box[0], box[2] - box[1]
    n0, n1 = float(np.hypot(*e0)), float(np.hypot(*e1))
    long_v, long_n, short_n = (e0, n0, n1) if n0 >= n1 else (e1, n1, n0)
    if long_n <= 0:
        raise ValueError("degenerate polygon")
    down = long_v / long_n
    if down[1] < 0 or (down[1] == 0 and down[0] < 0):
        down = -down
    right = np.array([down[1], -down[0]])
    centre = np.asarray(rect[0], dtype=np.float64)
    return centre, down, right, long_n, max(short_n, 1.0)


def polygon_matrix(
    polygon: np.ndarray, out_size: int, margin: float = DEFAULT_MARGIN
) -> np.ndarray:
    """2x3 affine mapping the polygon's rect, resized by ``margin``, onto an upright
    ``out_size x out_size`` square (rect long axis vertical)."""
    if margin <= -0.5:
        raise ValueError(f"margin {margin} leaves nothing of the space (must be > -0.5)")
    centre, down, right, long_n, short_n = rect_axes(polygon)
    hd = long_n * (0.5 + margin)
    hr = short_n * (0.5 + margin)
    src = np.array(
        [
            centre - right * hr - down * hd,
            centre + right * hr - down * hd,
            centre - right * hr + down * hd,
        ],
        dtype=np.float32,
    )
    out = float(out_size)
    dst = np.array([[0, 0], [out, 0], [0, out]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def precompute(
    polygons: Sequence[np.ndarray],
    size: int = DEFAULT_SIZE,
    margin: float = DEFAULT_MARGIN,
    supersample: int = SUPERSAMPLE,
) -> CropPlan:
    """Compute the sampling maps for a list of polygons (once per camera geometry)."""
    big = size * supersample
    n = len(polygons)
    mapx = np.zeros((max(n, 1) * big, big), np.float32)
    mapy = np.zeros_like(mapx)
    v, u = np.mgrid[0:big, 0:big].astype(np.float64)
    for i, poly in enumerate(polygons):
        inv = cv2.invertAffineTransform(polygon_matrix(poly, big, margin))
        mapx[i * big : (i + 1) * big] = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
        mapy[i * big : (i + 1) * big] = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    map1, map2 = cv2.convertMaps(mapx, mapy, cv2.CV_16SC2)
    return CropPlan(size, supersample, n, map1, map2)


def extract(frame: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Patches ``(N, size, size, C)`` uint8 for every polygon of ``plan``."""
    s, n = plan.size, plan.count
    if n == 0:
        return np.zeros((0, s, s) + frame.shape[2:], frame.dtype)
    mosaic = cv2.remap(
        frame, plan.map1, plan.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    if plan.supersample > 1:
        mosaic = cv2.resize(mosaic, (s, s * n), interpolation=cv2.INTER_AREA)
    return mosaic[: s * n].reshape((n, s, s) + frame.shape[2:])


def crop_polygons(
    frame: np.ndarray,
    polygons: Sequence[np.ndarray],
    size: int = DEFAULT_SIZE,
    margin: float = DEFAULT_MARGIN,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """One-shot convenience: :func:`precompute` then :func:`extract`."""
    return extract(frame, precompute(polygons, size, margin, supersample))


def check_patch_margin(margin: float) -> float:
    """``margin`` if it is a usable inset of whole patches, else ValueError."""
    if not -0.5 < margin <= 0.0:
        raise ValueError(f"patch margin {margin} must be in (-0.5, 0]")
    return margin


def inset_patch(patch: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The centre of a single-space patch: ``margin`` (a negative fraction of each side,
    like the polygon crop's) taken off every side; 0 keeps it whole."""
    if check_patch_margin(margin) == 0.0:
        return patch
    h, w = patch.shape[:2]
    dy, dx = round(-margin * h), round(-margin * w)
    return patch[dy : max(h - dy, dy + 1), dx : max(w - dx, dx + 1)]


def normalise_patch(patch: np.ndarray, size: int = DEFAULT_SIZE, margin: float = 0.0) -> np.ndarray:
    """A single-space patch (e.g. CNRPark), inset by ``margin``, resized to ``size x size``."""
    patch = inset_patch(patch, margin)
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


def fit_polygons(
    polygons: Sequence[np.ndarray], configured: tuple[int, int], actual: tuple[int, int]
) -> list[np.ndarray]:
    """The site file's polygons (drawn for ``configured`` width x height) on a picture of
    ``actual`` size: scaled, as the agent does for a camera's substream."""
    polys = [np.asarray(p, np.float32) for p in polygons]
    if tuple(actual) == tuple(configured):
        return polys
    scale = np.array([actual[0] / configured[0], actual[1] / configured[1]], np.float32)
    return [p * scale for p in polys]
