"""``parkguide eval camera DIR [--json] [--patches] [--model PATH]``.

Full-frame mode (default): every image (jpg/jpeg/png/bmp/tif/webp, any depth
under DIR, symlinked folders followed) that has a PKLot XML file of the same stem
is classified space by space from the labelled contours (a space mostly outside
its image is skipped with a warning). ``--patches`` mode: DIR holds ``busy/`` and ``free/``
folders of single-space patches (any depth below them; PKLotSegmented's
``Occupied/`` and ``Empty/`` too). Occupied is the
positive class; precision, recall or F1 with nothing to divide by (no occupied
space called, or none labelled) is ``null``, not a perfect score. ``ms_per_frame`` is the classification time per frame (or per
patch with ``--patches``), image decoding excluded.
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

from edge.camera.classifier import SpaceClassifier
from edge.camera.pklot import (
    IMAGE_SUFFIXES,
    ImageError,
    find_labelled_images,
    load_pklot_xml,
    read_image,
    walk_files,
)

log = logging.getLogger(__name__)


class EvalError(Exception):
    """A user-facing problem with the dataset directory."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``dir``, ``--json``, ``--patches`` and ``--model`` to ``parser``."""
    parser.add_argument("dir", type=Path, help="dataset directory")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--patches",
        action="store_true",
        help="DIR has busy/ and free/ (or Occupied/ and Empty/) single-space patches",
    )
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: bundled)")


# a space whose contour has less than this share of its bounding box inside the frame is
# skipped: its labels belong to another image size (or another image), not to this frame
MIN_INSIDE = 0.5


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Accuracy, precision, recall and F1 with occupied as the positive class; a figure
    whose denominator is zero (no occupied space called or labelled) is None, not 1.0."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None
    accuracy = float(np.mean(pred == truth)) if len(truth) else 0.0
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def _plannable(clf: SpaceClassifier, contour: np.ndarray) -> bool:
    """Can the space be cropped (a contour of one point or a line cannot)?"""
    try:
        clf.plan([contour])
    except ValueError:
        return False
    return True


def _inside_share(contour: np.ndarray, width: int, height: int) -> float:
    """Share of the contour's bounding box that lies inside a ``width`` x ``height`` frame."""
    x0, y0 = contour.min(axis=0).astype(np.int64)  # int32 products overflow past ~46k px
    x1, y1 = contour.max(axis=0).astype(np.int64)
    area = max(1, (x1 - x0) * (y1 - y0))
    w = max(0, min(x1, width) - max(x0, 0))
    h = max(0, min(y1, height) - max(y0, 0))
    return w * h / area


def evaluate_frames(root: Path, clf: SpaceClassifier) -> dict[str, float | int | None]:
    """Classify every labelled space of every PKLot-labelled image under ``root``."""
    preds, truths, times = [], [], []
    images = 0
    for img_path, xml_path in find_labelled_images(root):
        try:
            spaces = load_pklot_xml(xml_path)
        except Exception as exc:  # noqa: BLE001 - report and go on
            log.warning("skipping %s: %s", xml_path, exc)
            continue
        if not spaces:
            log.warning(
                "%s: no labelled space with a usable outline; %s skipped", xml_path, img_path.name
            )
            continue
        try:
            frame = read_image(img_path)
        except ImageError as exc:
            log.warning("%s", exc)
            continue
        height, width = frame.shape[:2]
        inside = [s for s in spaces if _inside_share(s.contour, width, height) >= MIN_INSIDE]
        if 2 * len(inside) <= len(spaces):
            # labels for another image size: the spaces still inside are misplaced too
            log.warning(
                "%s: %d of %d spaces lie mostly outside the %dx%d image: labels for another "
                "image size? %s skipped (the rest would be scored on misplaced crops)",
                xml_path,
                len(spaces) - len(inside),
                len(spaces),
                width,
                height,
                img_path.name,
            )
            continue
        if len(inside) < len(spaces):
            log.warning(
                "%s: %d of %d spaces lie mostly outside the %dx%d image and are skipped "
                "(labels for another image size?)",
                xml_path,
                len(spaces) - len(inside),
                len(spaces),
                width,
                height,
            )
            spaces = inside
        try:
            plan = clf.plan([s.contour for s in spaces])
        except ValueError:  # a contour of one point or a line: skip those spaces
            usable = [s for s in spaces if _plannable(clf, s.contour)]
            log.warning(
                "%s: %d spaces without a usable contour skipped",
                xml_path,
                len(spaces) - len(usable),
            )
            spaces = usable
            if not spaces:
                continue
            plan = clf.plan([s.contour for s in spaces])
        t0 = time.perf_counter()
        occ, _ = clf.classify(frame, plan)
        times.append(time.perf_counter() - t0)
        preds.append(occ)
        truths.append(np.array([bool(s.occupied) for s in spaces]))
        images += 1
    if not images:
        raise EvalError(f"no labelled images (image + PKLot XML of the same stem) under {root}")
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    out: dict[str, float | int | None] = {"images": images, "spaces": int(len(truth))}
    out.update(metrics(pred, truth))
    out["ms_per_frame"] = float(np.mean(times) * 1e3)
    return out


_PATCH_LABELS = {"busy": True, "free": False, "occupied": True, "empty": False}
"""Label folders (any letter case): CNRPark's ``busy``/``free``, PKLotSegmented's
``Occupied``/``Empty``."""


def _patch_files(root: Path) -> list[tuple[Path, bool]]:
    """Every image under a label folder (:data:`_PATCH_LABELS`) at any depth below
    ``root`` (``root/busy``, CNRPark's ``A/busy``, PKLotSegmented's
    ``UFPR04/Sunny/2012-12-07/Empty``, ...): the nearest such folder gives its label."""
    files: list[tuple[Path, bool]] = []
    for p in walk_files(root):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        folders = [d.lower() for d in p.relative_to(root).parts[:-1]]
        label = next((_PATCH_LABELS[d] for d in reversed(folders) if d in _PATCH_LABELS), None)
        if label is not None:
            files.append((p, label))
    return files


def evaluate_patches(
    root: Path, clf: SpaceClassifier, batch: int = 256
) -> dict[str, float | int | None]:
    """Classify every patch under a ``busy`` or ``free`` folder below ``root``."""
    files = _patch_files(root)
    preds, truths = [], []
    elapsed = 0.0
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        imgs, labels = [], []
        for p, label in chunk:
            try:
                img = read_image(p)
            except ImageError as exc:
                log.warning("%s", exc)
                continue
            imgs.append(img)
            labels.append(label)
        if not imgs:
            continue
        t0 = time.perf_counter()
        occ, _ = clf.classify_patches(imgs)
        elapsed += time.perf_counter() - t0
        preds.append(occ)
        truths.append(np.array(labels, dtype=bool))
    if not preds:
        raise EvalError(
            f"no labelled patches in busy/ or free/ (or Occupied/, Empty/) folders under {root}"
        )
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    n = int(len(truth))
    out: dict[str, float | int | None] = {"images": n, "spaces": n}
    out.update(metrics(pred, truth))
    out["ms_per_frame"] = float(elapsed / n * 1e3)
    return out


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; 0 on success, 2 on a bad directory or model."""
    root: Path = Path(args.dir)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "directory not found"
        print(f"error: {what}: {root}", file=sys.stderr)
        return 2
    try:
        clf = SpaceClassifier.load(getattr(args, "model", None))
    except (FileNotFoundError, ValueError, cv2.error) as exc:
        print(f"error: cannot load model: {exc}", file=sys.stderr)
        return 2
    try:
        res = evaluate_patches(root, clf) if args.patches else evaluate_frames(root, clf)
    except EvalError as exc:
        hint = ""
        if not args.patches and _patch_files(root):
            hint = " (a folder of single-space patches? add --patches)"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, separators=(",", ":")))
    else:
        unit = "patch" if args.patches else "frame"

        def fig(key: str) -> str:  # undefined (nothing occupied called or labelled): n/a
            value = res[key]
            return "n/a" if value is None else f"{value:.4f}"

        print(
            f"{res['images']} {'patches' if args.patches else 'images'}, {res['spaces']} spaces: "
            f"accuracy {fig('accuracy')}, precision {fig('precision')}, "
            f"recall {fig('recall')}, F1 {fig('f1')} (occupied positive); "
            f"{res['ms_per_frame']:.2f} ms per {unit}"
        )
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="parkguide eval camera", description=__doc__)
    add_arguments(_p)
    raise SystemExit(main(_p.parse_args()))
