"""Per-space occupancy classifier: a small CNN run through ``cv2.dnn``.

Each space's polygon is warped to an upright ``size x size`` patch
(:mod:`edge.camera.crops`), every patch is turned into network input as the
model's metadata says (``preprocess``: ``"raw"``, BGR 0..255 as float, for the
fine-tuned pretrained backbone; ``"standardise"``, zero mean and unit variance
per patch, for the from-scratch CNN), and all patches of a frame go through the
network in one batched forward. Only OpenCV and numpy are needed at run time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge.camera import crops

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).resolve().parent / "model"
DEFAULT_MODEL = MODEL_DIR / "occupancy.onnx"


COLOUR_MODES = ("bgr", "grey")
PREPROCESS_MODES = ("standardise", "raw")


def raw_input(patches: np.ndarray) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 BGR patches -> ``(N, 3, S, S)`` float32 in 0..255 (no scaling)."""
    return np.ascontiguousarray(patches.astype(np.float32).transpose(0, 3, 1, 2))


def standardise(patches: np.ndarray, colour: str = "bgr") -> np.ndarray:
    """``(N, S, S, 3)`` uint8 BGR patches -> ``(N, C, S, S)`` float32 network input.

    ``colour="grey"`` keeps one channel, the mean of B, G and R (C = 1): the
    model then cannot key on the hue of a lot's asphalt, grass or paint.
    """
    if colour not in COLOUR_MODES:
        raise ValueError(f"unknown colour mode {colour!r}")
    x = patches.astype(np.float32)
    if colour == "grey":
        x = x.mean(axis=3, keepdims=True)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    x -= mean[:, None, None, None]
    x /= (std + 8.0)[:, None, None, None]  # +8 grey levels: no blow-up on flat patches
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _softmax_occupied(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def _ensure_bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


class SpaceClassifier:
    """Decide occupied/free for parking spaces given by polygons.

    ``classify`` returns ``(occupied, confidence)`` arrays, one entry per space.
    ``confidence`` is the model's probability for the returned decision, so it
    lies in [0.5, 1]; callers may report ``unknown`` below a threshold.
    """

    def __init__(
        self,
        net: cv2.dnn.Net,
        size: int,
        margin: float,
        threshold: float = 0.5,
        colour: str = "bgr",
        preprocess: str = "standardise",
        patch_margin: float = 0.0,
    ):
        if colour not in COLOUR_MODES:
            raise ValueError(f"unknown colour mode {colour!r}")
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess mode {preprocess!r}")
        if preprocess == "raw" and colour != "bgr":
            raise ValueError("preprocess 'raw' needs colour 'bgr'")
        self.preprocess = preprocess
        self.net = net
        self.colour = colour
        self.size = size
        self.margin = margin
        # whole-patch input (classify_patches) only
        self.patch_margin = crops.check_patch_margin(patch_margin)
        self.threshold = threshold
        self._plan_cache: dict[bytes, crops.CropPlan] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> SpaceClassifier:
        """Load an ONNX model (default: the committed one) and its ``.json`` metadata."""
        path = Path(path) if path is not None else DEFAULT_MODEL
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"model metadata {meta_path} is not readable JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise ValueError(f"model metadata {meta_path} is not a JSON object")
        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
        try:
            net = (
                cv2.dnn.readNetFromONNX(str(path), engine)
                if engine is not None
                else cv2.dnn.readNetFromONNX(str(path))
            )
        except (cv2.error, TypeError):
            try:
                net = cv2.dnn.readNetFromONNX(str(path))
            except cv2.error as exc:
                msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
                raise ValueError(f"{path} is not an ONNX model OpenCV can load ({msg})") from None
        size = int(meta.get("size", crops.DEFAULT_SIZE))
        margin = float(meta.get("margin", crops.DEFAULT_MARGIN))
        threshold = float(meta.get("threshold", 0.5))
        colour = str(meta.get("colour", "bgr"))
        preprocess = str(meta.get("preprocess", "standardise"))
        patch_margin = float(meta.get("patch_margin", 0.0))
        log.debug(
            "loaded %s (size=%d margin=%.2f colour=%s preprocess=%s)",
            path,
            size,
            margin,
            colour,
            preprocess,
        )
        return cls(net, size, margin, threshold, colour, preprocess, patch_margin)

    def plan(self, polygons: Sequence[np.ndarray]) -> crops.CropPlan:
        """Precompute (and cache) the crop warps for a camera geometry."""
        key = b"|".join(np.asarray(p, dtype=np.float64).tobytes() for p in polygons)
        plan = self._plan_cache.get(key)
        if plan is None:
            plan = crops.precompute(polygons, self.size, self.margin)
            if len(self._plan_cache) > 64:
                self._plan_cache.clear()
            self._plan_cache[key] = plan
        return plan

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        """Occupied probability for ``(N, S, S, 3)`` uint8 BGR patches (one forward)."""
        if len(patches) == 0:
            return np.zeros(0, dtype=np.float64)
        if self.preprocess == "raw":
            self.net.setInput(raw_input(patches))
        else:
            self.net.setInput(standardise(patches, self.colour))
        logits = np.asarray(self.net.forward(), dtype=np.float64).reshape(len(patches), -1)
        return _softmax_occupied(logits)

    def _decide(self, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        occupied = prob >= self.threshold
        confidence = np.where(occupied, prob, 1.0 - prob)
        return occupied, np.clip(confidence, 0.0, 1.0)

    def classify(
        self, frame_bgr: np.ndarray, polygons: Sequence[np.ndarray] | crops.CropPlan
    ) -> tuple[np.ndarray, np.ndarray]:
        """Classify every space of a frame.

        ``polygons`` is a list of ``(N, 2)`` polygons or a precomputed
        :class:`~edge.camera.crops.CropPlan` (from :meth:`plan`).
        """
        return self.decide(self.patches(frame_bgr, polygons))

    def patches(
        self, frame_bgr: np.ndarray, polygons: Sequence[np.ndarray] | crops.CropPlan
    ) -> np.ndarray:
        """The ``(N, S, S, 3)`` patches the model reads, one per space (see :meth:`classify`)."""
        plan = polygons if isinstance(polygons, crops.CropPlan) else self.plan(polygons)
        if plan.size != self.size:
            raise ValueError(f"crop plan size {plan.size} != model size {self.size}")
        return crops.extract(_ensure_bgr(frame_bgr), plan)

    def decide(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(occupied, confidence) of each of :meth:`patches`' patches."""
        return self._decide(self.probabilities(patches))

    def classify_patches(self, patches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Classify whole single-space patches (e.g. CNRPark crops) of any size."""
        if len(patches) == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float64)
        batch = np.stack(
            [crops.normalise_patch(_ensure_bgr(p), self.size, self.patch_margin) for p in patches]
        )
        return self._decide(self.probabilities(batch))
