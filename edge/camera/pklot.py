"""Parse PKLot-style XML space annotations.

PKLot files describe each parking space with a ``<space id=.. occupied=..>``
element holding a ``<contour>`` of ``<point x=.. y=..>`` elements. Tag names are
matched case-insensitively (original files sometimes spell ``<Point>``). A
space without an ``occupied`` attribute is unlabelled: :func:`parse_pklot_xml`
keeps it with ``occupied=None`` and :func:`labelled_spaces` drops it.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Space:
    """One annotated parking space."""

    id: str
    contour: np.ndarray  # (N, 2) int32 polygon in pixels
    occupied: bool | None  # None when unlabelled


def _local(tag: str) -> str:
    """Lower-case tag name without XML namespace."""
    return tag.rsplit("}", 1)[-1].lower()


def _attr(elem: ET.Element, name: str) -> str | None:
    """Attribute lookup, case-insensitive on the attribute name."""
    for key, value in elem.attrib.items():
        if key.lower() == name:
            return value
    return None


def _parse_occupied(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("1", "true", "yes", "busy", "occupied"):
        return True
    if v in ("0", "false", "no", "free", "empty"):
        return False
    return None


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((e for e in elem.iter() if _local(e.tag) == name), None)


def _rotated_rect(space: ET.Element) -> np.ndarray | None:
    """The four corners of the space's ``<rotatedRect>`` (centre, size, angle in degrees):
    the same rectangle the contour usually traces, for spaces labelled with it alone."""
    rect = _child(space, "rotatedrect")
    if rect is None:
        return None
    centre, size, angle = _child(rect, "center"), _child(rect, "size"), _child(rect, "angle")
    if centre is None or size is None:
        return None
    try:
        cx, cy = float(_attr(centre, "x") or ""), float(_attr(centre, "y") or "")
        w, h = float(_attr(size, "w") or ""), float(_attr(size, "h") or "")
        d = float(_attr(angle, "d") or 0) if angle is not None else 0.0
    except ValueError:
        return None
    return np.round(cv2.boxPoints(((cx, cy), (w, h), d))).astype(np.int32)


def _encloses_area(contour: np.ndarray | None) -> bool:
    return contour is not None and abs(cv2.contourArea(contour.reshape(-1, 1, 2))) >= 1.0


def _contour(space: ET.Element) -> np.ndarray | None:
    """Points of the space's ``<contour>`` (or of any point under it as a fallback), else
    its ``<rotatedRect>`` (also when a point does not read as a number, or the points
    enclose no area); None when neither encloses an area (under one square pixel)."""
    holder = _child(space, "contour")
    scope = holder if holder is not None else space
    pts = []
    for e in scope.iter():
        if _local(e.tag) != "point":
            continue
        x, y = _attr(e, "x"), _attr(e, "y")
        if x is None or y is None:
            continue
        try:
            pts.append((round(float(x)), round(float(y))))
        except (ValueError, OverflowError):  # "608,5", "nan", "inf": the outline is not known
            pts = []
            break
    contour = np.asarray(pts, dtype=np.int32) if len(pts) >= 3 else None
    if not _encloses_area(contour):
        contour = _rotated_rect(space)
    return contour if _encloses_area(contour) else None  # a point or a line: nothing to see


def parse_pklot_xml(text: str | bytes, source: str = "PKLot XML") -> list[Space]:
    """Parse PKLot XML text into spaces (unlabelled ones have ``occupied=None``).

    A space without three contour points falls back to its ``<rotatedRect>``; one
    enclosing no area (a point, a line) is skipped, with a warning naming ``source``
    when it is labelled.
    """
    root = ET.fromstring(text)
    spaces: list[Space] = []
    skipped = 0
    unread: list[str] = []
    for i, elem in enumerate(e for e in root.iter() if _local(e.tag) == "space"):
        flag = _attr(elem, "occupied")
        occupied = _parse_occupied(flag)
        if occupied is None and flag is not None and flag.strip():
            unread.append(flag)
        contour = _contour(elem)
        if contour is None:
            skipped += occupied is not None
            log.debug("space %s has no usable contour; skipped", _attr(elem, "id"))
            continue
        sid = _attr(elem, "id") or str(i + 1)
        spaces.append(Space(sid, contour, occupied))
    if skipped:
        log.warning("%s: %d labelled space(s) without a usable contour skipped", source, skipped)
    if unread:
        log.warning(
            '%s: %d space(s) with an occupied value that is neither 0 nor 1 (e.g. "%s") '
            "taken as unlabelled",
            source,
            len(unread),
            unread[0],
        )
    return spaces


def labelled_spaces(text: str | bytes, source: str = "PKLot XML") -> list[Space]:
    """Only the spaces that carry an ``occupied`` label."""
    return [s for s in parse_pklot_xml(text, source) if s.occupied is not None]


def load_pklot_xml(path: str | Path, labelled_only: bool = True) -> list[Space]:
    """Read a PKLot XML file; by default drop unlabelled spaces."""
    data = Path(path).read_bytes()
    return labelled_spaces(data, str(path)) if labelled_only else parse_pklot_xml(data, str(path))


# what cv2.imdecode reads in every OpenCV build
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def walk_files(root: str | Path) -> list[Path]:
    """Every file under ``root`` (any depth), symlinked folders followed (a dataset is often
    assembled from links), each real folder once (no loops), sorted."""
    seen: set[str] = set()
    files: list[Path] = []

    def unreadable(exc: OSError) -> None:  # not silently short: say which folder is left out
        log.warning("cannot read folder %s: %s; its files are left out", exc.filename, exc.strerror)

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files.extend(Path(folder, n) for n in names if os.path.isfile(os.path.join(folder, n)))
    return sorted(files)


class ImageError(Exception):
    """An image file that cannot be used (unreadable, not an image, truncated)."""


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of a JPEG's first start-of-scan marker, walking its segments (so an EXIF
    thumbnail's own markers, inside a segment, are skipped); None if not found."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:
            return i
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def read_image(path: Path) -> np.ndarray:
    """Decode an image file (BGR), as stored: EXIF orientation is not applied, since
    labels are in the stored pixels. Raises :class:`ImageError` rather than return a
    truncated JPEG, which OpenCV would pad with grey and which would then be scored."""
    try:
        data = path.read_bytes()  # not cv2.imread: it crashes on names that are not UTF-8
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageError(f"cannot read image {path}: empty file")
    if data[:2] == b"\xff\xd8":
        # the end-of-image marker after the scan; bytes after it (phones and some cameras
        # append a trailer) do not matter
        scan = _jpeg_scan_start(data)
        if scan is not None and data.rfind(b"\xff\xd9") < scan:
            raise ImageError(f"cannot read image {path}: truncated JPEG (no end-of-image marker)")
    try:
        img = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        )
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV allows
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ImageError(f"cannot read image {path}: OpenCV refuses it ({msg})") from None
    if img is None:
        raise ImageError(f"cannot read image {path}: not an image OpenCV decodes")
    return img


def find_labelled_images(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, xml) pairs under ``root`` (any depth, symlinked folders followed) sharing the
    same stem in the same folder (``.xml`` in any letter case), sorted."""
    root = Path(root)
    files = walk_files(root)
    xml_of = {(p.parent, p.stem): p for p in files if p.suffix.lower() == ".xml"}
    return [
        (img, xml_of[(img.parent, img.stem)])
        for img in files
        if img.suffix.lower() in IMAGE_SUFFIXES and (img.parent, img.stem) in xml_of
    ]


def labelled_frames(
    root: str | Path, keep: Callable[[Path], bool] = lambda _: True
) -> Iterator[tuple[Path, list[Space], np.ndarray]]:
    """(image path, its labelled spaces, the decoded frame) for every labelled image under
    ``root`` that ``keep`` accepts; unreadable images are skipped with a warning."""
    for img_path, xml_path in find_labelled_images(root):
        if not keep(img_path):
            continue
        spaces = load_pklot_xml(xml_path)
        try:
            frame = read_image(img_path)
        except ImageError as exc:
            log.warning("%s", exc)
            continue
        if spaces:
            yield img_path, spaces, frame
