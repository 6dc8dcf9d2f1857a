"""``parkguide sim bus``: the node controllers of one RS-485 bus, answering on a pty.

One process per bus, one thread: a select loop over the pty master and stdin,
with timers for the answers (``--wire-timing`` paces them at the baud rate)
and for the scenario. The register model and faults are in
``firmware_sim.nodes``; this module only moves bytes and lines.

stdout carries the device line (``pty /dev/pts/N linked at PATH``) and one
answer line per console command; everything else goes to the log.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import math
import os
import select
import signal
import struct
import sys
import termios
import time
import tty
from collections import deque
from pathlib import Path

from firmware_sim.commands import Answers, CommandError, SetSpace, parse_command
from firmware_sim.nodes import Answer, SimulatedBus
from firmware_sim.scenario import (
    Scenario,
    add_scenario_arguments,
    make_scenario,
    start_minute,
)
from parking import modbus_rtu as rtu
from parking.site import SiteError, load_site

log = logging.getLogger(__name__)

SCENARIO_PERIOD_S = 0.1  # real seconds between scenario steps
CHUNK_S = 0.005  # under --wire-timing, answers go out in pieces of about this much wire time
FRAME_GAP_FLOOR_S = 0.02
SPIN_S = 0.001  # the last stretch before a due write is busy-waited: select wakes late
REPORT_PERIOD_S = 60.0
MAX_LINE = 4096
# answers left unread this long after they were written went to a master that gave up and
# closed the port (an mbpoll that timed out): a real adapter loses them, the pty would
# hand them to the next master that opens it, as the answer to its own request
UNREAD_DROP_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--bus", required=True, help="id of the RS-485 bus to simulate")
    parser.add_argument(
        "--link", required=True, help="path to make a symlink to the pty (a stale link is replaced)"
    )
    parser.add_argument(
        "--wire-timing",
        action="store_true",
        help="answer no faster than the baud rate allows (request, 3.5-char silence, answer)",
    )
    parser.add_argument(
        "--baud", type=int, default=None, help="baud rate for --wire-timing (default: the site's)"
    )
    add_scenario_arguments(parser)


Console = Answers  # command answers on stdout, surviving a closed stdout


class BusServer:
    """The select loop: bytes in from the master, paced answers out, console lines, scenario."""

    def __init__(
        self,
        model: SimulatedBus,
        scenario: Scenario | None,
        master_fd: int,
        baud: int,
        wire_timing: bool,
        console: Console,
        stdin_fd: int | None,
        slave_fd: int | None = None,
    ):
        self.model = model
        self.scenario = scenario
        self.master = master_fd
        self.baud = baud
        self.wire_timing = wire_timing
        self.console = console
        self.stdin_fd = stdin_fd
        self.slave = slave_fd  # our own hold on the far end: its queue is the line's
        self.last_write = 0.0
        self.unread_checked = True  # nothing written since the last look at the queue
        self.unread_dropped = 0  # bytes of answers dropped unread
        self.stdin_buf = b""
        self.out: deque[tuple[float, bytes]] = deque()  # (when to write, bytes), in order
        self.line_free_at = 0.0  # when our last answer has left the wire
        self.rx_start: float | None = None  # first byte of an unfinished request
        self.last_rx = 0.0
        # silence that ends a frame: 3.5 characters on a wire; on a pty, whose bytes come in
        # whole writes, a generous floor (a master never pauses that long inside a request)
        self.frame_gap_s = max(rtu.silent_interval_s(self.baud), FRAME_GAP_FLOOR_S)
        self.running = True
        self.master_ok_at = 0.0  # back off after an error on the master
        self.dropped_writes = 0
        # how late answers leave against their due time (a busy machine delays wake-ups)
        self.writes = 0
        self.late_sum = 0.0
        self.late_max = 0.0

    # --- the line ---------------------------------------------------------------

    def on_master_readable(self, now: float) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            # no slave end open: cannot happen while we hold it, but never spin on it
            log.warning("pty master: %s; retrying in 50 ms", exc)
            self.master_ok_at = now + 0.05
            return
        if not data:
            self.master_ok_at = now + 0.05
            return
        if self.rx_start is not None and now - self.last_rx > self.frame_gap_s:
            self.model.decoder.line_went_silent()  # the unfinished frame was noise
            self.rx_start = None
        self.last_rx = now
        if self.rx_start is None:
            self.rx_start = now
        for answer in self.model.receive(data, now):
            self.schedule(answer, now)
        self.rx_start = now if self.model.decoder.buf else None

    def schedule(self, answer: Answer, now: float) -> None:
        if not self.wire_timing:
            self.out.append((now + answer.delay_s, answer.frame))
            return
        # the request needed its wire time to arrive, then 3.5 characters of silence end it
        rx_start = self.rx_start if self.rx_start is not None else now
        request_end = max(rx_start + rtu.wire_time_s(answer.request_len, self.baud), now)
        start = max(
            request_end + rtu.silent_interval_s(self.baud) + answer.delay_s, self.line_free_at
        )
        per_chunk = max(1, math.ceil(CHUNK_S / rtu.char_time_s(self.baud)))
        frame = answer.frame
        for k in range(0, len(frame), per_chunk):
            chunk = frame[k : k + per_chunk]
            # a piece may be handed over once its last byte would have crossed the wire
            self.out.append((start + rtu.wire_time_s(k + len(chunk), self.baud), chunk))
        self.line_free_at = start + rtu.wire_time_s(len(frame), self.baud)

    def write_due(self, now: float) -> None:
        while self.out and self.out[0][0] <= now:
            due, data = self.out.popleft()
            try:
                n = os.write(self.master, data)
                self.last_write = now
                self.unread_checked = False
                late = time.perf_counter() - due
                self.writes += 1
                self.late_sum += late
                self.late_max = max(self.late_max, late)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                log.warning("pty master write failed: %s", exc)
                n = 0
            if n < len(data):
                # nobody reads the slave end and its queue is full: the answer is lost
                self.dropped_writes += 1
                if self.dropped_writes in (1, 10, 100) or self.dropped_writes % 1000 == 0:
                    log.warning("pty queue full: %d answers dropped", self.dropped_writes)

    def drop_unread(self, now: float) -> None:
        """Drop answers nobody read within :data:`UNREAD_DROP_S` of their writing (see
        there). A master that is open reads or flushes them well before."""
        if self.unread_checked or self.slave is None or now - self.last_write < UNREAD_DROP_S:
            return
        self.unread_checked = True
        try:
            raw = fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4)
            waiting = struct.unpack("i", raw)[0]
            if waiting:
                termios.tcflush(self.slave, termios.TCIFLUSH)
        except OSError as exc:
            log.debug("pty queue: %s", exc)
            return
        if waiting:
            self.unread_dropped += waiting
            log.info("%d bytes of answers nobody read dropped (their master went away)", waiting)

    # --- the console ------------------------------------------------------------

    def on_stdin_readable(self, now: float) -> None:
        assert self.stdin_fd is not None
        try:
            data = os.read(self.stdin_fd, 4096)
        except OSError as exc:
            log.warning("stdin unreadable (%s); running on without a console", exc)
            self.stdin_fd = None
            return
        if not data:
            log.info("stdin closed; running on without a console")
            self.stdin_fd = None
            if self.stdin_buf.strip():
                self.handle_line(self.stdin_buf.decode("utf-8", "replace"), now)
            self.stdin_buf = b""
            return
        self.stdin_buf += data
        *lines, self.stdin_buf = self.stdin_buf.split(b"\n")
        if len(self.stdin_buf) > MAX_LINE:
            self.console.say(f"error: line longer than {MAX_LINE} characters ignored")
            self.stdin_buf = b""
        for raw in lines:
            self.handle_line(raw.decode("utf-8", "replace"), now)

    def handle_line(self, line: str, now: float) -> None:
        try:
            command = parse_command(line)
            if command is None:
                return
            answer = self.model.apply(command, now)
        except CommandError as exc:
            log.info("console: %r refused: %s", line.strip()[:80], exc)
            self.console.say(f"error: {exc}")
            return
        if isinstance(command, SetSpace) and self.scenario is not None:
            self.scenario.set(command.space, command.occupied)
        log.info("console: %s -> %s", line.strip()[:80], answer[:120])
        self.console.say(answer)

    # --- the loop ---------------------------------------------------------------

    def run(self, t0: float) -> None:
        next_step = t0 + SCENARIO_PERIOD_S
        next_report = t0 + REPORT_PERIOD_S
        while self.running:
            now = time.perf_counter()
            self.write_due(now)
            self.drop_unread(now)
            if self.scenario is not None and now >= next_step:
                for space, occupied in self.scenario.step(now - t0):
                    self.model.set_present(space, occupied, now)
                next_step = now + SCENARIO_PERIOD_S
            if now >= next_report:
                self.report()
                next_report = now + REPORT_PERIOD_S
            # capped so a signal's stop flag is seen soon (select restarts after a handler)
            deadline = min(next_step if self.scenario else next_report, next_report, now + 0.25)
            if self.out:
                due = self.out[0][0]
                if due - now < SPIN_S:
                    while time.perf_counter() < due:
                        pass
                    continue
                deadline = min(deadline, due - SPIN_S)
            if now < self.master_ok_at:
                deadline = min(deadline, self.master_ok_at)
            fds = [] if now < self.master_ok_at else [self.master]
            if self.stdin_fd is not None:
                fds.append(self.stdin_fd)
            try:
                readable, _, _ = select.select(fds, [], [], max(0.0, deadline - now))
            except InterruptedError:
                continue
            now = time.perf_counter()
            if self.master in readable:
                self.on_master_readable(now)
            if self.stdin_fd is not None and self.stdin_fd in readable:
                self.on_stdin_readable(now)

    def report(self) -> None:
        stats = self.model.decoder.stats
        extra = ""
        if self.scenario is not None:
            extra = f", occupancy {self.scenario.occupancy():.2f}"
            minute = getattr(self.scenario, "minute_of_day", None)
            if minute is not None:
                m = int(minute())
                extra += f", simulated time {m // 60:02d}:{m % 60:02d}"
        if self.writes:
            extra += (
                f", {self.writes} writes late by {1e3 * self.late_sum / self.writes:.3f} ms"
                f" on average, {1e3 * self.late_max:.3f} ms at most"
            )
            self.writes, self.late_sum, self.late_max = 0, 0.0, 0.0
        log.info(
            "bus %s: %d frames, %d bad CRC, %d garbage bytes%s",
            self.model.bus_id,
            stats.frames,
            stats.crc_errors,
            stats.garbage_bytes,
            extra,
        )


def _make_link(link: Path, device: str) -> None:
    """Point ``link`` at the pty, replacing a stale symlink but never a real file."""
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; refusing to replace it")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(device, tmp)
    os.replace(tmp, link)


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
        bus = site.bus(args.bus)
        first_minute = start_minute(args.start, site.timezone)
    except (SiteError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    baud = args.baud or bus.baud
    if baud <= 0:
        print(f"error: --baud must be positive, not {baud}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = SimulatedBus(bus, t0, args.seed)
    spaces = list(model.where)
    try:
        scenario = make_scenario(
            args.scenario,
            spaces,
            seed=args.seed,
            start_minute=first_minute,
            speed=args.speed,
            initial_occupancy=args.initial_occupancy,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.settle(scenario.initial())

    master, slave = os.openpty()
    tty.setraw(slave)  # bytes pass unchanged: no echo, no CR/LF mapping, no signals
    os.set_blocking(master, False)
    device = os.ttyname(slave)
    link = Path(args.link)
    try:
        _make_link(link, device)
    except OSError as exc:
        print(f"error: cannot link {link} to {device}: {exc}", file=sys.stderr)
        return 2

    console = Console()
    console.say(f"pty {device} linked at {link}")
    log.info(
        "bus %s: %d nodes, %d spaces, scenario %s, speed %g, %s baud%s",
        bus.id,
        len(model.nodes),
        len(spaces),
        args.scenario,
        args.speed,
        baud,
        " with wire timing" if args.wire_timing else "",
    )
    try:
        stdin_fd: int | None = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        stdin_fd = None
    server = BusServer(
        model,
        scenario if args.scenario != "none" else None,
        master,
        baud,
        args.wire_timing,
        console,
        stdin_fd,
        slave,
    )

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run(t0)
        server.report()
    finally:
        # our own link only: another simulator may have taken the path over since
        if link.is_symlink() and os.readlink(link) == device:
            link.unlink()
        os.close(master)
        os.close(slave)  # held open until now so the master never sees a hangup
    return 0
