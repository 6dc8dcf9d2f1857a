"""Where a camera agent keeps its reference view: a grey PNG beside its report spool.

The file's name carries a digest of the camera's resolution and polygons in the site file:
polygons redrawn (the camera re-aimed on purpose) make another name, so the view is
learned anew; files of earlier polygons are removed when the new one is written.
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
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, buf.tobytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        for old in self._others():
            with contextlib.suppress(OSError):
                old.unlink()

    def forget(self) -> None:
        """Remove every kept view of this agent (``--new-view``)."""
        for p in [self.path, *self._others()]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
