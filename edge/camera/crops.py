"""Turn space polygons of a frame into normalised, upright square patches.

Each polygon's minimum-area rotated rectangle is enlarged by a small context
margin and warped to an upright ``size x size`` patch with the rectangle's long
axis vertical (pointing down the image). Geometry is fixed per camera, so the
affine matrices are computed once (:func:`precompute`) and reused for every
frame (:func:`extract`). Strong down-scaling is done in two steps (warp to an
integer multiple of ``size``, then ``INTER_AREA``) to avoid aliasing, so patches
from full frames look like whole-patch datasets resized with ``INTER_AREA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_SIZE = 40
DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class CropPlan:
    """Precomputed warps for one camera geometry."""

    size: int
    matrices: tuple[np.ndarray, ...]  # one 2x3 float64 affine per polygon
    factors: tuple[int, ...]  # warp to size*factor, then INTER_AREA to size

    def __len__(self) -> int:
        return len(self.matrices)


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
    polygon: np.ndarray, size: int, margin: float = DEFAULT_MARGIN
) -> tuple[np.ndarray, int]:
    """Affine matrix mapping the polygon's (margin-enlarged) rect to an upright square.

    Returns ``(M, factor)``: warp with ``M`` to ``size*factor`` pixels, then
    area-resize to ``size``.
    """
    centre, down, right, long_n, short_n = rect_axes(polygon)
    hd = long_n * (0.5 + margin)
    hr = short_n * (0.5 + margin)
    factor = int(max(1, min(8, np.ceil(2 * hd / size / 1.5))))
    out = float(size * factor)
    src = np.float32(
        [
            centre - right * hr - down * hd,
            centre + right * hr - down * hd,
            centre - right * hr + down * hd,
        ]
    )
    dst = np.float32([[0, 0], [out, 0], [0, out]])
    return cv2.getAffineTransform(src, dst), factor


def precompute(
    polygons: Sequence[np.ndarray], size: int = DEFAULT_SIZE, margin: float = DEFAULT_MARGIN
) -> CropPlan:
    """Compute the warps for a list of polygons (do once per camera geometry)."""
    mats, facs = [], []
    for poly in polygons:
        m, f = polygon_matrix(poly, size, margin)
        mats.append(m)
        facs.append(f)
    return CropPlan(size, tuple(mats), tuple(facs))


def extract(frame: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Patches ``(N, size, size, C)`` uint8 for every polygon of ``plan``."""
    s = plan.size
    shape = (len(plan), s, s) + frame.shape[2:]
    out = np.empty(shape, dtype=frame.dtype)
    for i, (m, f) in enumerate(zip(plan.matrices, plan.factors, strict=True)):
        big = s * f
        patch = cv2.warpAffine(
            frame, m, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if f > 1:
            patch = cv2.resize(patch, (s, s), interpolation=cv2.INTER_AREA)
        out[i] = patch.reshape(out.shape[1:])
    return out


def crop_polygons(
    frame: np.ndarray,
    polygons: Sequence[np.ndarray],
    size: int = DEFAULT_SIZE,
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """One-shot convenience: :func:`precompute` then :func:`extract`."""
    return extract(frame, precompute(polygons, size, margin))


def normalise_patch(patch: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Resize a whole single-space patch (e.g. CNRPark) to ``size x size``."""
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
