"""The house rules hold: ruff is clean everywhere, mypy on the pure-logic modules."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PURE_MODULES = [
    "parking",
    "gateway/allocation.py",
    "gateway/reference.py",
    "gateway/displays.py",
    "gateway/ingest.py",
    "gateway/state.py",
    "edge/debounce.py",
    "edge/camera/crops.py",
    "edge/camera/quality.py",
    "edge/camera/smoothing.py",
    "firmware_sim/nodes.py",
    "firmware_sim/scenario.py",
    "firmware_sim/commands.py",
    "firmware_sim/traffic.py",
]


def test_ruff_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_mypy_is_clean_on_pure_logic():
    out = subprocess.run(
        [sys.executable, "-m", "mypy", *PURE_MODULES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
