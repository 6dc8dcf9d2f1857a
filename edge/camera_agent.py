"""The camera agent: one camera's spaces, classified, smoothed, published over MQTT.

Its command line, ``parkguide edge camera``, is ``edge.camera.cli``. Frames come from
``edge.camera.stream.FrameReader`` (RTSP, HTTP MJPEG, a file, a device index;
reconnects with capped backoff). Each processed frame is checked first
(``edge.camera.quality``: black, frozen, covered/blurred; ``edge.camera.aim``: the
view moved, zoomed or turned); a frame that fails makes every space ``unknown`` and
the health ``blind`` (its ``fault`` says why), never a guess. A good frame is classified per space polygon
(``edge.camera.classifier``) and smoothed over time
(``edge.camera.smoothing``: a space changes only after the new decision held
``--hold-s``). No frame for ``--stale-s`` (stream lost) -> every space
``unknown``, health ``blind`` with ``stream_up`` 0.

Reports go through the shared durable publisher (``edge.publisher``): deltas
as changes settle, a snapshot on every (re)connect and periodically,
retained availability with a last will, retained health with the processed
frame rate and each space's last confidence. Health status: ``blind`` as
above; ``degraded`` when more than a quarter of the spaces fell below the
confidence floor on the last frame (dusk, rain, glare), when the spool cannot
take reports (a full disk: they go out from memory, ``counters.spool_full`` 1), or
when the frames fall over a second behind the live picture (``counters.behind_ms``:
a decoder short of CPU; past ``--stale-s`` the reader drops the backlog); else ``ok``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from edge.camera.aim import Aim, AimMonitor, AimSettings
from edge.camera.crops import fit_polygons
from edge.camera.quality import (
    FrameFault,
    FrameQuality,
    FrameQualityMonitor,
    QualitySettings,
    covered_spaces,
    shape_matches,
    smeared_spaces,
    space_cells,
)
from edge.camera.smoothing import OccupancySmoother, SmoothingSettings, SpaceChange
from edge.camera.stream import FrameRate, FrameReader
from edge.clocks import ClockWatch
from edge.publisher import ReportPublisher, SpoolBusy
from parking.payloads import CameraSpaceHealth, HealthReport, SpaceObservation
from parking.site import Camera
from parking.states import SpaceState

log = logging.getLogger(__name__)

DEFAULT_STALE_S = 5.0
DEFAULT_FPS_LIMIT = 10.0
DEFAULT_HEALTH_INTERVAL_S = 5.0
FPS_WINDOW_S = 5.0
SMEAR_SAY_S = 600.0  # a smear coming and going (a drop running down) is warned of this rarely
DEGRADED_FRACTION = 0.25
DEGRADED_BEHIND_S = 1.0
"""frames this far behind the live picture (a decoder short of CPU): health degraded"""
LOOP_WAIT_S = 0.2
STREAM_LOST = "stream_lost"
"""the health's ``fault`` while no frame comes (beside the frame faults of FrameFault)"""


class FrameClassifier(Protocol):
    """What the agent needs of a classifier (``edge.camera.classifier.SpaceClassifier``)."""

    def plan(self, polygons: Sequence[np.ndarray]) -> Any: ...

    def patches(self, frame_bgr: np.ndarray, polygons: Any) -> np.ndarray: ...

    def decide(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class AgentSettings:
    stale_s: float = DEFAULT_STALE_S
    fps_limit: float = DEFAULT_FPS_LIMIT
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    squeezed_stream: bool = False
    """the stream is the camera's whole view squeezed to another shape (some 4:3
    substreams of 16:9 cameras): its polygons are scaled, not its frames refused"""
    view_check: bool = True
    """refuse frames whose view moved from the reference view (``edge.camera.aim``)"""


class CameraAgent:
    """Turns frames of one camera into smoothed space states and reports."""

    def __init__(
        self,
        camera: Camera,
        classifier: FrameClassifier,
        publisher: ReportPublisher,
        *,
        settings: AgentSettings | None = None,
        smoothing: SmoothingSettings | None = None,
        quality: QualitySettings | None = None,
        aim: AimSettings | None = None,
        view: np.ndarray | None = None,
        keep_view: Callable[[np.ndarray], None] | None = None,
        best_sharpness: float | None = None,
        keep_best: Callable[[float], None] | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``view``: the reference view kept from an earlier run (a grey thumbnail, see
        ``edge.camera.aim``), else the first good frame's is learned and handed to
        ``keep_view``. ``aim=None`` with ``settings.view_check`` off: no such check.
        ``best_sharpness``: the camera's best normal sharpness kept from an earlier run
        (``edge.camera.quality``); a better one is handed to ``keep_best``."""
        self.camera = camera
        self.classifier = classifier
        self.publisher = publisher
        self.settings = settings or AgentSettings()
        self.space_ids = list(camera.polygons)
        self.polygons = [np.asarray(p, np.float32) for p in camera.polygons.values()]
        self._wall = wall
        self._clock = clock
        # the smoother keeps wall times (its `since` goes on the wire): a step of the wall
        # clock is looked for at every frame and idle round, and moves them (edge.clocks)
        self._clock_watch = ClockWatch(wall, clock, f"camera agent {publisher.agent}")
        self.smoother = OccupancySmoother(
            len(self.space_ids), smoothing or SmoothingSettings(), now=wall()
        )
        self.monitor = FrameQualityMonitor(quality, best_sharpness)
        self._keep_best = keep_best
        self._kept_best = best_sharpness
        self.aim = AimMonitor(aim, view) if self.settings.view_check else None
        self._keep_view = keep_view
        self._plans: dict[tuple[int, int], Any] = {}
        self._cells: dict[tuple[int, int], np.ndarray] = {}  # frame size -> space_cells
        self._processed: deque[float] = deque()
        self._rate = FrameRate(self.settings.fps_limit)
        self.quality: FrameQuality | None = None
        self.stream_up = False
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "frames",
                "classified",
                "black",
                "frozen",
                "blurred",
                "geometry",
                "moved",
                "other_view",
                "replayed",
                "stream_lost",
                "errors",
            ),
            0,
        )
        self.covered = 0  # spaces the last frame showed nothing of (covered_spaces)
        self.smeared = 0  # ... of those, the spaces under a smeared part of the picture
        self._smear_said = -math.inf  # monotonic time of the last "lost its detail" warning
        self.behind_s = 0.0  # the reader's: how far its frames fall behind the present
        self.fell_behind = 0  # ... and how often it dropped a backlog for it
        self._status = "blind"
        self._next_health = 0.0
        self._lost_reported = False
        self._decided = False  # any space settled free or occupied in this run

    # -- pure-ish steps (no network) -------------------------------------------------
    def _plan_for(self, frame: np.ndarray) -> Any:
        """Crop plan for this frame size; polygons scale when a stream is not the
        configured resolution (e.g. a camera's substream)."""
        h, w = frame.shape[:2]
        plan = self._plans.get((w, h))
        if plan is None:
            cw, ch = self.camera.resolution
            if (w, h) != (cw, ch):
                log.warning(
                    "camera %s: frames are %dx%d, the site says %dx%d; scaling the polygons",
                    self.camera.id,
                    w,
                    h,
                    cw,
                    ch,
                )
            plan = self.classifier.plan(fit_polygons(self.polygons, (cw, ch), (w, h)))
            self._plans[(w, h)] = plan
        return plan

    def _cells_for(self, frame: np.ndarray) -> np.ndarray:
        """Which cells of the quality grid each space lies in, for this frame size."""
        h, w = frame.shape[:2]
        cells = self._cells.get((w, h))
        if cells is None:
            polygons = fit_polygons(self.polygons, self.camera.resolution, (w, h))
            cells = self._cells[(w, h)] = space_cells(polygons, (w, h))
        return cells

    def follow_clock(self, wall: float, mono: float) -> float:
        """Look for a step of the wall clock (``wall`` and ``mono`` read together); returns
        it (0.0: none). The smoother's timers move with a step; so do the spaces' ``since``
        on a forward step (a box that started behind, then NTP synchronised: stamped by
        the clock as it read, the gateway refuses them as older than what it knew from the
        agent's previous run). Back, a ``since`` beyond the gateway's future tolerance of
        ``wall`` is brought back to it (refused there, it was never true), the others stay,
        and a new state is stamped no earlier than the one it follows (``edge.clocks``).
        Either way a snapshot is asked for, so that the next report puts every space
        right."""
        step = self._clock_watch.check(wall, mono)
        if step:
            self.smoother.clock_stepped(step, move_since=step > 0, now=wall)
            self.publisher.request_snapshot()
        return step

    def on_frame(self, image: np.ndarray, wall: float, mono: float) -> list[SpaceChange]:
        """Check, classify and smooth one frame (honouring the fps limit)."""
        self.follow_clock(wall, mono)
        self.counters["frames"] += 1
        if not self._rate.take(mono):
            return []
        return self._forget_after_stall(wall, mono) + self._judge_frame(image, wall, mono)

    def _forget_after_stall(self, wall: float, mono: float) -> list[SpaceChange]:
        """The previous frame was judged more than ``stale_s`` ago although the stream was
        up: the agent itself was stopped or starved (SIGSTOP, a paused VM). What it decided
        then proves nothing now: its spaces unknown until new decisions hold. Kept, the
        snapshot due at the resume told them as fresh."""
        if not self._processed or not self.stream_up:
            return []
        gap = mono - self._processed[-1]
        if gap <= self.settings.stale_s:
            return []
        log.warning(
            "camera %s: no frame judged for %.1f s (the agent was stopped or starved): "
            "spaces unknown until new decisions hold",
            self.camera.id,
            gap,
        )
        return self.smoother.blind(wall)

    def _judge_frame(self, image: np.ndarray, wall: float, mono: float) -> list[SpaceChange]:
        self._processed.append(mono)
        self.stream_up = True
        if self._lost_reported:
            # said when it was lost: say it is back too (the stream's own "open" lines are
            # rate-limited, and a log ending on "no frame" reads as still blind)
            log.info("camera %s: frames again after the stream was lost", self.camera.id)
        self._lost_reported = False
        normals, refused = self.monitor.new_normals, self.monitor.refused_normals
        cell_normals = self.monitor.new_cell_normals
        quality = self.monitor.check(image, mono)
        self._keep_better_best()
        h, w = image.shape[:2]
        squeezed = self.settings.squeezed_stream
        if quality.ok and not squeezed and not shape_matches((w, h), self.camera.resolution):
            quality = replace(quality, fault=FrameFault.GEOMETRY)
        if quality.ok and self.aim is not None:
            quality = self._check_aim(image, quality, mono)
        if self.monitor.new_normals != normals:
            log.warning(
                "camera %s: the picture has been much softer than usual for %.0f min "
                "(sharpness %.1f); classifying it again as the new normal: check the lens",
                self.camera.id,
                self.monitor.settings.rebaseline_s / 60,
                quality.sharpness,
            )
        if self.monitor.new_cell_normals != cell_normals:
            log.warning(
                "camera %s: part of the picture has been much softer than usual for %.0f min;"
                " reading it again as its new normal: check the lens there",
                self.camera.id,
                self.monitor.settings.rebaseline_s / 60,
            )
        if self.monitor.refused_normals != refused:
            log.warning(
                "camera %s: for %.0f min the picture has kept only %d %% of this camera's "
                "best detail (rain or dirt on the lens, fog?): too little to read, spaces stay "
                "unknown until it is clear again (a camera replaced or re-aimed on purpose: "
                "restart the agent with --new-view)",
                self.camera.id,
                self.monitor.settings.rebaseline_s / 60,
                self._detail_pct(quality.sharpness),
            )
        before = None if self.quality is None else self.quality.fault
        if quality.fault != before:  # also a fault on the very first frame
            if quality.fault is None:
                log.info("camera %s: frames usable again", self.camera.id)
            elif quality.fault in (FrameFault.MOVED, FrameFault.OTHER_VIEW):
                self._say_moved(quality.fault)
            elif quality.fault is FrameFault.REPLAYED:
                log.warning(
                    "camera %s: the stream shows again, bit for bit, frames it showed before "
                    "(a recording looped by a recorder or proxy, a test stream left running?): "
                    "spaces unknown until live frames come",
                    self.camera.id,
                )
            elif quality.fault is FrameFault.GEOMETRY:
                cw, ch = self.camera.resolution
                log.warning(
                    "camera %s: frames are %dx%d, not of the %dx%d shape the site file's "
                    "polygons are drawn for (a rotated 'corridor' mode, a cropped stream?): "
                    "spaces unknown until the camera is set back (a substream that squeezes "
                    "the whole view to another shape: --squeezed-stream)",
                    self.camera.id,
                    w,
                    h,
                    cw,
                    ch,
                )
            else:
                log.warning(
                    "camera %s: %s frame (brightness %.0f, sharpness %.1f): spaces unknown",
                    self.camera.id,
                    quality.fault.value,
                    quality.brightness,
                    quality.sharpness,
                )
        self.quality = quality
        if not quality.ok:
            assert quality.fault is not None
            self.counters[quality.fault.value] += 1
            return self.smoother.blind(wall)
        patches = self.classifier.patches(image, self._plan_for(image))
        occupied, confidence = self.classifier.decide(patches)
        self.counters["classified"] += 1
        covered = covered_spaces(patches, self.monitor.settings)
        smeared = smeared_spaces(self._cells_for(image), quality.smeared) & ~covered
        self._say_covered(int(covered.sum()), int(smeared.sum()))
        covered |= smeared
        if not covered.any():
            return self.smoother.update(occupied, confidence, wall)
        # no evidence from what the picture does not show: those spaces unknown, the rest read
        confidence = np.where(covered, 0.0, confidence)
        changes = self.smoother.update(occupied, confidence, wall)
        return changes + self.smoother.blind(wall, covered)

    def _detail_pct(self, sharpness: float) -> int:
        best = self.monitor.best
        return round(100 * sharpness / best) if best else 100

    def _keep_better_best(self) -> None:
        """Hand a best sharpness 5 % over the one kept to ``keep_best`` (a few writes)."""
        best = self.monitor.best
        if best is None or self._keep_best is None:
            return
        if self._kept_best is not None and best <= 1.05 * self._kept_best:
            return
        self._kept_best = best
        try:
            self._keep_best(best)
        except OSError as exc:  # kept in memory: checked all the same
            log.warning("camera %s: could not keep its best sharpness: %s", self.camera.id, exc)

    def _check_aim(self, image: np.ndarray, quality: FrameQuality, mono: float) -> FrameQuality:
        """The frame's quality, faulted when the view is no longer the reference's."""
        assert self.aim is not None
        self.aim.check(image, mono)
        if self.aim.learned:
            self.aim.learned = False
            reference = self.aim.reference
            log.info(
                "camera %s: view learned (the reference of the moved-view check)", self.camera.id
            )
            if self._keep_view is not None and reference is not None:
                try:
                    self._keep_view(reference)
                except (OSError, ValueError) as exc:  # kept in memory: checked all the same
                    log.warning("camera %s: could not keep the view: %s", self.camera.id, exc)
        if self.aim.aim is Aim.MOVED:
            return replace(quality, fault=FrameFault.MOVED)
        if self.aim.aim is Aim.OTHER_VIEW:
            return replace(quality, fault=FrameFault.OTHER_VIEW)
        return quality

    def _say_moved(self, fault: FrameFault) -> None:
        last = self.aim.last if self.aim is not None else None
        if fault is FrameFault.MOVED and last is not None:
            log.warning(
                "camera %s: the view moved by %+.0f,%+.0f px from the one its polygons were "
                "drawn on (knocked or turned?): spaces unknown until it is set back (re-aimed "
                "on purpose, with the polygons checked: restart the agent with --new-view)",
                self.camera.id,
                last.dx,
                last.dy,
            )
        else:
            measured = ""
            if last is not None and (last.zoom != 1.0 or last.turn != 0.0):
                measured = f" (zoomed {100 * (last.zoom - 1):+.0f} %, turned {last.turn:+.1f}°)"
            log.warning(
                "camera %s: the picture no longer matches the view its polygons were drawn "
                "on%s (turned, zoomed, another PTZ preset?): spaces unknown until it is set "
                "back (re-aimed on purpose, with the polygons checked: restart with --new-view)",
                self.camera.id,
                measured,
            )

    def _say_covered(self, dark: int, smeared: int) -> None:
        """Say when spaces start or stop showing nothing: ``dark`` (dark or featureless
        patches) and ``smeared`` (under a part of the picture that lost its detail)."""
        if dark and not self.covered - self.smeared:
            log.warning(
                "camera %s: %d of its %d spaces show nothing in the picture (dark or "
                "featureless: something on part of the lens, a floodlight's glare, or too "
                "dark to read?): unknown",
                self.camera.id,
                dark,
                len(self.space_ids),
            )
        if smeared and not self.smeared and self._clock() >= self._smear_said + SMEAR_SAY_S:
            self._smear_said = self._clock()
            log.warning(
                "camera %s: part of the picture has lost its detail (a smear, drops or a leaf"
                " on the lens?): the %d spaces under it are unknown",
                self.camera.id,
                smeared,
            )
        if self.covered and not dark + smeared:
            log.info("camera %s: every space visible again", self.camera.id)
        elif self.smeared and not smeared:
            log.info("camera %s: no part of the picture smeared any more", self.camera.id)
        self.covered, self.smeared = dark + smeared, smeared

    def on_idle(
        self, age: float | None, since_start: float, wall: float, mono: float | None = None
    ) -> list[SpaceChange]:
        """No new frame this round: after ``stale_s`` without one the stream is lost.
        With ``mono`` (read with ``wall``), a step of the wall clock is looked for first."""
        if mono is not None:
            self.follow_clock(wall, mono)
        stale = age is None and since_start > self.settings.stale_s
        stale = stale or (age is not None and age > self.settings.stale_s)
        changes: list[SpaceChange] = []
        if stale:
            if not self._lost_reported:
                self._lost_reported = True
                self.counters["stream_lost"] += 1
                log.warning(
                    "camera %s: no frame for %.1f s: spaces unknown",
                    self.camera.id,
                    self.settings.stale_s,
                )
            self.stream_up = False
            self.monitor.reset()
            changes = self.smoother.blind(wall)
        return changes + self.smoother.tick(wall)

    def fps(self, mono: float) -> float:
        """Frames processed per second over the last FPS_WINDOW_S, or since the first of
        them (so a fresh start or a recovery does not read as a slow camera)."""
        while self._processed and mono - self._processed[0] > FPS_WINDOW_S:
            self._processed.popleft()
        if len(self._processed) < 2 or mono <= self._processed[0]:
            return 0.0
        return (len(self._processed) - 1) / (mono - self._processed[0])

    def _health_fps(self, mono: float) -> float | None:
        """The health's ``fps``: None while the stream is up but too few frames have come
        to measure a rate (a start, a recovery: "ok" with 0 fps read as a stalled camera),
        else the rate (0 with no stream)."""
        fps = self.fps(mono)
        if self.stream_up and len(self._processed) < 2:
            return None
        return round(fps, 2)

    def status(self) -> str:
        if not self.stream_up or (self.quality is not None and not self.quality.ok):
            return "blind"
        if self.quality is None:
            return "blind"
        low = self.smoother.confidence < self.smoother.settings.min_confidence
        # reports only in memory (a full disk) are lost if the agent stops: not "ok" either
        if (
            low.mean() > DEGRADED_FRACTION
            or not self.publisher.spool_ok
            or self.covered
            or self.behind_s > DEGRADED_BEHIND_S
        ):
            return "degraded"
        return "ok"

    def fault(self) -> str | None:
        """Why the camera is blind (for the health, and the managers' alert), or None."""
        if not self.stream_up:
            return STREAM_LOST
        if self.quality is not None and self.quality.fault is not None:
            return self.quality.fault.value
        return None

    def observations(self, spaces: Sequence[int]) -> list[SpaceObservation]:
        backing = self.smoother.confidence_in_state()
        return [self._observation(i, float(backing[i])) for i in spaces]

    def _observation(self, i: int, conf: float) -> SpaceObservation:
        state = SpaceState(int(self.smoother.state[i]))
        return SpaceObservation(
            space=self.space_ids[i],
            state=state.label,  # type: ignore[arg-type]
            since=float(self.smoother.since[i]),
            confidence=min(max(conf, 0.0), 1.0),
        )

    def health(self, wall: float, mono: float, reconnects: int) -> HealthReport:
        return HealthReport(
            agent=self.publisher.agent,
            source=self.camera.id,
            ts=wall,
            status=self.status(),  # type: ignore[arg-type]
            counters={
                **self.counters,
                "reconnects": reconnects,
                "stream_up": int(self.stream_up),
                "covered_spaces": self.covered,
                "behind_ms": round(1000 * self.behind_s),
                "fell_behind": self.fell_behind,
                **self._aim_health(),
                **self._detail_health(),
                **self.publisher.spool_health(),
            },
            fps=self._health_fps(mono),
            fault=self.fault(),
            spaces=[
                CameraSpaceHealth(space=s, confidence=float(np.clip(c, 0.0, 1.0)))
                for s, c in zip(self.space_ids, self.smoother.confidence, strict=True)
            ],
        )

    def _detail_health(self) -> dict[str, int]:
        """The last frame's detail against the camera's best (a lens getting dirty shows
        before it blinds the camera) and the softnesses refused as a new normal."""
        if self.quality is None or self.monitor.best is None:
            return {}
        return {
            "detail_pct": self._detail_pct(self.quality.sharpness),
            "refused_normals": self.monitor.refused_normals,
        }

    def _aim_health(self) -> dict[str, int]:
        """The last view check: shift in pixels and match in percent (for technicians:
        a drift shows before it blinds the camera)."""
        last = self.aim.last if self.aim is not None else None
        if last is None:
            return {}
        return {"view_shift_px": round(last.shift), "view_match_pct": round(100 * last.response)}

    # -- with the network ------------------------------------------------------------
    def publish(self, changes: list[SpaceChange], reader: FrameReader, mono: float) -> None:
        self.behind_s, self.fell_behind = reader.behind_s, reader.fell_behind
        if changes:
            latest = {c.index: c for c in changes}  # a space changed twice: its last word
            self.publisher.report("delta", self.observations(sorted(latest)))
        if self.publisher.snapshot_due():
            self.publisher.report("snapshot", self.observations(range(len(self.space_ids))))
        status = self.status()
        if mono >= self._next_health or status != self._status:
            self._status = status
            self._next_health = mono + self.settings.health_interval_s
            self.publisher.publish_health(self.health(self._wall(), mono, reader.reconnects))

    def run(self, reader: FrameReader, stop: threading.Event) -> None:
        started = self._clock()
        last_seq = 0
        while not stop.is_set():
            frame = reader.latest(last_seq, timeout=LOOP_WAIT_S)
            if frame is None and reader.ended:
                # a recording has no "after": its spaces go unknown with the agent's
                # offline (on the way out), not the last scene left up as live
                log.info("camera %s: the file ended; stopping (--loop replays it)", self.camera.id)
                if not self._decided:
                    log.warning(
                        "camera %s: no space was decided in this file: a decision must hold "
                        "for --hold-s %.1f s of frames (a still picture or a shorter clip "
                        "leaves every space unknown; --loop, or a lower --hold-s to try it)",
                        self.camera.id,
                        self.smoother.settings.hold_s,
                    )
                return
            wall, mono = self._wall(), self._clock()
            try:
                image = None if frame is None else frame.image
                if frame is not None and image is None:  # a JPEG cut short: the next one
                    last_seq = frame.seq
                    self.counters["errors"] += 1
                    changes = self.smoother.tick(wall)
                elif frame is not None:
                    last_seq = frame.seq
                    changes = self.on_frame(image, wall, mono)
                    changes += self.smoother.tick(wall)
                else:
                    age = reader.last_frame_age(mono)
                    changes = self.on_idle(age, mono - started, wall, mono)
                self._decided = self._decided or any(c.state != SpaceState.UNKNOWN for c in changes)
                self.publish(changes, reader, mono)
            except SpoolBusy:
                raise
            except Exception:  # one bad frame or report must not end the agent
                self.counters["errors"] += 1
                log.exception("camera %s: frame processing failed", self.camera.id)
                stop.wait(0.5)
