"""``parkguide site camera-view``: a technician checks a camera's polygons on its picture."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from camera_support import CAMERA, Proc, parse_status, start_sim
from camera_support import test_env as proc_env
from conftest import EXAMPLE_SITE, free_port, parkguide_cmd

from edge.camera.crops import fit_polygons
from edge.camera.view import polygon_problems
from parking.site import load_site

pytestmark = pytest.mark.timeout(120)


def view(site: Path, source: str, out: Path) -> tuple[int, dict]:
    run = subprocess.run(
        parkguide_cmd(
            "site",
            "camera-view",
            "--site",
            str(site),
            "--camera",
            CAMERA,
            "--source",
            source,
            "--out",
            str(out),
            "--json",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        env=proc_env(),
        timeout=90,
    )
    assert run.stdout.strip(), run.stderr
    return run.returncode, json.loads(run.stdout)


def test_the_picture_shows_every_space_with_the_decision_the_agent_would_take(
    procs: list[Proc], tmp_path: Path
) -> None:
    port = free_port()
    sim = start_sim(
        port, tmp_path / "sim.log", "--scenario", "none", "--start", "11:00",
        "--initial-occupancy", "0.5",
    )  # fmt: skip
    procs.append(sim)
    truth = parse_status(sim.ask("status"))
    out = tmp_path / "view.jpg"
    code, result = view(EXAMPLE_SITE, f"http://127.0.0.1:{port}/stream.mjpg", out)
    assert code == 0 and result["ok"] and result["problems"] == [], result
    assert (result["width"], result["height"], result["frame"]) == (1280, 720, "ok")
    decided = {s["space"]: s["state"] for s in result["spaces"]}
    assert set(decided) == set(truth)
    agree = sum(decided[s] == ("occupied" if occ else "free") for s, occ in truth.items())
    assert agree >= 36, f"{agree}/40 agree with the simulation: {decided}"
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape == (720, 1280, 3)
    # each outline is drawn in its decision's colour (red occupied, green free)
    cam = next(c for c in load_site(EXAMPLE_SITE).cameras if c.id == CAMERA)
    for space, colour in (("occupied", (40, 40, 230)), ("free", (60, 200, 60))):
        sid = next(s["space"] for s in result["spaces"] if s["state"] == space)
        a, b = np.asarray(cam.polygons[sid], float)[:2]
        x, y = np.round((a + b) / 2).astype(int)
        pixel = picture[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)
        assert (np.abs(pixel - colour).max(axis=1) < 40).any(), (sid, pixel.tolist())

    # a capped lens: no decisions, and the tool says the agent would report unknown
    assert sim.ask("fault camera black").startswith("ok")
    code, blind = view(EXAMPLE_SITE, f"http://127.0.0.1:{port}/stream.mjpg", out)
    assert code == 1 and not blind["ok"] and blind["frame"] == "black"
    # every space listed as the agent would report it: unknown (the list stays whole)
    assert [s["space"] for s in blind["spaces"]] == [s["space"] for s in result["spaces"]]
    assert {(s["state"], s["confidence"]) for s in blind["spaces"]} == {("unknown", 0.0)}
    assert any("unknown" in p for p in blind["problems"])


def test_a_picture_of_another_size_than_the_site_files_is_named(tmp_path: Path) -> None:
    """(The site file itself refuses polygons that leave its resolution: `site check`.)"""
    from firmware_sim.camera_render import CameraScene

    cam = next(c for c in load_site(EXAMPLE_SITE).cameras if c.id == CAMERA)
    picture = tmp_path / "frame.png"  # the simulated camera's picture, at noon
    cv2.imwrite(str(picture), CameraScene(cam.polygons, cam.resolution).render(720, 0.0))
    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    site = tmp_path / "site.yaml"
    site.write_text(text.replace("resolution: [1280, 720]", "resolution: [1920, 1080]"), "utf-8")
    code, result = view(site, str(picture), tmp_path / "scaled.png")
    assert code == 1 and not result["ok"]
    assert any("the site file says 1920x1080" in p for p in result["problems"]), result
    assert len(result["spaces"]) == 40  # decided anyway, on the scaled polygons
    assert (tmp_path / "scaled.png").is_file()  # drawn anyway: the technician sees where


def test_fit_and_problems_are_plain_geometry() -> None:
    square = np.array([[10, 10], [50, 10], [50, 50], [10, 50]], np.float32)
    (half,) = fit_polygons([square], (200, 100), (100, 50))
    assert np.allclose(half, square / 2)
    tiny = np.array([[0, 0], [5, 0], [5, 5], [0, 5]], np.float32)
    half_out = square + np.array([80, 0], np.float32)  # x 90..130 on a 110 px picture
    problems = polygon_problems(["ok", "tiny", "edge"], [square, tiny, half_out], 110, 100)
    assert [p.split(":")[0] for p in problems] == ["tiny", "edge"]
    assert "50% of its polygon" in problems[1]


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:S3cr@t!@127.0.0.1:8554/stream.mjpg",  # "@" in the password
        "rtsp://admin:Pa/ss9@127.0.0.1:554/live",  # "/" in the password
        "rtsp://admin:plain@cam.local/live",
    ],
)
def test_a_camera_url_is_never_shown_with_its_password(url: str) -> None:
    from edge.camera.stream import describe

    shown = describe(url)
    password = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    assert password not in shown and "admin" not in shown
    assert shown.startswith(url.split("://")[0] + "://***@")
    assert shown.endswith(url.rsplit("@", 1)[1])


def test_a_picture_of_another_shape_is_said_to_blind_the_agent(tmp_path: Path) -> None:
    """A 4:3 picture for a 16:9 site file: the agent reports every space unknown (fault
    geometry), but the tool only said the polygons were scaled, and listed decisions."""
    from firmware_sim.camera_render import CameraScene

    cam = next(c for c in load_site(EXAMPLE_SITE).cameras if c.id == CAMERA)
    frame = CameraScene(cam.polygons, cam.resolution).render(720, 0.0)
    picture = tmp_path / "four-three.png"
    cv2.imwrite(str(picture), cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA))
    code, result = view(EXAMPLE_SITE, str(picture), tmp_path / "out.png")
    assert code == 1 and not result["ok"] and result["frame"] == "geometry", result
    (problem,) = [p for p in result["problems"] if "640x480" in p]
    assert "unknown" in problem and "--squeezed-stream" in problem


def _view_error(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        parkguide_cmd("site", "camera-view", "--site", str(EXAMPLE_SITE), *args),
        capture_output=True,
        text=True,
        env={**proc_env(), "EMPTY_SOURCE": ""},
        timeout=90,
    )


def test_sources_and_cameras_that_cannot_be_read_are_named_on_one_line(tmp_path: Path) -> None:
    """A mistyped file read as "no frame from …" (exit 1, as for problems found), an
    empty variable as "no frame from " and nothing, and an unknown camera came out one
    character per line."""
    out = str(tmp_path / "v.jpg")
    missing = _view_error("--camera", CAMERA, "--source", str(tmp_path / "nope.jpg"), "--out", out)
    assert missing.returncode == 2 and "no such file" in missing.stderr, missing.stderr
    empty = _view_error("--camera", CAMERA, "--source-env", "EMPTY_SOURCE", "--out", out)
    assert empty.returncode == 2 and "$EMPTY_SOURCE is empty" in empty.stderr, empty.stderr
    camera = _view_error("--camera", "cam-x", "--source", "0", "--out", out)
    assert camera.returncode == 2
    (line,) = camera.stderr.strip().splitlines()
    assert "no camera 'cam-x'" in line and CAMERA in line
    assert not Path(out).exists()


def test_a_blind_picture_names_every_space_unknown_in_text_and_on_the_picture(
    tmp_path: Path,
) -> None:
    """A capped lens without --json: the technician still reads every space (unknown) and
    sees each outline white with its space id, as the docs say."""
    picture = tmp_path / "black.png"
    cv2.imwrite(str(picture), np.zeros((720, 1280, 3), np.uint8))
    out = tmp_path / "view.png"
    run = subprocess.run(
        parkguide_cmd(
            "site",
            "camera-view",
            "--site",
            str(EXAMPLE_SITE),
            "--camera",
            CAMERA,
            "--source",
            str(picture),
            "--out",
            str(out),
        ),  # fmt: skip
        capture_output=True,
        text=True,
        env=proc_env(),
        timeout=90,
    )
    assert run.returncode == 1, run.stderr
    cam = next(c for c in load_site(EXAMPLE_SITE).cameras if c.id == CAMERA)
    listed = {
        line.split()[0]: line.split()[1]
        for line in run.stdout.splitlines()
        if line.startswith("  ") and not line.strip().startswith("problem:")
    }
    assert listed == {s: "unknown" for s in cam.polygons}, run.stdout
    drawn = cv2.imread(str(out))
    for poly in cam.polygons.values():
        a, b = np.asarray(poly, float)[:2]
        x, y = np.round((a + b) / 2).astype(int)
        pixel = drawn[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)
        assert (pixel.min(axis=1) > 200).any(), pixel.tolist()  # a white outline
