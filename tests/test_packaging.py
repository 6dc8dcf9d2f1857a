"""What a plain (non-editable) install gets: the built wheel, unpacked and run from elsewhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_example_sites_model_and_dashboard_and_the_demo_finds_them(
    tmp_path,
):
    """`parkguide demo` from an installed wheel failed: examples/site.yaml was not in it."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("parkguide-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "parking/examples/site.yaml",
        "parking/examples/small-site.yaml",
        "edge/camera/model/occupancy.onnx",
        "api/static/index.html",
    ):
        assert needed in names
    unpacked = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from parking.site import EXAMPLE_SITE, load_site;"
        "assert EXAMPLE_SITE.is_relative_to(sys.argv[1]), EXAMPLE_SITE;"
        "print(load_site(EXAMPLE_SITE).id)"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(unpacked)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "xinyuan"
