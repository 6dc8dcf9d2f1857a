"""Modbus RTU master over pyserial: one request, one CRC-checked answer, with retries.

Framing and CRC are ``parking.modbus_rtu``; this module only moves bytes and
keeps time. It reads exactly what the expected answer needs and waits on the
port with select rather than sleeping, so a poll cycle runs near the wire
limit. Everything that goes wrong is counted (``MasterCounters``) and turned
into a ``ModbusError``; nothing that fails the CRC or answers the wrong
request ever reaches the caller.
"""

from __future__ import annotations

import errno
import logging
import select
import termios
import time
from dataclasses import asdict, dataclass

import serial

from parking import modbus_rtu as rtu

log = logging.getLogger(__name__)

DEFAULT_TURNAROUND_S = 0.1
"""How long a node may take to start answering (Modbus masters use 100 ms..1 s)."""
MIN_GAP_S = 0.03
"""Longest silence inside one answer: USB adapters deliver in chunks (latency timer 16 ms)."""
MIN_TAIL_GAP_S = 0.002
DEFAULT_RETRIES = 2

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class ModbusError(Exception):
    """A request got no usable answer."""


class ModbusTimeout(ModbusError):
    """Nothing (valid) came back in time."""


class ModbusExceptionResponse(ModbusError):
    """The node answered with a Modbus exception code."""

    def __init__(self, address: int, function: int, code: int):
        super().__init__(f"node {address}: function {function} answered exception {code}")
        self.code = code


@dataclass
class MasterCounters:
    requests: int = 0
    answers: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    garbage_bytes: int = 0
    truncated: int = 0
    port_errors: int = 0
    echoes: int = 0  # our own requests read back (an adapter without echo suppression)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


ECHOED_FUNCTIONS = (rtu.WRITE_SINGLE_COIL, rtu.WRITE_SINGLE_REGISTER)
"""Functions whose normal answer is the request itself, byte for byte."""


def response_size(request: rtu.Request) -> int:
    """Bytes of a normal answer to ``request``."""
    if request.function in rtu.BIT_FUNCTIONS:
        return 5 + (request.count + 7) // 8
    if request.function in (rtu.READ_HOLDING_REGISTERS, rtu.READ_INPUT_REGISTERS):
        return 5 + 2 * request.count
    return 8


@dataclass(frozen=True)
class LineTiming:
    """Timeouts from the baud rate and frame sizes (Modbus over Serial Line 2.5.1.1)."""

    baud: int
    bits_per_char: int = 11
    turnaround_s: float = DEFAULT_TURNAROUND_S

    def char_s(self) -> float:
        return rtu.char_time_s(self.baud, self.bits_per_char)

    def first_byte_timeout_s(self, request_bytes: int) -> float:
        """From handing the request to the port until the answer's first byte."""
        return (
            request_bytes * self.char_s()
            + rtu.silent_interval_s(self.baud)
            + self.char_s()
            + self.turnaround_s
        )

    def gap_s(self) -> float:
        """Longest silence inside an answer that is still arriving."""
        return max(MIN_GAP_S, 4 * self.char_s())

    def tail_gap_s(self) -> float:
        """Silence after a whole answer's worth of bytes that framed nothing: the line is done.

        Noise damages a frame without making it longer, so waiting the full gap
        for bytes that will not come would only slow every noisy poll.
        """
        return max(MIN_TAIL_GAP_S, 2 * self.char_s())

    def answer_s(self, request: rtu.Request) -> float:
        return response_size(request) * self.char_s()


class ModbusMaster:
    """The master end of one RS-485 bus (one serial port)."""

    def __init__(
        self,
        port: str,
        baud: int = 9600,
        parity: str = "E",
        *,
        retries: int = DEFAULT_RETRIES,
        turnaround_s: float = DEFAULT_TURNAROUND_S,
    ):
        if parity not in _PARITY:
            raise ValueError(f"parity must be one of {sorted(_PARITY)}, not {parity!r}")
        self.port_name = port
        self.baud = baud
        self.parity = parity
        self.retries = retries
        # 8E1/8O1 and 8N2 are both 11 bits a character; 8N1 is 10
        self.timing = LineTiming(baud, 11 if parity != "N" else 10, turnaround_s)
        self.counters = MasterCounters()
        self._serial: serial.Serial | None = None
        self._parity_warned = False
        # Modbus over Serial Line 2.5.1.1: frames are separated by at least 3.5 characters
        # of silence, so a node can tell where our next request starts
        self._silence_s = rtu.silent_interval_s(baud)
        self._echo_said = False  # the adapter's echo is said once
        self._quiet_until = 0.0

    # --- the port ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port (raises serial.SerialException when it is not there or unusable)."""
        self.close()
        try:
            self._serial = self._open(self.parity)
        except termios.error as exc:
            # A pseudo-terminal has no wire and Linux refuses PARENB on it (EINVAL); bytes
            # pass unchanged either way, so use it without parity. A real adapter never
            # gets here: it takes 8E1.
            if exc.args[0] != errno.EINVAL or self.parity == "N":
                raise serial.SerialException(f"{self.port_name}: {exc}") from exc
            if not self._parity_warned:
                self._parity_warned = True
                log.warning(
                    "%s refuses parity %s (a pseudo-terminal?); using it without parity",
                    self.port_name,
                    self.parity,
                )
            try:
                self._serial = self._open("N")
            except termios.error as exc2:
                raise serial.SerialException(f"{self.port_name}: {exc2}") from exc2

    def _open(self, parity: str) -> serial.Serial:
        return serial.Serial(
            self.port_name,
            baudrate=self.baud,
            bytesize=serial.EIGHTBITS,
            parity=_PARITY[parity],
            stopbits=serial.STOPBITS_TWO if parity == "N" else serial.STOPBITS_ONE,
            timeout=0,  # reads never block: we wait with select and our own deadlines
            write_timeout=1.0,
            exclusive=True,
        )

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (OSError, serial.SerialException) as exc:
                log.debug("closing %s: %s", self.port_name, exc)
            self._serial = None

    # --- requests ------------------------------------------------------------

    def read_discrete_inputs(self, address: int, start: int, count: int, **kw: int) -> list[bool]:
        resp = self.execute(rtu.Request(address, rtu.READ_DISCRETE_INPUTS, start, count), **kw)
        return list(resp.bits)

    def read_input_registers(self, address: int, start: int, count: int, **kw: int) -> list[int]:
        resp = self.execute(rtu.Request(address, rtu.READ_INPUT_REGISTERS, start, count), **kw)
        return list(resp.registers)

    def execute(self, request: rtu.Request, retries: int | None = None) -> rtu.Response:
        """Send ``request`` and return its CRC-checked answer, retrying on timeouts and noise.

        Raises ModbusExceptionResponse (not retried: the node answered),
        ModbusTimeout after the last retry, serial.SerialException when the
        port itself fails (the caller reopens it).
        """
        attempts = 1 + (self.retries if retries is None else retries)
        frame = request.encode()
        for attempt in range(attempts):
            if attempt:
                self.counters.retries += 1
            self.counters.requests += 1
            resp = self._transact(request, frame)
            if resp is None:
                continue
            self.counters.answers += 1
            if resp.exception is not None:
                self.counters.exceptions += 1
                raise ModbusExceptionResponse(request.address, request.function, resp.exception)
            return resp
        raise ModbusTimeout(
            f"node {request.address}: no valid answer to function {request.function} "
            f"after {attempts} attempt(s)"
        )

    def drain(self, quiet_s: float, limit_s: float = 3.0) -> int:
        """Read and drop whatever arrives until the line has been quiet for ``quiet_s`` (at
        most ``limit_s``); returns the bytes dropped. After a timeout, a node that answers
        late puts its answers on the line during the next requests, and an RTU frame has no
        transaction id: a late status answer reads as the raw readings asked next."""
        port = self._serial
        if port is None:
            raise serial.SerialException(f"{self.port_name} is not open")
        dropped = 0
        end = time.monotonic() + limit_s
        try:
            while (wait := min(quiet_s, end - time.monotonic())) > 0:
                ready, _, _ = select.select([port.fileno()], [], [], wait)
                if not ready:
                    break
                chunk = port.read(port.in_waiting or 1)
                if not chunk:
                    raise serial.SerialException("port readable but no data (device gone?)")
                dropped += len(chunk)
        except OSError as exc:
            self.counters.port_errors += 1
            raise serial.SerialException(f"{self.port_name}: {exc}") from exc
        self.counters.garbage_bytes += dropped
        return dropped

    def _transact(self, request: rtu.Request, frame: bytes) -> rtu.Response | None:
        port = self._serial
        if port is None:
            raise serial.SerialException(f"{self.port_name} is not open")
        try:
            # a late answer to an earlier request must not be taken for this one
            waiting = port.in_waiting
            if waiting:
                self.counters.garbage_bytes += waiting
            port.reset_input_buffer()
            quiet = self._quiet_until - time.monotonic()
            if quiet > 0:
                time.sleep(quiet)
            port.write(frame)
            try:
                return self._read_answer(port, request, frame)
            finally:
                self._quiet_until = time.monotonic() + self._silence_s
        except (OSError, serial.SerialException) as exc:
            self.counters.port_errors += 1
            raise serial.SerialException(f"{self.port_name}: {exc}") from exc

    def _read_answer(
        self, port: serial.Serial, request: rtu.Request, frame: bytes
    ) -> rtu.Response | None:
        timing = self.timing
        t0 = time.monotonic()
        first_deadline = t0 + timing.first_byte_timeout_s(len(frame))
        deadline = first_deadline + timing.answer_s(request) + timing.gap_s()
        gap = timing.gap_s()
        fd = port.fileno()
        tail_gap = timing.tail_gap_s()
        buf = bytearray()
        received = 0
        damaged = False  # a frame of the right length with a bad CRC was seen
        expected = response_size(request)
        # an RS-485 adapter without echo suppression reads our request back before the
        # answer; a write-single's answer is the request itself, so it is never dropped
        echo = frame if request.function not in ECHOED_FUNCTIONS else b""
        while True:
            now = time.monotonic()
            # before the first byte: the node's turnaround; after it: the inter-byte gap
            if not received:
                wait = first_deadline - now
            else:
                wait = min(deadline - now, gap if received < expected else tail_gap)
            if wait <= 0:
                ready = []
            else:
                ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                if received:
                    # bytes that frame nothing; "truncated" only for an answer that stopped
                    # short, not for a whole one with a bad CRC (counted as such already)
                    if len(buf) < expected and not damaged:
                        self.counters.truncated += 1
                    self.counters.garbage_bytes += len(buf)
                else:
                    self.counters.timeouts += 1
                return None
            need = self._still_needed(buf, request, expected)
            chunk = port.read(max(need, port.in_waiting or 1))
            if not chunk:
                raise serial.SerialException("port readable but no data (device gone?)")
            buf += chunk
            received += len(chunk)
            if echo:
                if len(buf) < len(echo) and echo.startswith(buf):
                    continue  # our request coming back, or an answer starting alike
                if buf.startswith(echo):
                    del buf[: len(echo)]
                    received = len(buf)
                    self._echoed()
                echo = b""
                if not buf:
                    continue
            consumed, resp, crc_errors = rtu.decode_response(buf, request)
            self.counters.crc_errors += crc_errors
            damaged = damaged or crc_errors > 0
            if resp is not None:
                frame_len = (
                    5 if resp.exception is not None else expected
                )  # what decode_response took as the answer
                self.counters.garbage_bytes += consumed - frame_len
                return resp
            if consumed:
                self.counters.garbage_bytes += consumed
                del buf[:consumed]

    def _echoed(self) -> None:
        self.counters.echoes += 1
        if not self._echo_said:
            self._echo_said = True
            log.warning(
                "%s echoes the requests it sends (an RS-485 adapter without echo "
                "suppression, or its local echo switched on): each echo is dropped "
                "and counted (echoes)",
                self.port_name,
            )

    @staticmethod
    def _still_needed(buf: bytearray, request: rtu.Request, expected: int) -> int:
        n = rtu.response_length(buf, request.function) if len(buf) >= 3 else None
        return max(1, (n or expected) - len(buf))
