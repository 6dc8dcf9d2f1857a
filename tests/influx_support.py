"""Test support for the InfluxDB path: a real VictoriaMetrics and an HTTP fault injector.

VictoriaMetrics (Debian's ``victoria-metrics``) is the real InfluxDB v2 write endpoint:
it takes line protocol at ``/api/v2/write``, names series ``{measurement}_{field}``, keeps
numeric fields and millisecond timestamps, and is read back through ``/api/v1/export``.

The fault injector answers only what VictoriaMetrics never answers (401, 413, 429, 503,
400). It stands in for a failing server, not for storage: it records what it was sent
and what it answered, nothing more.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port, wait_port

from parkguide.supervisor import stop_process

VICTORIA_METRICS = "/usr/bin/victoria-metrics"


class VictoriaMetrics:
    """A real victoria-metrics on a free port; stop() and start() keep the port and data."""

    def __init__(self, tmp: Path, port: int | None = None):
        binary = shutil.which("victoria-metrics") or (
            VICTORIA_METRICS if Path(VICTORIA_METRICS).exists() else None
        )
        if not binary:
            pytest.fail(
                "victoria-metrics is not installed; run scripts/test.sh as root "
                "(it installs it with apt: apt-get install victoria-metrics)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.data = tmp / f"vm-{self.port}"
        self.log = tmp / f"vm-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            self.binary,
            f"-storageDataPath={self.data}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",  # the tests write events from the recent past
            "-search.latencyOffset=0s",  # data written is readable at once
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=15.0)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 10)
        self.proc = None

    def export(self, match: str) -> list[dict]:
        """Every series matching the selector: [{"metric": {...}, "values": [...], "timestamps": [...]}]."""
        # Rows ingested sit in an in-memory buffer for up to a second; flush them first.
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as resp:
            body = resp.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]


@pytest.fixture
def victoria(tmp_path: Path):
    vm = VictoriaMetrics(tmp_path)
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


@dataclass
class Request:
    """One write the injector received, and what it answered."""

    at: float  # monotonic
    lines: list[str]
    authorization: str
    query: dict[str, list[str]]
    status: int = 0


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


Policy = Callable[[Request, int], Answer]  # (request, index of this request) -> answer


class FaultInjector:
    """An HTTP server answering InfluxDB v2 writes per a policy (a function of each request)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        injector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                parsed = urllib.parse.urlsplit(self.path)
                request = Request(
                    at=time.monotonic(),
                    lines=[line for line in body.split("\n") if line],
                    authorization=self.headers.get("Authorization", ""),
                    query=urllib.parse.parse_qs(parsed.query),
                )
                with injector._lock:
                    index = len(injector.requests)
                    injector.requests.append(request)
                if parsed.path != "/api/v2/write":
                    answer = Answer(404, body='{"code":"not found"}')
                else:
                    answer = injector.policy(request, index)
                request.status = answer.status
                payload = answer.body.encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if answer.status != 204:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if answer.status != 204:
                    self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultInjector:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def accepted_lines(self) -> list[str]:
        """Every line of every 2xx-answered request, in arrival order."""
        with self._lock:
            return [line for r in self.requests if 200 <= r.status < 300 for line in r.lines]


@pytest.fixture
def fault_injector():
    """Factory: fault_injector(policy) starts an injector; all are stopped at teardown."""
    started: list[FaultInjector] = []

    def make(policy: Policy) -> FaultInjector:
        injector = FaultInjector(policy).start()
        started.append(injector)
        return injector

    yield make
    for injector in started:
        injector.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until predicate() is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
