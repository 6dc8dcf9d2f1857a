"""`parkguide sim bus` on a real pty, read and written by mbpoll (a Modbus master no one here wrote)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_sim.bus import UNREAD_DROP_S
from parkguide.supervisor import stop_process
from parking import modbus_rtu as rtu
from parking import registers as reg
from tests.conftest import EXAMPLE_SITE, parkguide_cmd, require

pytestmark = pytest.mark.timeout(60)

NODE1 = [f"A-{i:03d}" for i in range(1, 33)]
NODE2 = [f"A-{i:03d}" for i in range(33, 65)]
MBPOLL_VALUE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)\s*$", re.M)


class SimBus:
    """One simulator process with a console on stdin/stdout."""

    def __init__(self, tmp: Path, env: dict[str, str], *extra: str, link: Path | None = None):
        self.link = link or tmp / "bus-g"
        self.log = tmp / f"sim-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                parkguide_cmd(
                    "sim",
                    "bus",
                    "--site",
                    str(EXAMPLE_SITE),
                    "--bus",
                    "bus-g",
                    "--link",
                    str(self.link),
                    *extra,
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        self.buf = b""
        try:
            first = self.readline(15)
        except Exception:
            self.stop()
            raise
        m = re.fullmatch(r"pty (/dev/\S+) linked at (.+)", first)
        assert m, first
        self.device = m.group(1)

    def readline(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
                raise TimeoutError(f"no line from the simulator; log:\n{self.log.read_text()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError(f"simulator stdout closed; log:\n{self.log.read_text()}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def command(self, line: str) -> str:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.readline()

    def stop(self) -> None:
        stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                with contextlib.suppress(OSError):
                    f.close()


def mbpoll(
    link: Path, *args: str, write: tuple[int, ...] = (), timeout: float = 1.0
) -> subprocess.CompletedProcess:
    """Run mbpoll once against the simulator; ``write`` values make it write instead of read."""
    return subprocess.run(
        [require("mbpoll"), "-m", "rtu", "-b", "9600", "-P", "even", "-0", "-1", "-o", str(timeout)]
        + list(args)
        + [str(link)]
        + [str(v) for v in write],
        capture_output=True,
        text=True,
        timeout=10,
    )


def read_values(link: Path, address: int, table: str, start: int, count: int) -> list[int]:
    """table: '1' discrete inputs, '3' input registers, '4' holding registers."""
    done = mbpoll(link, "-a", str(address), "-t", table, "-r", str(start), "-c", str(count))
    assert done.returncode == 0, done.stdout + done.stderr
    values = {int(i): int(v) for i, v in MBPOLL_VALUE.findall(done.stdout)}
    assert sorted(values) == list(range(start, start + count)), done.stdout
    return [values[i] for i in range(start, start + count)]


def status_bit(sim: SimBus, space: str) -> int:
    line = sim.command(f"status {space}")
    m = re.search(r" bit=(\d) ", line)
    assert line.startswith(f"ok {space} ") and m, line
    return int(m.group(1))


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[SimBus]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    s = SimBus(tmp_path_factory.mktemp("simbus"), env, "--scenario", "none", "--seed", "11")
    try:
        yield s
    finally:
        s.stop()


def test_mbpoll_reads_the_bits_set_on_the_console(sim):
    pattern = [1 if i % 3 == 0 else 0 for i in range(32)]
    for space, bit in zip(NODE1, pattern, strict=True):
        assert sim.command(f"set {space} {'occupied' if bit else 'free'}") == (
            f"ok {space} {'occupied' if bit else 'free'}"
        )
    deadline = time.monotonic() + 5  # past the node's 300 ms debounce
    while (bits := read_values(sim.link, 1, "1", 0, 32)) != pattern:
        assert time.monotonic() < deadline, bits
        time.sleep(0.2)
    assert [status_bit(sim, s) for s in NODE1] == pattern
    # node 2 was left to its seeded initial occupancy: mbpoll and the console agree
    assert read_values(sim.link, 2, "1", 0, 32) == [status_bit(sim, s) for s in NODE2]


def test_mbpoll_reads_node_and_detector_registers(sim):
    assert sim.command("fault A-037 dead") == "ok A-037 fault dead"
    info = read_values(sim.link, 2, "3", 0, reg.NODE_INFO_COUNT)
    assert info[reg.IR_MODEL] == reg.MODEL_CODE
    assert info[reg.IR_FIRMWARE] == reg.FIRMWARE_VERSION
    assert info[reg.IR_DETECTOR_COUNT] == 32
    assert info[reg.IR_REQUESTS] >= 1
    status = read_values(sim.link, 2, "3", reg.IR_DETECTOR_STATUS, 32)
    raw = read_values(sim.link, 2, "3", reg.IR_DETECTOR_RAW, 32)
    bits = read_values(sim.link, 2, "1", 0, 32)
    assert status[4] == reg.DetectorStatus.DEAD and raw[4] == 0 and bits[4] == 0
    for i in set(range(32)) - {4}:
        assert status[i] == reg.DetectorStatus.OK
        assert (raw[i] > reg.DEFAULT_THRESHOLD) == bool(bits[i]), (i, raw[i], bits[i])
    battery = read_values(sim.link, 2, "3", reg.IR_DETECTOR_BATTERY, 32)
    assert all(0 <= b <= 100 for b in battery)
    assert sim.command("clear A-037") == "ok A-037 cleared"
    assert read_values(sim.link, 2, "3", reg.IR_DETECTOR_STATUS + 4, 1) == [0]


def test_mbpoll_writes_a_holding_register(sim):
    done = mbpoll(sim.link, "-a", "3", "-t", "4", "-r", str(reg.HR_DEBOUNCE_MS), write=(120,))
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_values(sim.link, 3, "4", 0, 2) == [reg.DEFAULT_THRESHOLD, 120]
    line = sim.command("status")
    node3 = next(part for part in line.split(" | ") if part.startswith("node 3:"))
    assert "debounce_ms=120" in node3
    # an indicator colour that does not exist is refused and changes nothing
    done = mbpoll(sim.link, "-a", "3", "-t", "4", "-r", str(reg.HR_INDICATOR), write=(99,))
    assert done.returncode != 0 and "failed: Illegal data value" in done.stdout + done.stderr
    assert read_values(sim.link, 3, "4", reg.HR_INDICATOR, 1) == [reg.IndicatorColour.OFF]
    done = mbpoll(sim.link, "-a", "3", "-t", "4", "-r", str(reg.HR_INDICATOR), write=(1,))
    assert done.returncode == 0
    assert read_values(sim.link, 3, "4", reg.HR_INDICATOR, 1) == [reg.IndicatorColour.GREEN]


def test_exceptions_and_silence(sim):
    done = mbpoll(sim.link, "-a", "1", "-t", "3", "-r", "8", "-c", "1")
    assert done.returncode != 0 and "failed: Illegal data address" in done.stdout + done.stderr
    done = mbpoll(sim.link, "-a", "1", "-t", "1", "-r", "30", "-c", "4")
    assert done.returncode != 0 and "failed: Illegal data address" in done.stdout + done.stderr
    done = mbpoll(sim.link, "-a", "9", "-t", "1", "-r", "0", "-c", "1", timeout=0.3)
    assert done.returncode != 0 and "timed out" in done.stdout + done.stderr
    assert sim.command("fault node 4 dead") == "ok node 4 dead"
    done = mbpoll(sim.link, "-a", "4", "-t", "1", "-r", "0", "-c", "1", timeout=0.3)
    assert done.returncode != 0 and "timed out" in done.stdout + done.stderr
    assert sim.command("clear node 4") == "ok node 4 cleared"
    assert len(read_values(sim.link, 4, "1", 0, 32)) == 32


def test_a_late_answer_nobody_read_is_not_handed_to_the_next_master(sim):
    """A node answering after mbpoll gave up: the answer is lost, as on a real adapter,
    instead of waiting in the pty for the next mbpoll, which took it for its own (every
    later read one answer behind, or refused as from the wrong node)."""
    assert sim.command("fault node 6 slow 400") == "ok node 6 slow 400ms"
    try:
        done = mbpoll(sim.link, "-a", "6", "-t", "3", "-r", "0", "-c", "3", timeout=0.2)
        assert done.returncode != 0 and "timed out" in done.stdout + done.stderr
    finally:
        assert sim.command("clear node 6") == "ok node 6 cleared"
    time.sleep(0.4 + UNREAD_DROP_S + 0.6)  # the late answer is written, then left unread
    bits = read_values(sim.link, 2, "1", 0, 32)
    assert bits == [status_bit(sim, space) for space in NODE2]


def test_bad_crc_frames_are_counted_by_the_node(sim):
    before = read_values(sim.link, 5, "3", reg.IR_CRC_ERRORS, 1)[0]
    good = rtu.Request(5, rtu.READ_DISCRETE_INPUTS, 0, 8).encode()
    with serial.Serial(str(sim.link), 9600, parity=serial.PARITY_EVEN, timeout=0.3) as port:
        port.write(good[:-1] + bytes([good[-1] ^ 0xA5]))
        assert port.read(5) == b""  # a damaged request gets no answer
    assert read_values(sim.link, 5, "3", reg.IR_CRC_ERRORS, 1)[0] == before + 1


def test_noise_that_looks_like_a_long_frame_is_dropped_at_the_next_silence(sim):
    """A node hunts for the next frame after line silence: 40 bytes of noise that start
    like a long "write multiple" frame used to swallow the next ~23 requests."""
    noise = bytes([1, 0x0F, 0, 0, 0x06, 0x40, 200]) + bytes(range(33))  # a 209-byte frame
    fd = os.open(str(sim.link), os.O_RDWR | os.O_NOCTTY)  # raw bytes, no line settings
    try:
        os.write(fd, noise)
        time.sleep(0.3)  # the line goes silent
    finally:
        os.close(fd)
    t0 = time.monotonic()
    assert len(read_values(sim.link, 1, "1", 0, 32)) == 32  # the very next request
    assert time.monotonic() - t0 < 3


def test_bad_console_lines_get_a_reason_and_change_nothing(sim):
    before = status_bit(sim, "A-010")
    assert sim.command("set A-010 parked").startswith("error: set: state must be")
    assert sim.command("set Z-999 occupied") == "error: space 'Z-999' is not on bus bus-g"
    assert sim.command("fault node 3 crc 2").startswith("error: crc RATE must be")
    assert sim.command("frobnicate").startswith("error: unknown command")
    assert sim.command("help").startswith("ok commands:")
    assert status_bit(sim, "A-010") == before


def test_keeps_answering_after_stdin_closes_and_replaces_a_stale_link(tmp_path):
    link = tmp_path / "stale"
    link.symlink_to("/dev/pts/does-not-exist")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sim = SimBus(tmp_path, env, "--speed", "600", "--wire-timing", link=link)
    try:
        assert os.path.realpath(link) == sim.device
        sim.proc.stdin.close()  # a service has no console
        time.sleep(0.5)
        assert sim.proc.poll() is None
        info = read_values(link, 1, "3", 0, reg.NODE_INFO_COUNT)
        assert info[reg.IR_MODEL] == reg.MODEL_CODE
        assert len(read_values(link, 7, "1", 0, 32)) == 32
        assert "stdin closed" in sim.log.read_text()
    finally:
        sim.stop()
    assert not link.exists() and not link.is_symlink()  # its own link is removed on exit
