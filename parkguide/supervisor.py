"""Start, watch and stop the demo's child processes; nothing is left running.

Each child gets its own log file, dies with the demo (PR_SET_PDEATHSIG on
Linux, so even a SIGKILLed demo leaves nothing behind), and is stopped in
reverse start order: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


CODE_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the parkguide, api, gateway, edge ... packages this process runs."""


def stop_process(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``grace_s``; returns once it is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %s did not stop in %.0fs; killing it", proc.pid, grace_s)
            proc.kill()
            proc.wait()


def stop_on_sigterm() -> None:
    """SIGTERM ends this process through SystemExit, so its ``finally`` blocks stop its
    children and remove its temporary files (Python's default is to die on the spot)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive this process (even a SIGKILL)."""
    # Not Linux (no libc.so.6): no death signal, and the demo's own shutdown path
    # (stop_all) is what stops the children.
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()  # Ctrl-C reaches the demo only; it stops the children in order


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen
    log_path: Path
    stdin_pipe: bool

    def send(self, line: str) -> bool:
        """Write one command line to the child's stdin (simulators take commands there)."""
        if not self.stdin_pipe or self.proc.stdin is None or self.proc.poll() is not None:
            return False
        try:
            self.proc.stdin.write((line.rstrip("\n") + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False


class Supervisor:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        args: list[str],
        *,
        stdin_pipe: bool = False,
        env: dict[str, str] | None = None,
        module: str = "parkguide",
    ) -> Child:
        # -P: not the current folder first on sys.path (a folder with its own api.py or
        # gateway/ would shadow the demo's parts); the parent's own code instead, wherever
        # it was imported from (a wheel, an editable install, a checkout)
        argv = [sys.executable, "-P", "-m", module, *args]
        log_path = self.run_dir / f"{name}.log"
        path = os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH")) if p)
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                preexec_fn=die_with_parent,
            )
        child = Child(name, argv, proc, log_path, stdin_pipe)
        self.children.append(child)
        log.debug("started %s (pid %s): %s", name, proc.pid, " ".join(argv))
        return child

    def forget(self, child: Child) -> None:
        """Drop an exited child that was replaced (not a part that died)."""
        self.children.remove(child)

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def tail(self, child: Child, lines: int = 8) -> str:
        try:
            return "\n".join(child.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_all(self, grace_s: float = 5.0) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, grace_s)
                child.proc.kill()
                child.proc.wait()
            if child.proc.stdin:
                child.proc.stdin.close()
