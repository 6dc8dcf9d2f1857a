"""Rendering of a synthetic camera frame (pure numpy/OpenCV, no I/O).

What a lamp-post camera over a row of bays would show: textured asphalt with
cracks, repairs and oil stains, painted bay lines (the site's space polygons),
a kerb and pavement at the near edge, a verge and hedge behind the far row;
cars of varied colour, size and body type drawn top/oblique (body with
cylindrical shading, windscreen and rear window with sky reflection, roof,
side glass, mirrors, lamps) casting a soft shadow that turns and stretches
with the sun; a tree's shadow sweeping across the lot through the day; cloud
shadows drifting; a day/night cycle (dawn and dusk tint, street lamps at
night); rain (wet, darker asphalt, haze and streaks); pedestrians walking
through; and per-frame sensor noise (a real sensor never repeats a frame
bit for bit, which the agent's frozen-stream check relies on).

``CameraScene`` keeps the static parts (background, one car look per parked
vehicle) and ``render(minute_of_day, t)`` composes a frame: ``minute_of_day``
is the simulated clock (light, sun, shadows), ``t`` real seconds (people and
clouds move at real speed whatever the simulation speed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Polygon = Sequence[tuple[float, float]]

SUNRISE_MIN = 6 * 60
SUNSET_MIN = 18 * 60
TWILIGHT_MIN = 40.0

# (weight, BGR) of car paint, roughly the colour shares of cars in China
CAR_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.40, (232, 234, 236)),  # white: about half of new cars in China are white
    (0.19, (28, 28, 30)),  # black
    (0.12, (170, 172, 175)),  # silver
    (0.10, (95, 98, 102)),  # grey
    (0.06, (120, 60, 25)),  # blue
    (0.05, (40, 40, 160)),  # red
    (0.03, (120, 160, 190)),  # champagne
    (0.03, (60, 90, 40)),  # dark green
    (0.02, (30, 150, 215)),  # orange/yellow
)
BODY_TYPES = ("sedan", "hatchback", "suv", "mpv")
NOISE_MARGIN = 97
"""the read-noise tile is this much larger than a frame; each frame takes a random window"""


@dataclass(frozen=True)
class Lighting:
    """Light at one simulated minute."""

    daylight: float
    """0 at night, 1 in full day"""
    tint: tuple[float, float, float]
    """BGR multiplier of the ambient light (warm at dusk, blue at night)"""
    shadow: tuple[float, float]
    """sun shadow offset in pixels per pixel of object height (x, y)"""
    shadow_strength: float


DEFAULT_FACING_DEG = 270.0
"""Compass direction the camera looks in. cam-c stands across the east road and looks
west over zone C, so image up is west, right is north, down is east, left is south."""


def shadow_direction(sun_azimuth_deg: float, facing_deg: float) -> tuple[float, float]:
    """Unit image vector (x right, y down) of shadows cast away from the sun.

    The ground is taken as seen from above with image up = ``facing_deg``; a
    compass bearing b maps to (sin(b - facing), -cos(b - facing)).
    """
    bearing = math.radians(sun_azimuth_deg + 180.0 - facing_deg)
    return math.sin(bearing), -math.cos(bearing)


def lighting_at(minute: float, facing_deg: float = DEFAULT_FACING_DEG) -> Lighting:
    """Daylight, tint and the sun's shadow vector at a minute of the day."""
    minute %= 24 * 60
    up = _smoothstep(SUNRISE_MIN - TWILIGHT_MIN, SUNRISE_MIN + TWILIGHT_MIN, minute)
    down = 1.0 - _smoothstep(SUNSET_MIN - TWILIGHT_MIN, SUNSET_MIN + TWILIGHT_MIN, minute)
    daylight = min(up, down)
    # equinox-like sun at Shanghai's latitude (31 N): rises east, 59 degrees at noon
    # in the south, sets west
    frac = min(max((minute - SUNRISE_MIN) / (SUNSET_MIN - SUNRISE_MIN), 0.0), 1.0)
    elevation = math.sin(math.pi * frac) * math.radians(59)
    azimuth = 90.0 + 180.0 * frac
    length = min(3.5, 1.0 / math.tan(max(elevation, math.radians(16))))
    dx, dy = shadow_direction(azimuth, facing_deg)
    shadow = (dx * length, dy * length)
    low_sun = 1.0 - min(1.0, elevation / math.radians(25))
    warm = 0.25 * low_sun * daylight
    tint = (
        (1.0 - warm) * daylight + 0.95 * (1 - daylight),
        (1.0 - 0.4 * warm) * daylight + 0.8 * (1 - daylight),
        (1.0 + 0.15 * warm) * daylight + 0.7 * (1 - daylight),
    )
    return Lighting(daylight, tint, shadow, 0.55 * daylight)


def f32(values: object) -> np.ndarray:
    """A float32 array (OpenCV's geometry functions want float32 points)."""
    return np.asarray(values, dtype=np.float32)


def _smoothstep(a: float, b: float, x: float) -> float:
    t = min(max((x - a) / (b - a), 0.0), 1.0)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class CarLook:
    """One parked vehicle: colour, body, size and placement inside its bay."""

    colour: tuple[int, int, int]
    body: str
    width: float
    """fraction of the bay width"""
    length: float
    """fraction of the bay depth"""
    shift: tuple[float, float]
    """offset of the car's centre as a fraction of bay width/depth"""
    nose_in: bool
    """parked nose first (windscreen towards the back of the bay)"""
    angle: float
    """slight skew in degrees"""


def random_car(rng: np.random.Generator) -> CarLook:
    weights = np.array([w for w, _ in CAR_COLOURS])
    base = CAR_COLOURS[int(rng.choice(len(CAR_COLOURS), p=weights / weights.sum()))][1]
    colour = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in base)
    body = BODY_TYPES[int(rng.choice(4, p=[0.45, 0.2, 0.25, 0.1]))]
    width = {"sedan": 0.74, "hatchback": 0.70, "suv": 0.78, "mpv": 0.78}[body]
    length = {"sedan": 0.80, "hatchback": 0.70, "suv": 0.80, "mpv": 0.84}[body]
    return CarLook(
        colour=colour,  # type: ignore[arg-type]
        body=body,
        width=width + float(rng.normal(0, 0.02)),
        length=length + float(rng.normal(0, 0.03)),
        shift=(float(rng.normal(0, 0.04)), float(rng.normal(0, 0.03))),
        nose_in=bool(rng.random() < 0.4),
        angle=float(rng.normal(0, 1.5)),
    )


# -- the car sprite, drawn upright (front at the top) on a W x L canvas -----------
SPRITE_W, SPRITE_L = 96, 224


def _cabin(body: str) -> tuple[float, float, float, float]:
    """(windscreen start, roof start, rear window start, rear window end) along the length."""
    return {
        "sedan": (0.30, 0.44, 0.66, 0.78),
        "hatchback": (0.28, 0.42, 0.78, 0.90),
        "suv": (0.26, 0.38, 0.80, 0.88),
        "mpv": (0.18, 0.30, 0.86, 0.93),
    }[body]


def draw_car_sprite(look: CarLook, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An upright top/oblique car image (BGR uint8) and its coverage mask (float32 0..1).

    Seen from above a car is mostly glass and highlights: a roof framed by the
    windscreen, the rear window and the side glass; a curved bonnet and boot
    that catch the sky along their crowns; the near end's vertical face (the
    camera looks down at an angle) with its lamps and plate.
    """
    w, length = SPRITE_W, SPRITE_L
    mask = np.zeros((length, w), np.uint8)
    r = int(w * 0.24)
    cv2.rectangle(mask, (2, r // 2), (w - 3, length - 1 - r // 2), 255, -1)
    cv2.rectangle(mask, (r // 2, 2), (w - 1 - r // 2, length - 3), 255, -1)
    for cx, cy in ((r, r), (w - 1 - r, r), (r, length - 1 - r), (w - 1 - r, length - 1 - r)):
        cv2.circle(mask, (cx, cy), r, 255, -1, cv2.LINE_AA)
    colour = np.array(look.colour, np.float32)
    # curved panels: dark towards the flanks, a sky-lit crown along the middle
    x = np.linspace(-1, 1, w, dtype=np.float32)
    crown = np.sqrt(np.clip(1 - x**2, 0, 1))
    across = 0.50 + 0.55 * crown
    sky = f32([200, 195, 185])
    shine = (0.10 + 0.25 * (colour.mean() < 90)) * crown**6
    img = colour[None, None, :] * across[None, :, None] + sky * shine[None, :, None]
    img = np.repeat(img, length, axis=0)
    ws, roof, rear, rear_end = _cabin(look.body)
    y = lambda f: int(f * length)  # noqa: E731
    glass = f32([58, 48, 40])
    inset = int(w * 0.10)
    # the glasshouse: everything between the windscreen and the rear window's foot
    house = np.array(
        [
            [inset + 2, y(ws)],
            [w - inset - 2, y(ws)],
            [w - inset, y(rear_end)],
            [inset, y(rear_end)],
        ],
        np.int32,
    )
    cv2.fillConvexPoly(img, house, glass.tolist(), cv2.LINE_AA)
    # sky reflections sweep diagonally across the windscreen and the rear window
    for y0, y1, strength in ((ws, roof, 95.0), (rear, rear_end, 60.0)):
        ya, yb = y(y0) + 2, y(y1) - 2
        band = img[ya:yb, inset + 3 : w - inset - 3]
        yy, xx = np.mgrid[0 : band.shape[0], 0 : band.shape[1]].astype(np.float32)
        streak = np.exp(-(((xx * 0.6 + yy) - band.shape[0] * 0.6) ** 2) / (2 * 6.0**2))
        band += (strength * (0.35 + streak))[:, :, None] * f32([1.0, 0.97, 0.92])
    # the roof: body colour, its own crown highlight, framed by the side glass
    side = int(w * 0.17)
    roof_px = img[y(roof) : y(rear), inset + side : w - inset - side]
    rx = np.linspace(-1, 1, roof_px.shape[1], dtype=np.float32)
    roof_shade = 0.78 + 0.35 * np.sqrt(np.clip(1 - rx**2, 0, 1))
    roof_px[:] = colour * roof_shade[None, :, None] + sky * 0.12
    # crisp edges where panels meet: bonnet and boot shut lines, pillars
    dark = (colour * 0.45).tolist()
    cv2.polylines(img, [house], True, dark, 1, cv2.LINE_AA)
    cv2.line(img, (inset + 4, y(0.06)), (inset + 6, y(ws) - 3), dark, 1, cv2.LINE_AA)
    cv2.line(img, (w - inset - 4, y(0.06)), (w - inset - 6, y(ws) - 3), dark, 1, cv2.LINE_AA)
    if look.body == "sedan":
        cv2.line(img, (inset + 3, y(rear_end) + 4), (w - inset - 3, y(rear_end) + 4), dark, 1)
    # mirrors stick out at the foot of the windscreen
    for xm in (0, w - 8):
        cv2.rectangle(img, (xm, y(ws) - 2), (xm + 7, y(ws) + 8), (colour * 0.7).tolist(), -1)
        mask[y(ws) - 2 : y(ws) + 9, xm : xm + 8] = 255
    # the near end's vertical face (the camera looks down at an angle): darker, with
    # lamps and a plate; which end depends on how the car was parked
    face_h = int(length * 0.06)
    front_lamp, rear_lamp = (215, 235, 240), (40, 40, 190)
    face = img[length - face_h :]
    face[:] = face * 0.55
    lamp = rear_lamp if not look.nose_in else front_lamp
    far_lamp = front_lamp if not look.nose_in else rear_lamp
    for xl in (int(w * 0.08), int(w * 0.72)):
        cv2.rectangle(img, (xl, length - face_h + 2), (xl + 18, length - 4), lamp, -1)
        cv2.ellipse(img, (xl + 9, 6), (9, 3), 0, 0, 360, far_lamp, -1, cv2.LINE_AA)
    cv2.rectangle(
        img, (w // 2 - 13, length - face_h + 3), (w // 2 + 13, length - 3), (160, 90, 40), -1
    )
    # tyres show at the flanks
    for yy in (0.16, 0.78):
        for xa in (0, w - 4):
            cv2.rectangle(img, (xa, y(yy)), (xa + 3, y(yy) + 24), (20, 20, 20), -1)
            mask[y(yy) : y(yy) + 25, xa : xa + 4] = 255
    # paint grain, a little dirt, a touch of softness
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8)
    return np.clip(img, 0, 255).astype(np.uint8), alpha


def _fill_gradient(
    img: np.ndarray, poly: np.ndarray, top: np.ndarray, bottom: np.ndarray, vertical: bool
) -> None:
    m = np.zeros(img.shape[:2], np.uint8)
    cv2.fillConvexPoly(m, poly, 255, cv2.LINE_AA)
    y0, y1 = int(poly[:, 1].min()), int(poly[:, 1].max()) + 1
    t = np.linspace(0, 1, max(y1 - y0, 1), dtype=np.float32)[:, None, None]
    band = top * (1 - t) + bottom * t
    region = img[y0:y1]
    a = (m[y0:y1].astype(np.float32) / 255.0)[:, :, None]
    region[:] = region * (1 - a) + band * a


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance noise smoothed at scale ``sigma`` px (drawn coarse, then enlarged)."""
    h, w = shape
    k = max(1.0, sigma / 3.0)
    small: np.ndarray = rng.normal(0, 1, (max(2, int(h / k)), max(2, int(w / k)))).astype(
        np.float32
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma / k)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return field / (field.std() + 1e-6)


def bay_quad(polygon: Polygon) -> np.ndarray:
    """The polygon as 4 float32 corners ordered [far-left, far-right, near-right, near-left]
    as seen upright: ``far`` is the edge with the smaller y (the top of the image)."""
    pts = np.asarray(polygon, np.float32).reshape(-1, 2)
    if len(pts) != 4:
        rect = cv2.minAreaRect(pts)
        pts = cv2.boxPoints(rect).astype(np.float32)
    order = np.argsort(pts[:, 1])
    top, bottom = pts[order[:2]], pts[order[2:]]
    top = top[np.argsort(top[:, 0])]
    bottom = bottom[np.argsort(bottom[:, 0])]
    return f32([top[0], top[1], bottom[1], bottom[0]])


@dataclass
class _PlacedCar:
    image: np.ndarray
    alpha: np.ndarray
    footprint: np.ndarray
    x0: int
    y0: int
    height_px: float


class CameraScene:
    """The scene one simulated camera sees; ``render`` composes a frame."""

    def __init__(
        self,
        polygons: Mapping[str, Polygon],
        resolution: tuple[int, int] = (1280, 720),
        seed: int = 0,
        facing_deg: float = DEFAULT_FACING_DEG,
    ):
        self.width, self.height = resolution
        self.facing_deg = facing_deg
        self.quads = {sid: bay_quad(p) for sid, p in polygons.items()}
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.background = self._background()
        self.cars: dict[str, _PlacedCar] = {}
        self.walkers = [self._walker(i) for i in range(3)]
        self.clouds = self._cloud_field()
        self.lamps = self._lamp_field()
        noise_rng = np.random.default_rng(seed + 3)
        self._noise = noise_rng.standard_normal(
            (self.height + NOISE_MARGIN, self.width + NOISE_MARGIN, 3), np.float32
        )

    # -- static parts -------------------------------------------------------------------
    def _background(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        h, w = self.height, self.width
        grain = rng.normal(0, 1, (h, w)).astype(np.float32)
        ground: np.ndarray = 98 + 9 * cv2.GaussianBlur(grain, (0, 0), 0.7)
        for sigma, amp in ((6, 4.0), (30, 6.0), (90, 8.0)):
            ground += amp * _smooth_noise(rng, (h, w), sigma)
        # repairs: darker patches of newer asphalt with their own grain
        for _ in range(4):
            x, y = int(rng.uniform(0, w - 200)), int(rng.uniform(h * 0.45, h - 60))
            x1, y1 = x + int(rng.uniform(60, 220)), y + int(rng.uniform(20, 70))
            patch = ground[y:y1, x:x1]
            patch[:] = 0.8 * patch + 0.2 * cv2.GaussianBlur(patch, (0, 0), 1.5) - 16
        img = np.ascontiguousarray(ground[:, :, None] * f32([1.0, 1.01, 1.03]))
        # cracks
        for _ in range(30):
            pts = [(rng.uniform(0, w), rng.uniform(h * 0.4, h))]
            for _ in range(int(rng.integers(3, 9))):
                px, py = pts[-1]
                pts.append((px + rng.normal(0, 14), py + rng.normal(0, 8)))
            cv2.polylines(img, [np.asarray(pts, np.int32)], False, (62, 63, 66), 1, cv2.LINE_AA)
        # oil stains near the centre of some bays
        for quad in self.quads.values():
            if rng.random() < 0.5:
                c = quad.mean(axis=0) + rng.normal(0, 6, 2)
                axes = (int(rng.uniform(6, 14)), int(rng.uniform(10, 26)))
                r = 48
                cx, cy = int(np.clip(c[0], r, w - r)), int(np.clip(c[1], r, h - r))
                stain: np.ndarray = np.zeros((2 * r, 2 * r), np.float32)
                cv2.ellipse(stain, (r, r), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
                stain = cv2.GaussianBlur(stain, (0, 0), 5)
                img[cy - r : cy + r, cx - r : cx + r] *= (1 - 0.25 * stain)[:, :, None]
        self._draw_surroundings(img, rng)
        self._draw_bay_lines(img, rng)
        img = cv2.GaussianBlur(img, (0, 0), 0.5)
        return np.clip(img, 0, 255).astype(np.float32)

    def _draw_surroundings(self, img: np.ndarray, rng: np.random.Generator) -> None:
        h, w = self.height, self.width
        quads = list(self.quads.values())
        top = min(float(q[:, 1].min()) for q in quads) if quads else h * 0.4
        bottom = max(float(q[:, 1].max()) for q in quads) if quads else h * 0.9
        # verge and hedge behind the far row
        verge_y = int(max(top - 18, 0))
        grass: np.ndarray = rng.normal(0, 1, (h, w)).astype(np.float32)
        grass = cv2.GaussianBlur(grass, (0, 0), 1.2)
        band = img[:verge_y]
        band[:] = f32([55, 115, 85]) + 18 * grass[:verge_y, :, None]
        hedge_y = int(verge_y * 0.55)
        for x in range(-20, w + 20, 26):
            cv2.circle(img, (x + int(rng.integers(-6, 6)), hedge_y + int(rng.integers(-8, 8))),
                       int(rng.integers(22, 34)), (35, 80, 45), -1, cv2.LINE_AA)  # fmt: skip
        # the estate road beyond the hedge, with a dashed centre line
        road_y = max(hedge_y - 30, 0)
        img[:road_y] = f32([88, 88, 90]) + 7 * grass[:road_y, :, None]
        for x in range(0, w, 90):
            cv2.line(img, (x, road_y // 2), (x + 45, road_y // 2), (120, 200, 215), 4)
        cv2.line(img, (0, verge_y), (w, verge_y), (150, 152, 155), 5)
        # kerb and pavement in front of the near row
        kerb_y = int(min(bottom + 6, h))
        if kerb_y < h:
            paving = 150 + 10 * grass[kerb_y:, :, None]
            img[kerb_y:] = paving * f32([1.0, 1.0, 1.02])
            for x in range(0, w, 40):
                cv2.line(img, (x, kerb_y), (x - 6, h), (120, 120, 122), 1)
            cv2.line(img, (0, kerb_y), (w, kerb_y), (185, 185, 188), 4)

    def _draw_bay_lines(self, img: np.ndarray, rng: np.random.Generator) -> None:
        paint = np.zeros(img.shape[:2], np.float32)
        for (a, b), thick in self._bay_lines():
            pa, pb = (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))
            cv2.line(paint, pa, pb, 1.0, thick, cv2.LINE_AA)
        wear = np.clip(0.75 + 0.35 * rng.normal(0, 1, paint.shape).astype(np.float32), 0, 1)
        wear = cv2.GaussianBlur(wear, (0, 0), 1.5)
        a = (paint * wear)[:, :, None]
        img[:] = img * (1 - a) + f32([215, 222, 228]) * a

    def _bay_lines(self) -> list[tuple[tuple[np.ndarray, np.ndarray], int]]:
        """Painted lines: the sides and back of every bay, one line where two bays meet
        (the polygons of neighbours leave a small gap; a lot has one stripe there)."""
        sides: list[tuple[np.ndarray, np.ndarray, float]] = []
        lines: list[tuple[tuple[np.ndarray, np.ndarray], int]] = []
        for quad in self.quads.values():
            far_l, far_r, near_r, near_l = quad
            width = float(np.linalg.norm(near_r - near_l))
            thick = max(2, int(round(width / 22)))
            sides += [(far_l, near_l, width), (far_r, near_r, width)]
            lines.append(((far_l, far_r), thick))
        used = [False] * len(sides)
        for i, (a, b, width) in enumerate(sides):
            if used[i]:
                continue
            used[i] = True
            for j in range(i + 1, len(sides)):
                c, d, _ = sides[j]
                if not used[j] and max(np.linalg.norm(a - c), np.linalg.norm(b - d)) < 0.2 * width:
                    used[j] = True
                    a, b = (a + c) / 2, (b + d) / 2
                    break
            lines.append(((a, b), max(2, int(round(width / 22)))))
        return lines

    def _cloud_field(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 2)
        f = cv2.GaussianBlur(rng.normal(0, 1, (90, 320)).astype(np.float32), (0, 0), 9)
        f = (f - f.mean()) / (f.std() + 1e-6)
        return np.clip(f - 0.3, 0, 1.5) / 1.5

    def _lamp_field(self) -> np.ndarray:
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        field = np.zeros((h, w), np.float32)
        for lx, ly in ((w * 0.2, h * 0.62), (w * 0.55, h * 0.6), (w * 0.88, h * 0.64)):
            field += np.exp(-(((xx - lx) / (w * 0.16)) ** 2 + ((yy - ly) / (h * 0.22)) ** 2))
        return np.clip(field, 0, 1.2)

    def _walker(self, i: int) -> dict[str, float]:
        rng = np.random.default_rng(self.seed + 10 + i)
        return {
            "y": float(rng.uniform(0.55, 0.98) * self.height),
            "speed": float(rng.uniform(28, 45)) * (1 if i % 2 == 0 else -1),
            "phase": float(rng.uniform(0, 2000)),
            "shirt": float(rng.integers(0, 6)),
            "drift": float(rng.normal(0, 0.05)),
        }

    # -- vehicles ---------------------------------------------------------------------
    def park(
        self, space: str, rng: np.random.Generator | None = None, look: CarLook | None = None
    ) -> None:
        """A (new) car arrives on ``space``: ``look``, or a fresh random one."""
        rng = rng or self.rng
        quad = self.quads[space]
        look = look or random_car(rng)
        sprite, alpha = draw_car_sprite(look, rng)
        self.cars[space] = self._place(quad, look, sprite, alpha)

    def leave(self, space: str) -> None:
        self.cars.pop(space, None)

    def set_occupied(self, space: str, occupied: bool) -> None:
        if occupied and space not in self.cars:
            self.park(space)
        elif not occupied:
            self.leave(space)

    def _place(
        self, quad: np.ndarray, look: CarLook, sprite: np.ndarray, alpha: np.ndarray
    ) -> _PlacedCar:
        far_l, far_r, near_r, near_l = quad.astype(np.float64)

        def at(u: float, v: float) -> np.ndarray:  # u across 0..1, v far->near 0..1
            top = far_l + (far_r - far_l) * u
            bot = near_l + (near_r - near_l) * u
            return top + (bot - top) * v

        cu, cv_ = 0.5 + look.shift[0], 0.5 + look.shift[1]
        hw, hl = look.width / 2, look.length / 2
        corners = f32(
            [
                at(cu - hw, cv_ - hl),
                at(cu + hw, cv_ - hl),
                at(cu + hw, cv_ + hl),
                at(cu - hw, cv_ + hl),
            ]
        )
        centre = corners.mean(axis=0)
        rot = cv2.getRotationMatrix2D(tuple(map(float, centre)), look.angle, 1.0)
        corners = cv2.transform(corners[None], rot)[0]
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.width), min(y1, self.height)
        src = f32([[0, 0], [SPRITE_W, 0], [SPRITE_W, SPRITE_L], [0, SPRITE_L]])
        m = cv2.getPerspectiveTransform(src, corners - f32([x0, y0]))
        size = (int(x1 - x0), int(y1 - y0))
        image = cv2.warpPerspective(sprite, m, size, flags=cv2.INTER_AREA)
        a = cv2.warpPerspective(alpha, m, size, flags=cv2.INTER_LINEAR)
        bay_w = float(np.linalg.norm(near_r - near_l))
        return _PlacedCar(image.astype(np.float32), a, corners, int(x0), int(y0), 0.45 * bay_w)

    # -- a frame ----------------------------------------------------------------------
    def compose(self, minute_of_day: float) -> np.ndarray:
        """Background with the sun's shadows and the parked cars (float32 BGR, unlit)."""
        light = lighting_at(minute_of_day, self.facing_deg)
        img = self.background.copy()
        shade: np.ndarray = np.zeros((self.height, self.width), np.float32)
        sx, sy = light.shadow
        # a tree beside the lot: its shadow sweeps with the sun
        tree = (self.width * 0.12, self.height * 0.38)
        tr = 70.0
        cv2.circle(shade, (int(tree[0] + sx * 90), int(tree[1] + sy * 90 + 40)), int(tr), 1.0, -1)
        cv2.ellipse(
            shade, (int(tree[0] + sx * 190), int(tree[1] + sy * 190 + 60)), (int(tr * 1.2), 45),
            0, 0, 360, 0.8, -1,
        )  # fmt: skip
        for car in self.cars.values():
            off = f32([sx, sy]) * car.height_px
            foot = (car.footprint + off * 0.5).astype(np.int32)
            cv2.fillConvexPoly(shade, foot, 1.0, cv2.LINE_AA)
            cv2.fillConvexPoly(shade, car.footprint.astype(np.int32), 1.0, cv2.LINE_AA)
            cv2.fillConvexPoly(shade, (car.footprint + off).astype(np.int32), 1.0, cv2.LINE_AA)
        shade = cv2.GaussianBlur(np.clip(shade, 0, 1), (0, 0), 4)
        # ambient occlusion under every car even without sun
        ao: np.ndarray = np.zeros_like(shade)
        for car in self.cars.values():
            cv2.fillConvexPoly(ao, car.footprint.astype(np.int32), 1.0)
        ao = cv2.GaussianBlur(ao, (0, 0), 6)
        darken = 1 - np.clip(light.shadow_strength * shade + 0.35 * ao, 0, 0.8)
        img *= darken[:, :, None]
        for car in self.cars.values():
            h, w = car.alpha.shape
            region = img[car.y0 : car.y0 + h, car.x0 : car.x0 + w]
            a = car.alpha[: region.shape[0], : region.shape[1], None]
            region[:] = region * (1 - a) + car.image[: region.shape[0], : region.shape[1]] * a
        return img

    def light(
        self, scene: np.ndarray, minute_of_day: float, t: float, rain: float = 0.0
    ) -> np.ndarray:
        """Apply daylight, clouds, street lamps and rain wetness to a composed scene."""
        light = lighting_at(minute_of_day, self.facing_deg)
        h, w = self.height, self.width
        # clouds drift at real speed, their shadows only matter by day
        shift = int(t * 6) % self.clouds.shape[1]
        c = np.roll(self.clouds, -shift, axis=1)
        cloud = cv2.resize(
            c[:, : self.clouds.shape[1] // 2 + 1], (w, h), interpolation=cv2.INTER_LINEAR
        )
        day = light.daylight * (1 - 0.35 * cloud * (1 - 0.5 * rain))
        night_ambient = 0.16
        lamps = (1 - light.daylight) * 0.75 * self.lamps
        illum = np.maximum(day, night_ambient) + lamps
        if rain > 0:
            illum *= 1 - 0.18 * rain
        gain = cv2.merge([illum * np.float32(c) for c in light.tint])
        out = cv2.multiply(scene, gain)
        if rain > 0:
            haze = 150.0 * float(illum.mean()) * 0.12 * rain
            out = cv2.addWeighted(out, 1 - 0.12 * rain, out, 0.0, haze)
        return out

    def draw_walkers(self, img: np.ndarray, t: float, minute_of_day: float) -> None:
        sx, sy = lighting_at(minute_of_day, self.facing_deg).shadow
        shirts = ((40, 40, 170), (150, 90, 40), (200, 200, 200), (40, 120, 40), (30, 30, 30),
                  (70, 160, 210))  # fmt: skip
        for wk in self.walkers:
            span = self.width + 100
            x = (wk["phase"] + wk["speed"] * t) % span - 50
            y = wk["y"] + wk["drift"] * x * 0.3
            scale = 0.6 + 0.5 * y / self.height
            bx, by = int(x), int(y)
            sh = (int(bx + sx * 14 * scale), int(by + sy * 14 * scale))
            self._shade_ellipse(img, sh, (int(6 * scale), int(14 * scale)), 0.55)
            step = math.sin(t * 6 + wk["phase"]) * 4 * scale
            for dx in (-3, 3):
                cv2.line(img, (bx + int(dx * scale), by), (bx + int(dx * scale + step), by + int(12 * scale)),
                         (50, 45, 40), max(1, int(3 * scale)))  # fmt: skip
            cv2.ellipse(img, (bx, by - int(6 * scale)), (int(7 * scale), int(11 * scale)), 0, 0, 360,
                        shirts[int(wk["shirt"]) % len(shirts)], -1, cv2.LINE_AA)  # fmt: skip
            cv2.circle(img, (bx, by - int(19 * scale)), max(2, int(5 * scale)), (30, 35, 45), -1,
                       cv2.LINE_AA)  # fmt: skip

    @staticmethod
    def _shade_ellipse(
        img: np.ndarray, centre: tuple[int, int], axes: tuple[int, int], keep: float
    ) -> None:
        """Darken an elliptic patch of ground to ``keep`` of its light (a soft shadow)."""
        r = max(axes) + 3
        x0, y0 = max(centre[0] - r, 0), max(centre[1] - r, 0)
        roi = img[y0 : centre[1] + r, x0 : centre[0] + r]
        if roi.size == 0:
            return
        m: np.ndarray = np.zeros(roi.shape[:2], np.float32)
        cv2.ellipse(m, (centre[0] - x0, centre[1] - y0), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        m = cv2.GaussianBlur(m, (0, 0), 1.5)
        roi *= (1 - (1 - keep) * m)[:, :, None]

    def draw_rain(self, img: np.ndarray, rain: float, rng: np.random.Generator) -> None:
        n = int(900 * rain)
        if n <= 0:
            return
        xs = rng.uniform(0, self.width, n)
        ys = rng.uniform(0, self.height, n)
        length = rng.uniform(8, 20, n)
        streaks = np.zeros(img.shape[:2], np.float32)
        for x, y, ln in zip(xs, ys, length, strict=True):
            cv2.line(streaks, (int(x), int(y)), (int(x - ln * 0.25), int(y + ln)), 1.0, 1)
        a = 0.22 * streaks[:, :, None]
        img[:] = img * (1 - a) + 205 * a

    def render(
        self,
        minute_of_day: float,
        t: float,
        rain: float = 0.0,
        rng: np.random.Generator | None = None,
        scene: np.ndarray | None = None,
    ) -> np.ndarray:
        """One BGR uint8 frame. ``scene``: a cached :meth:`compose` result to reuse."""
        rng = rng or self.rng
        base = self.compose(minute_of_day) if scene is None else scene.copy()
        self.draw_walkers(base, t, minute_of_day)  # before lighting: people are lit like cars
        img = self.light(base, minute_of_day, t, rain)
        self.draw_rain(img, rain, rng)
        light = lighting_at(minute_of_day, self.facing_deg)
        sigma = 1.6 + 3.0 * (1 - light.daylight)
        # read noise: a random window of a fixed noise tile, different every frame
        dy, dx = (int(v) for v in rng.integers(0, NOISE_MARGIN, 2))
        noise = self._noise[dy : dy + self.height, dx : dx + self.width]
        return cv2.scaleAdd(noise, sigma, img).clip(0, 255).astype(np.uint8)


def black_frame(resolution: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A capped lens: black with a little read noise."""
    w, h = resolution
    noise = np.zeros((h, w, 3), np.int16)
    cv2.randn(noise, np.full(3, 3.0), np.full(3, 1.5))  # per channel: a scalar fills one
    return np.clip(noise, 0, 255).astype(np.uint8)


def covered_frame(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lens smeared or covered: heavy blur of the scene, dimmed, with fresh sensor noise."""
    blurred = cv2.GaussianBlur(frame, (0, 0), 18).astype(np.int16)
    blurred = (blurred * 0.8).astype(np.int16)
    noise = np.zeros(frame.shape, np.int16)
    cv2.randn(noise, np.zeros(3), np.full(3, 2.0))
    return np.clip(blurred + noise, 0, 255).astype(np.uint8)


def moved_frame(frame: np.ndarray) -> np.ndarray:
    """A camera knocked on its mount: the view shifted by 5 % of its width and 3 % of its
    height (the edge the picture lost is filled by its border)."""
    h, w = frame.shape[:2]
    shift = np.float32([[1, 0, 0.05 * w], [0, 1, 0.03 * h]])
    return cv2.warpAffine(frame, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)


def turned_frame(frame: np.ndarray) -> np.ndarray:
    """A camera turned and zoomed (another PTZ preset): rotated 12 degrees, 1.3 times."""
    h, w = frame.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 12.0, 1.3)
    return cv2.warpAffine(frame, turn, (w, h), borderMode=cv2.BORDER_REFLECT)


def rain_at(minute_of_day: float, seed: int) -> float:
    """Rain intensity 0..1: one seeded shower a day, most days in the afternoon."""
    rng = np.random.default_rng(seed + 7919)
    start = float(rng.uniform(13 * 60, 16 * 60))
    length = float(rng.uniform(30, 70))
    m = minute_of_day % (24 * 60)
    if not start <= m <= start + length:
        return 0.0
    return math.sin(math.pi * (m - start) / length) * 0.8
