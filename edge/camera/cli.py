"""``parkguide edge camera``'s command line: flags, checks, and the agent's I/O wiring.

Reads the site file and the camera's source, opens the report spool and the view kept
beside it (``edge.camera.aim_store``), and runs ``edge.camera_agent.CameraAgent`` on a
``FrameReader`` until SIGTERM; the agent's frame logic is in ``edge.camera_agent``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

from edge.camera.aim_store import ViewStore
from edge.camera.quality import QualitySettings, shape_matches
from edge.camera.smoothing import SmoothingSettings
from edge.camera.stream import (
    FrameReader,
    carries_secret,
    describe,
    first_frame_size,
    is_file_source,
    parse_source,
    source_problem,
)
from edge.camera_agent import (
    DEFAULT_FPS_LIMIT,
    DEFAULT_HEALTH_INTERVAL_S,
    DEFAULT_STALE_S,
    AgentSettings,
    CameraAgent,
)
from edge.publisher import ReportPublisher, SpoolBusy, choose_agent_id
from parking.broker import add_credential_arguments, broker_from_args
from parking.payloads import went_offline
from parking.signals import stop_event_on_signals
from parking.site import Camera, SiteError, load_site

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--camera", required=True, help="id of the camera in the site file")
    parser.add_argument(
        "--source",
        help="rtsp:// or http:// URL, a video file, or a device index (e.g. 0)",
    )
    parser.add_argument(
        "--source-env",
        metavar="VAR",
        help=(
            "environment variable holding the source instead (a camera URL with its"
            " password inside: a command line is visible to every local user)"
        ),
    )
    parser.add_argument("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://)")
    parser.add_argument(
        "--agent",
        default=None,
        help="agent id (default: the camera's agent in the site file, camera-<camera id>)",
    )
    add_credential_arguments(parser)
    parser.add_argument(
        "--hold-s",
        type=float,
        default=SmoothingSettings.hold_s,
        help="a new decision must hold this long before a space changes (default %(default)s)",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=SmoothingSettings.min_confidence,
        help="decisions below this confidence keep the last state (default %(default)s)",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help=(
            "a video file --source: play it again from the start when it ends (default:"
            " stop at its end; its spaces go unknown as the agent goes offline); also turns"
            " off the check that refuses a stream showing frames it showed before (a"
            " recording looped as if live)"
        ),
    )
    parser.add_argument(
        "--fps-limit",
        type=float,
        default=DEFAULT_FPS_LIMIT,
        help="process at most this many frames per second; 0: all (default %(default)s)",
    )
    parser.add_argument(
        "--stale-s",
        type=float,
        default=DEFAULT_STALE_S,
        help="no frame for this long -> spaces unknown (default %(default)s)",
    )
    parser.add_argument(
        "--frozen-s",
        type=float,
        default=QualitySettings.frozen_s,
        help="identical frames for this long -> frozen, spaces unknown (default %(default)s)",
    )
    parser.add_argument(
        "--snapshot-interval-s",
        type=float,
        default=None,
        help="full snapshot period while connected (default: a third of the camera's ttl_s "
        "in the site file, so the gateway never takes a still scene for a silent camera)",
    )
    parser.add_argument(
        "--health-interval-s",
        type=float,
        default=DEFAULT_HEALTH_INTERVAL_S,
        help="health report period (default %(default)s)",
    )
    parser.add_argument(
        "--squeezed-stream",
        action="store_true",
        help="the stream is the camera's whole view squeezed to another shape than the site "
        "file's resolution (some 4:3 substreams of 16:9 cameras): scale the polygons to it "
        "(without it such frames are refused: a rotated or cropped picture would be misread)",
    )
    parser.add_argument(
        "--new-view",
        action="store_true",
        help="forget the view and the best sharpness kept from earlier runs and learn them "
        "anew (after re-aiming or replacing the camera on purpose and checking the polygons "
        "with 'parkguide site camera-view'; redrawn polygons renew the view by themselves)",
    )
    parser.add_argument(
        "--no-view-check",
        action="store_true",
        help="do not refuse frames whose view moved from the learned one (a camera on a "
        "mount that sways; its spaces are then read wherever it points)",
    )
    parser.add_argument(
        "--spool-dir",
        default=None,
        help="directory of the durable report spool (and of the camera's learned view)",
    )
    parser.add_argument("--model", default=None, help="classifier model (default: the bundled one)")


def _check_positive(args: argparse.Namespace) -> None:
    for name in ("hold_s", "stale_s", "frozen_s", "snapshot_interval_s", "health_interval_s"):
        value = getattr(args, name)
        if value is None:
            continue
        if not 0 < value < math.inf:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, not {value}")
    if not 0 <= args.fps_limit < math.inf:
        raise ValueError(f"--fps-limit must be 0 or more, not {args.fps_limit}")
    if args.fps_limit and 2 / args.fps_limit > args.stale_s:
        # the agent takes a gap of stale_s between judged frames for its own stall
        raise ValueError(
            f"--fps-limit {args.fps_limit:g} leaves {1 / args.fps_limit:.1f} s between frames: "
            f"--stale-s ({args.stale_s:g}) must be at least twice that (a margin: a gap longer "
            "than --stale-s is taken for the agent's own stall and turns the spaces unknown)"
        )
    if not 0.5 <= args.min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be 0.5..1, not {args.min_confidence}")


def _file_shape_problem(source: str | int, camera: Camera) -> str | None:
    """A video file of another shape than the site file's: every frame of it would be
    refused (blind, ``geometry``), so it is said at start; a stream may still change."""
    if not is_file_source(source) or not os.path.isfile(str(source)):
        return None  # a URL, a device (/dev/video0) or a FIFO: may still change
    size = first_frame_size(str(source))
    if size is None or shape_matches(size, camera.resolution):
        return None
    (w, h), (cw, ch) = size, camera.resolution
    return (
        f"its pictures are {w}x{h}, another shape than the site file's {cw}x{ch} for camera "
        f"{camera.id}: every frame would be refused (blind, geometry); give --squeezed-stream "
        "if it is the camera's whole view squeezed"
    )


def main(args: argparse.Namespace) -> int:
    import cv2

    from edge.camera.classifier import SpaceClassifier  # OpenCV DNN: only for this command

    if "OPENCV_FOR_THREADS_NUM" not in os.environ:
        # OpenCV's pool spun between frames (a fifth of the agent's CPU in sched_yield,
        # more on a slow edge box); a 40-space frame is ~10 ms on one core, a fraction of
        # the frame interval at --fps-limit (the variable sets more threads where wanted)
        cv2.setNumThreads(1)
    try:
        _check_positive(args)
        site = load_site(args.site)
        camera = site.camera(args.camera)
        if args.snapshot_interval_s is None:
            args.snapshot_interval_s = site.snapshot_interval(camera.id)
        problem = site.snapshot_interval_problem(camera.id, args.snapshot_interval_s)
        if problem:
            raise ValueError(f"--snapshot-interval-s: {problem}")
        broker = broker_from_args(args.broker, args)
        classifier = SpaceClassifier.load(args.model)
    except (SiteError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    if not camera.polygons:
        print(f"error: camera {camera.id} has no spaces bound to it", file=sys.stderr)
        return 2
    if (args.source is None) == (args.source_env is None):
        print("error: give one of --source and --source-env", file=sys.stderr)
        return 2
    if args.source_env is not None:
        args.source = os.environ.get(args.source_env)
        if not args.source:
            print(
                f"error: --source-env {args.source_env}: that variable is not set", file=sys.stderr
            )
            return 2
    source = parse_source(args.source)
    if args.source_env is None and carries_secret(source):
        log.warning(
            "--source %s carries a login or a secret on the command line, which every local"
            " user can read (ps, systemctl status): give it with --source-env VAR instead",
            describe(source),
        )
    problem = source_problem(source) or (
        None if args.squeezed_stream else _file_shape_problem(source, camera)
    )
    if problem:
        print(f"error: --source {describe(source)}: {problem}", file=sys.stderr)
        return 2
    try:
        agent_id = choose_agent_id(args.agent, camera.id, camera.agent)
        publisher = ReportPublisher(
            broker,
            site.id,
            agent_id,
            camera.id,
            spool_dir=Path(args.spool_dir) if args.spool_dir else None,
            snapshot_interval_s=args.snapshot_interval_s,
        )
    except ValueError as exc:
        print(f"error: --agent: {exc}", file=sys.stderr)
        return 2
    # frames older than a lost stream's timeout are no better than none: drop the backlog
    reader = FrameReader(
        source, max_fps=args.fps_limit, loop_file=args.loop, max_behind_s=args.stale_s
    )
    stop = stop_event_on_signals(log)
    try:
        publisher.start()
    except SpoolBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unusable spool folder: a line saying so, as the serial agent
        print(f"error: spool: {exc}", file=sys.stderr)
        return 1
    views = ViewStore(
        publisher.spool_path.parent, publisher.spool_path.name.removesuffix(".sqlite3"), camera
    )
    view, best = None, None
    try:  # after the spool's lock: not under another agent with this id
        if args.new_view:
            views.forget()
        view, best = views.load(), views.load_best()
    except OSError as exc:
        log.warning("camera %s: kept view unusable (%s): learning it anew", camera.id, exc)
    agent = CameraAgent(
        camera,
        classifier,
        publisher,
        settings=AgentSettings(
            args.stale_s,
            args.fps_limit,
            args.health_interval_s,
            args.squeezed_stream,
            view_check=not args.no_view_check,
        ),
        view=view,
        keep_view=views.save,
        best_sharpness=best,
        keep_best=views.save_best,
        smoothing=SmoothingSettings(hold_s=args.hold_s, min_confidence=args.min_confidence),
        # a file replayed on purpose (--loop) shows its frames again: no replay check
        quality=QualitySettings(frozen_s=args.frozen_s, replay_check=not args.loop),
    )
    log.info(
        "camera agent %s: camera %s (%d spaces) from %s to %s",
        agent_id,
        camera.id,
        len(agent.space_ids),
        describe(source),
        broker.url,
    )
    reader.start()
    try:
        agent.run(reader, stop)
    finally:
        reader.stop()
        # retained: a monitor subscribing later must not read a stopped camera as "ok"
        last = agent.health(time.time(), time.monotonic(), reader.reconnects)
        publisher.publish_health(went_offline(last))
        publisher.stop()
    return 0
