"""A process stopped with SIGTERM (a harness's timeout) still stops its children and
cleans up (the benchmarks start mosquitto, a gateway and a relay)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from parkguide.supervisor import die_with_parent, stop_on_sigterm, stop_process
    stop_on_sigterm()
    marker = Path(sys.argv[1])
    child = subprocess.Popen(["sleep", "300"], preexec_fn=die_with_parent)
    try:  # the pid is printed inside: the test's SIGTERM cannot come before the try
        print(child.pid, flush=True)
        time.sleep(300)
    finally:
        stop_process(child)
        marker.write_text("cleaned up")
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_sigterm_runs_the_cleanup_and_stops_the_children(tmp_path):
    marker = tmp_path / "marker"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(marker)], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(15) == 128 + signal.SIGTERM
    assert marker.read_text() == "cleaned up"
    assert _wait_gone(child)


def test_a_child_dies_with_its_parent_even_when_the_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "marker")], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    parent.kill()  # no cleanup runs: the death signal stops the child
    parent.wait(15)
    assert _wait_gone(child)


def test_the_demo_s_parts_are_its_own_in_a_folder_with_an_api_py(tmp_path, monkeypatch):
    """An integrator's project folder holds its own api.py and gateway/: started from
    there, the demo's children still run the demo's code, not those."""
    from parkguide.supervisor import Supervisor

    (tmp_path / "api.py").write_text("raise SystemExit('the folder api.py was imported')\n")
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__init__.py").write_text("raise SystemExit('folder gateway')\n")
    monkeypatch.chdir(tmp_path)
    supervisor = Supervisor(tmp_path)
    child = supervisor.start("api", ["api", "--help"])
    assert child.proc.wait(60) == 0, supervisor.tail(child)
    text = child.log_path.read_text()
    assert "--site" in text and "folder" not in text
    gw = supervisor.start("gateway", ["gateway", "--help"])
    assert gw.proc.wait(60) == 0, supervisor.tail(gw)
