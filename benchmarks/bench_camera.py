"""Camera classifier speed on one core: classify 40 spaces vs. JPEG-decode the frame.

Prints one JSON line::

    {"bench": "camera", "classify_ms": ..., "decode_ms": ..., "fps": ..., "ratio": ...,
     "frame_ms": ..., "width": 1280, "height": 720, "spaces": 40,
     "source": "ufpr05" | "synthetic"}

``classify_ms``: median time of ``SpaceClassifier.classify`` for all spaces of
the frame (crop extraction + one batched forward; warps precomputed once per
geometry). ``decode_ms``: median ``cv2.imdecode`` of the same frame encoded as
JPEG quality 90, measured in the same run. ``frame_ms``: the agent's whole work on
a frame besides decoding it (the frame checks for black, frozen, replayed, blurred; the moved-view
check, on every other frame; the crops and the forward; the per-space covered check; the
smoothing). ``fps``: frames per second of
a loop of decoding and that whole work. Targets: ``classify_ms <= 3 * decode_ms``, ``fps >= 25``.
Uses the real UFPR05 frame and its polygons from ``--data DIR`` (default
``../shared/data`` beside the repo; the folder holding ``pklot-ufpr05/``) when present,
else a synthetic frame with 40 polygons, and says so on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.camera.aim import AimMonitor  # noqa: E402
from edge.camera.classifier import SpaceClassifier  # noqa: E402
from edge.camera.pklot import find_labelled_images, load_pklot_xml  # noqa: E402
from edge.camera.quality import FrameQualityMonitor, covered_spaces  # noqa: E402
from edge.camera.smoothing import OccupancySmoother  # noqa: E402

log = logging.getLogger("bench_camera")
DATA = ROOT.parent / "shared" / "data"


def synthetic() -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured 1280x720 frame and 40 rotated-rectangle spaces (4 rows of 10)."""
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), (0, 0), 3)
    polys = []
    for r in range(4):
        for c in range(10):
            rect = ((80 + c * 120, 100 + r * 170), (70, 150), -15 + 3 * r)
            polys.append(cv2.boxPoints(rect).astype(np.int32))
            cv2.rectangle(frame, (60 + c * 120, 60 + r * 170), (100 + c * 120, 140 + r * 170),
                          (200, 200, 200), -1)  # fmt: skip
    return frame, polys


def load_frame(data: Path) -> tuple[np.ndarray, list[np.ndarray], str]:
    ufpr05 = data / "pklot-ufpr05"
    if ufpr05.is_dir():
        for img_path, xml_path in find_labelled_images(ufpr05):
            spaces = load_pklot_xml(xml_path)
            frame = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            if frame is not None and len(spaces) >= 40:
                return frame, [s.contour for s in spaces[:40]], "ufpr05"
    log.warning("no UFPR05 frame under %s: timing a synthetic frame instead", ufpr05)
    frame, polys = synthetic()
    return frame, polys, "synthetic"


def median_ms(fn, runs: int) -> float:  # noqa: ANN001
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help=f"shared data folder ({DATA})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cv2.setNumThreads(1)
    frame, polys, source = load_frame(args.data)
    frame = cv2.resize(frame, (1280, 720)) if frame.shape[:2] != (720, 1280) else frame
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    clf = SpaceClassifier.load()
    plan = clf.plan(polys)
    monitor = FrameQualityMonitor()
    aim = AimMonitor()  # the moved-view check: every other frame at this clock's 5 frames/s
    smoother = OccupancySmoother(len(polys))
    clock = [0.0]

    def agent_frame(image: np.ndarray) -> None:
        """What ``CameraAgent.on_frame`` does with a frame (edge/camera_agent.py)."""
        clock[0] += 0.2
        monitor.check(image, clock[0])
        aim.check(image, clock[0])
        patches = clf.patches(image, plan)
        occupied, confidence = clf.decide(patches)
        covered = covered_spaces(patches, monitor.settings)
        smoother.update(occupied, np.where(covered, 0.0, confidence), clock[0])

    for _ in range(10):  # warm-up
        clf.classify(frame, plan)
        cv2.imdecode(buf, cv2.IMREAD_COLOR)
    decode_ms, classify_ms, frame_ms = [], [], []
    for _ in range(5):  # interleave rounds so load changes hit all alike
        decode_ms.append(median_ms(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR), 40))
        classify_ms.append(median_ms(lambda: clf.classify(frame, plan), 40))
        frame_ms.append(median_ms(lambda: agent_frame(frame), 40))
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 5.0:
        f = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        agent_frame(f)
        n += 1
    fps = n / (time.perf_counter() - t0)
    dec, cls = float(np.median(decode_ms)), float(np.median(classify_ms))
    out = {
        "bench": "camera",
        "classify_ms": round(cls, 3),
        "decode_ms": round(dec, 3),
        "fps": round(fps, 1),
        "ratio": round(cls / dec, 3),
        "frame_ms": round(float(np.median(frame_ms)), 3),
        "width": int(frame.shape[1]),
        "height": int(frame.shape[0]),
        "spaces": len(polys),
        "source": source,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
