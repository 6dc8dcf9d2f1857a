"""Shared fixtures: real services on free ports, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parkguide.ports import free_port, wait_port  # noqa: F401 (fixtures' helpers, imported by tests)
from parkguide.supervisor import stop_process

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLE_SITE = REPO / "examples" / "site.yaml"


def eventually(fn, timeout: float = 15.0):
    """``fn()`` once it is truthy, or its last value when ``timeout`` runs out (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def require(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if not path:
        pytest.fail(
            f"{binary} is not installed; run scripts/test.sh as root (it installs it with apt)"
        )
    return path


class MosquittoBroker:
    """A real mosquitto on a free port; stop() and start() keep the port, for outage tests."""

    def __init__(self, tmp: Path, extra_conf: str = "", port: int | None = None):
        self.binary = require("mosquitto")
        self.port = port or free_port()
        self.conf = tmp / f"mosquitto-{self.port}.conf"
        self.log = tmp / f"mosquitto-{self.port}.log"
        body = extra_conf or "allow_anonymous true\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\n{body}")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.proc = None


def tls_broker(tmp_path: Path) -> MosquittoBroker:
    """A started mosquitto whose only listener is TLS, with a certificate for 127.0.0.1 from
    a test CA made here (``tmp_path/ca.crt``); any client may connect."""
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl is not installed (needed to make the test certificates)")
    run = lambda *a: subprocess.run([openssl, *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=parkguide test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext")  # fmt: skip
    broker = MosquittoBroker(
        tmp_path,
        extra_conf=(
            # as root, mosquitto would drop to 'mosquitto', who cannot read tmp_path
            ("user root\n" if os.geteuid() == 0 else "") + "allow_anonymous true\n"
            f"cafile {tmp_path / 'ca.crt'}\n"
            f"certfile {tmp_path / 'srv.crt'}\n"
            f"keyfile {tmp_path / 'srv.key'}\n"
        ),
    )
    broker.start()
    return broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def example_site():
    from parking.site import load_site

    return load_site(EXAMPLE_SITE)


def cli_exit_code(argv: list[str]) -> int:
    """``parkguide ARGV`` run in this process: its exit code (argparse's too)."""
    from parkguide.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


BROKER_COMMANDS = [  # S: the example site, D: a journal or run folder, PORT: a free port
    ["gateway", "--site", "S", "--db", "D"],
    ["api", "--site", "S", "--db", "D"],
    ["sim", "display", "--site", "S"],
    ["edge", "camera", "--site", "S", "--camera", "cam-c", "--source", "0"],
]


def command_argv(command: list[str], tmp_path: Path) -> list[str]:
    """A command of :data:`BROKER_COMMANDS` with its placeholders filled in."""
    site = str(REPO / "examples" / "site.yaml")
    argv = [site if a == "S" else str(tmp_path / "j.db") if a == "D" else a for a in command]
    return [a.replace("PORT", str(free_port())) for a in argv]


def parkguide_cmd(*args: str) -> list[str]:
    """Command line that runs the parkguide CLI with this interpreter."""
    return [sys.executable, "-m", "parkguide", *args]


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PARKGUIDE_LOG_LEVEL", "INFO")
    return env


@pytest.fixture
def procs():
    """Processes a test starts (``camera_support.Proc`` and the like), closed after it."""
    started: list = []
    yield started
    for p in started:
        p.close()
