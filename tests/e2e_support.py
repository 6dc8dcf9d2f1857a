"""Helpers for the end-to-end tests: the real parkguide processes as subprocesses.

``Processes`` starts commands with ``conftest.parkguide_cmd``, sends their stdout
to a reader thread (lines kept, waitable) and their stderr to a log file, and
always cleans up: ``stop_all`` terminates every process still running, waits,
then kills what is left. The ``processes`` fixture calls it in a ``finally``,
so a failing test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import parkguide_cmd

REPO = Path(__file__).resolve().parents[1]
SMALL_SITE = REPO / "examples" / "small-site.yaml"
EXAMPLE_SITE = REPO / "examples" / "site.yaml"
TERMINATE_WAIT_S = 5.0
LOG_TAIL_CHARS = 3000


class Proc:
    """One running parkguide command: stdout lines collected by a thread, stderr in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        stdin: bool = False,
    ):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.popen = subprocess.Popen(
            parkguide_cmd(*args),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # --- talking to it ----------------------------------------------------------------------
    def send(self, line: str) -> None:
        """One console line on stdin."""
        assert self.popen.stdin is not None, f"{self.name} was started without stdin"
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float, after: int = 0) -> str:
        """The first stdout line (from index ``after``) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = after
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{self.name}: no matching stdout line in {timeout}s "
                        f"(exit code {self.popen.poll()}); last lines {self.lines[-10:]}\n"
                        f"{self.log_tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def stdout_since(self, mark: int) -> list[str]:
        with self._cond:
            return list(self.lines[mark:])

    def log_tail(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} log ({self.log_path}) ---\n{text[-LOG_TAIL_CHARS:]}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s") from None

    # --- ending it --------------------------------------------------------------------------
    def kill9(self) -> None:
        """SIGKILL, as a crash: no clean shutdown, no last words but the broker's last will."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(TERMINATE_WAIT_S)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def reap(self) -> None:
        """Wait for the end after ``terminate``; kill if it takes too long; close our ends."""
        try:
            self.popen.wait(TERMINATE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(TERMINATE_WAIT_S)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(1)
        self._log.close()


class Processes:
    """Every process a test started; ``stop_all`` ends them whatever state they are in."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def start(
        self,
        name: str,
        *args: str,
        stdin: bool = False,
        env: dict[str, str] | None = None,
    ) -> Proc:
        taken = {p.name for p in self.started}
        unique, k = name, 1
        while unique in taken:
            k += 1
            unique = f"{name}-{k}"
        proc = Proc(unique, list(args), {**self.env, **(env or {})}, self.log_dir, stdin=stdin)
        self.started.append(proc)
        return proc

    def add_user(self, db: Path, name: str, role: str, password: str) -> None:
        """``parkguide user add`` as an operator runs it (the password on stdin)."""
        adder = self.start("user-add", "user", "add", name, "--role", role, "--db", str(db),
                           stdin=True)  # fmt: skip
        adder.send(password)
        assert adder.wait_exit(60) == 0, adder.log_tail()

    def logs(self) -> str:
        """The tail of every process's log, for assertion messages."""
        return "\n".join(p.log_tail() for p in self.started)

    def stop_all(self) -> None:
        for p in self.started:
            p.terminate()
        for p in self.started:
            p.reap()


@pytest.fixture
def processes(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Processes]:
    procs = Processes(subprocess_env, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# --- the sign renderer's plain text ------------------------------------------------------------

_HEADER = re.compile(r"^\[(?P<display>[^\]]+)\] ")


def plain_signs(lines: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Parse ``parkguide sim display --plain/--once`` output into (display, {label: text}) blocks.

    A block is a ``[display] title`` header followed by indented ``label  arrow  text`` lines.
    """
    blocks: list[tuple[str, dict[str, str]]] = []
    for line in lines:
        m = _HEADER.match(line)
        if m:
            blocks.append((m.group("display"), {}))
            continue
        if line.startswith("  ") and blocks:
            parts = re.split(r"\s{2,}", line.strip())
            if len(parts) == 3:
                blocks[-1][1][parts[0]] = parts[2]
    return blocks
