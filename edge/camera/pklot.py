"""Parse PKLot-style XML space annotations.

PKLot files describe each parking space with a ``<space id=.. occupied=..>``
element holding a ``<contour>`` of ``<point x=.. y=..>`` elements. Tag names are
matched case-insensitively (original files sometimes spell ``<Point>``). A
space without an ``occupied`` attribute is unlabelled: :func:`parse_pklot_xml`
keeps it with ``occupied=None`` and :func:`labelled_spaces` drops it.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

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


def _contour(space: ET.Element) -> np.ndarray | None:
    """Points of the space's ``<contour>`` (or of any point under it as a fallback)."""
    holder = next((e for e in space.iter() if _local(e.tag) == "contour"), None)
    scope = holder if holder is not None else space
    pts = []
    for e in scope.iter():
        if _local(e.tag) != "point":
            continue
        x, y = _attr(e, "x"), _attr(e, "y")
        if x is None or y is None:
            continue
        pts.append((round(float(x)), round(float(y))))
    if len(pts) < 3:
        return None
    return np.asarray(pts, dtype=np.int32)


def parse_pklot_xml(text: str | bytes) -> list[Space]:
    """Parse PKLot XML text into spaces (unlabelled ones have ``occupied=None``).

    Spaces with fewer than three contour points are skipped.
    """
    root = ET.fromstring(text)
    spaces: list[Space] = []
    for i, elem in enumerate(e for e in root.iter() if _local(e.tag) == "space"):
        contour = _contour(elem)
        if contour is None:
            log.debug("space %s has no usable contour; skipped", _attr(elem, "id"))
            continue
        sid = _attr(elem, "id") or str(i + 1)
        spaces.append(Space(sid, contour, _parse_occupied(_attr(elem, "occupied"))))
    return spaces


def labelled_spaces(text: str | bytes) -> list[Space]:
    """Only the spaces that carry an ``occupied`` label."""
    return [s for s in parse_pklot_xml(text) if s.occupied is not None]


def load_pklot_xml(path: str | Path, labelled_only: bool = True) -> list[Space]:
    """Read a PKLot XML file; by default drop unlabelled spaces."""
    data = Path(path).read_bytes()
    return labelled_spaces(data) if labelled_only else parse_pklot_xml(data)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_labelled_images(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, xml) pairs under ``root`` (any depth) sharing the same stem in the same
    folder (``.xml`` in any letter case), sorted."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    xml_of = {(p.parent, p.stem): p for p in files if p.suffix.lower() == ".xml"}
    return [
        (img, xml_of[(img.parent, img.stem)])
        for img in files
        if img.suffix.lower() in IMAGE_SUFFIXES and (img.parent, img.stem) in xml_of
    ]
