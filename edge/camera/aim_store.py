"""Where a camera agent keeps what it learnt of its camera, beside its report spool.

The reference view is a grey PNG whose name carries a digest of the camera's resolution
and polygons in the site file: polygons redrawn (the camera re-aimed on purpose) make
another name, so the view is learned anew; files of earlier polygons are removed when the
new one is written. The camera's best sharpness (``edge.camera.quality``) is a small JSON
file: a restart in the rain must not take the rain for the camera's normal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from parking.site import Camera

log = logging.getLogger(__name__)


def polygons_digest(camera: Camera) -> str:
    """Short digest of what the view must match: resolution and polygons."""
    text = json.dumps(
        [list(camera.resolution), [[k, [list(p) for p in v]] for k, v in camera.polygons.items()]]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ViewStore:
    """The reference view of one agent's camera in ``folder`` (the spool's)."""

    def __init__(self, folder: Path, stem: str, camera: Camera):
        self.folder = folder
        self.stem = stem
        self.path = folder / f"{stem}.view-{polygons_digest(camera)}.png"
        self.best_path = folder / f"{stem}.sharpness.json"

    def _others(self) -> list[Path]:
        return [p for p in self.folder.glob(f"{self.stem}.view-*.png") if p != self.path]

    def load(self) -> np.ndarray | None:
        """The kept view, or None (none yet, unreadable, or for other polygons)."""
        if not self.path.exists():
            if self._others():
                log.info(
                    "%s: the polygons changed since the view was kept: learning it anew", self.stem
                )
            return None
        thumb = cv2.imread(str(self.path), cv2.IMREAD_GRAYSCALE)
        if thumb is None:
            log.warning("%s: unreadable, learning the view anew", self.path)
        return thumb

    def save(self, thumb: np.ndarray) -> None:
        """Write ``thumb`` (aside, then renamed); drop views of earlier polygons."""
        ok, buf = cv2.imencode(".png", thumb)
        if not ok:
            raise ValueError("PNG encoding of the view failed")
        _write_private(self.path, buf.tobytes())
        for old in self._others():
            with contextlib.suppress(OSError):
                old.unlink()

    def load_best(self) -> float | None:
        """The camera's best sharpness kept from earlier runs, or None."""
        try:
            value = json.loads(self.best_path.read_text(encoding="utf-8"))["best_sharpness"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s: unreadable (%s), learning the camera's sharpness anew", self.best_path, exc
            )
            return None
        return float(value) if isinstance(value, int | float) and value > 0 else None

    def save_best(self, value: float) -> None:
        _write_private(self.best_path, json.dumps({"best_sharpness": round(value, 3)}).encode())

    def forget(self) -> None:
        """Remove what was kept of this agent's camera (``--new-view``)."""
        for p in [self.path, self.best_path, *self._others()]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _write_private(path: Path, data: bytes) -> None:
    """Write aside (0600), then rename: a power cut leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
