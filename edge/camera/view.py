"""``parkguide site camera-view``: commissioning a camera against its site file.

Reads a frame from the camera's source, draws the site file's space polygons over it,
each with the classifier's decision and confidence, and writes the picture: a technician
sees at once whether the polygons sit on the stalls. It also says what would make the
agent wrong or blind there: polygons mostly outside the picture or too small to judge,
a picture size other than the site file's, a black or blurred frame. Drawing and the
checks are pure (:func:`draw_overlay`, :func:`polygon_problems`); only :func:`grab_frame`
and :func:`main` do I/O.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.camera.crops import fit_polygons
from edge.camera.quality import FrameQualityMonitor, shape_matches
from edge.camera.smoothing import SmoothingSettings
from edge.camera.stream import (
    describe,
    is_file_source,
    parse_source,
    quiet_backends,
    source_problem,
)
from parking.site import Camera, SiteError, load_site

log = logging.getLogger(__name__)

MIN_AREA_PX = 400.0
"""A polygon smaller than this (20 x 20 px) gives the classifier too few pixels to judge."""
MIN_INSIDE = 0.8
"""Share of a polygon's area that must lie inside the picture."""
WARMUP_FRAMES = 5  # a stream's first frames may be grey or half-decoded
READ_TIMEOUT_S = 20.0

_COLOURS = {
    "occupied": (40, 40, 230),
    "free": (60, 200, 60),
    "uncertain": (0, 200, 255),
    "unknown": (255, 255, 255),  # a blind frame: the agent reports every space unknown
}


@dataclass(frozen=True)
class SpaceView:
    space: str
    state: str  # occupied | free | uncertain (below the agent's confidence floor) | unknown
    confidence: float


def polygon_problems(
    space_ids: Sequence[str], polygons: Sequence[np.ndarray], width: int, height: int
) -> list[str]:
    """What would keep the classifier from judging a space: most of its polygon outside the
    picture, or too small."""
    problems = []
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    for space, poly in zip(space_ids, polygons, strict=True):
        area = abs(float(cv2.contourArea(poly)))
        if area < MIN_AREA_PX:
            problems.append(f"{space}: polygon covers {area:.0f} px², under {MIN_AREA_PX:.0f}")
            continue
        inside, _ = cv2.intersectConvexConvex(cv2.convexHull(poly), frame)
        if inside < MIN_INSIDE * area:
            problems.append(
                f"{space}: only {100 * inside / area:.0f}% of its polygon is inside the "
                f"{width}x{height} picture"
            )
    return problems


def decide(
    space_ids: Sequence[str], occupied: np.ndarray, confidence: np.ndarray, floor: float
) -> list[SpaceView]:
    """Each space's decision as the agent would take it: below ``floor``, uncertain."""
    out = []
    for space, occ, conf in zip(space_ids, occupied.tolist(), confidence.tolist(), strict=True):
        state = "uncertain" if conf < floor else ("occupied" if occ else "free")
        out.append(SpaceView(space, state, round(float(conf), 3)))
    return out


def draw_overlay(
    frame: np.ndarray, polygons: Sequence[np.ndarray], views: Sequence[SpaceView]
) -> np.ndarray:
    """A copy of ``frame`` with every polygon outlined, coloured by its decision (white
    when unknown: a blind frame), and labelled with its space id and confidence."""
    out = frame.copy()
    thick = max(1, round(out.shape[1] / 640))
    scale = max(0.35, out.shape[1] / 3600)  # stalls are ~60 px wide on a 1280 px picture
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, poly in enumerate(polygons):
        pts = np.round(poly).astype(np.int32).reshape(-1, 1, 2)
        view = views[i]
        colour = _COLOURS[view.state]
        cv2.polylines(out, [pts], True, colour, thick, cv2.LINE_AA)
        # two short lines (id, confidence) so that neighbouring labels do not overlap
        lines = [view.space, f"{view.confidence:.2f}" if view.state != "unknown" else "?"]
        x, y = np.round(poly.mean(axis=0)).astype(int).tolist()
        sizes = [cv2.getTextSize(t, font, scale, 1)[0] for t in lines]
        step = max(h for _, h in sizes) + 4
        top = y - step * len(lines) // 2
        for k, (text, (tw, th)) in enumerate(zip(lines, sizes, strict=True)):
            base = top + step * (k + 1) - 2
            cv2.rectangle(
                out, (x - tw // 2 - 1, base - th - 2), (x + tw // 2 + 1, base + 2), (0, 0, 0), -1
            )
            cv2.putText(out, text, (x - tw // 2, base), font, scale, colour, 1, cv2.LINE_AA)
    return out


def grab_frame(source: str | int, warmup: int = WARMUP_FRAMES) -> np.ndarray | None:
    """One frame of ``source`` after ``warmup`` (a file: its first frame); None if none came."""
    quiet_backends()
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG if isinstance(source, str) else cv2.CAP_ANY)
    try:
        if not cap.isOpened():
            return None
        frame = None
        deadline = time.monotonic() + READ_TIMEOUT_S
        for _ in range(1 if is_file_source(source) else warmup + 1):
            ok, got = cap.read()
            if not ok:
                break
            frame = got
            if time.monotonic() > deadline:
                break
        return frame
    finally:
        cap.release()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--camera", required=True, help="id of the camera in the site file")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--source", help="rtsp:// or http:// URL, a video or image file, or a device index"
    )
    src.add_argument(
        "--source-env", metavar="VAR", help="environment variable holding the source instead"
    )
    parser.add_argument("--out", required=True, help="where to write the picture (.jpg or .png)")
    parser.add_argument("--model", help="classifier model (default: the bundled one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _camera(site_path: str, camera_id: str) -> Camera:
    site = load_site(site_path)
    for cam in site.cameras:
        if cam.id == camera_id:
            return cam
    known = ", ".join(c.id for c in site.cameras) or "none"
    raise SiteError([f"{site_path}: no camera {camera_id!r} (cameras: {known})"])


def main(args: argparse.Namespace) -> int:
    from edge.camera.classifier import SpaceClassifier

    try:
        camera = _camera(args.site, args.camera)
    except (SiteError, OSError) as exc:
        print(f"parkguide site camera-view: {exc}", file=sys.stderr)
        return 2
    raw = os.environ.get(args.source_env) if args.source_env else args.source
    if not raw or not raw.strip():
        what = f"${args.source_env} is {'empty' if raw is not None else 'not set'}"
        print(f"parkguide site camera-view: {what}", file=sys.stderr)
        return 2
    source = parse_source(raw)
    if (why := source_problem(source)) is not None:
        print(f"parkguide site camera-view: --source {describe(source)}: {why}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        print("parkguide site camera-view: --out must end in .jpg or .png", file=sys.stderr)
        return 2
    try:
        classifier = SpaceClassifier.load(args.model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"parkguide site camera-view: {exc}", file=sys.stderr)
        return 2
    frame = grab_frame(source)
    if frame is None:
        print(f"parkguide site camera-view: no frame from {describe(source)}", file=sys.stderr)
        return 1
    height, width = frame.shape[:2]
    space_ids = list(camera.polygons)
    polygons = fit_polygons(list(camera.polygons.values()), camera.resolution, (width, height))
    problems = []
    cw, ch = camera.resolution
    other_shape = not shape_matches((width, height), camera.resolution)
    if other_shape:
        problems.append(
            f"the picture is {width}x{height}, another shape than the site file's {cw}x{ch}: "
            "the agent reports every space unknown (blind, geometry) unless this stream is "
            "the camera's whole view squeezed to another shape (then run it with "
            "--squeezed-stream); another camera or a cropped view needs its own polygons"
        )
    elif (width, height) != (cw, ch):
        problems.append(
            f"the picture is {width}x{height}, the site file says {cw}x{ch}: the polygons are "
            "scaled (right for a substream of the same view, wrong for another camera)"
        )
    problems += polygon_problems(space_ids, polygons, width, height)
    quality = FrameQualityMonitor().check(frame, time.monotonic())
    if quality.fault is not None:
        problems.append(
            f"the frame is {quality.fault.value} (brightness {quality.brightness:.0f}, "
            f"sharpness {quality.sharpness:.1f}): the agent would report every space unknown"
        )
        views = [SpaceView(s, "unknown", 0.0) for s in space_ids]
    else:
        occupied, confidence = classifier.classify(frame, classifier.plan(polygons))
        views = decide(space_ids, occupied, confidence, SmoothingSettings().min_confidence)
    if not cv2.imwrite(str(out), draw_overlay(frame, polygons, views)):
        print(f"parkguide site camera-view: could not write {out}", file=sys.stderr)
        return 1
    result = {
        "ok": not problems,
        "camera": camera.id,
        "source": describe(source),
        "width": width,
        "height": height,
        "out": str(out),
        # the agent's own verdict on this picture: its health's fault when blind
        "frame": quality.fault.value
        if quality.fault is not None
        else ("geometry" if other_shape else "ok"),
        # blind: every space unknown, as the agent would report it
        "spaces": [v.__dict__ for v in views],
        "problems": problems,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"camera {camera.id}: {width}x{height} from {describe(source)} -> {out}")
        for v in views:
            print(f"  {v.space:<12} {v.state:<10} {v.confidence:.2f}")
        for p in problems:
            print(f"  problem: {p}")
        print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1
