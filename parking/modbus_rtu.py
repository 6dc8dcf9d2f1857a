"""Modbus RTU framing: CRC-16, request/response encoding, and stream decoders.

Pure functions over bytes; the serial agent (master) and the simulated node
controllers (slave) put them on a pyserial port. The decoders hunt for the
next valid frame after garbage (a noisy RS-485 line), bound their buffer, and
count what they drop. Framing is by length and CRC rather than by the 3.5
character silence, which a USB adapter or a pty does not preserve.

References: Modbus Application Protocol v1.1b3; Modbus over Serial Line v1.02.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

READ_COILS = 1
READ_DISCRETE_INPUTS = 2
READ_HOLDING_REGISTERS = 3
READ_INPUT_REGISTERS = 4
WRITE_SINGLE_COIL = 5
WRITE_SINGLE_REGISTER = 6
WRITE_MULTIPLE_COILS = 15
WRITE_MULTIPLE_REGISTERS = 16

MAX_SLAVE_ADDRESS = 247
"""Slave addresses are 1..247 (0 is broadcast, 248..255 reserved)."""

READ_FUNCTIONS = (READ_COILS, READ_DISCRETE_INPUTS, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS)
BIT_FUNCTIONS = (READ_COILS, READ_DISCRETE_INPUTS)

ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
SERVER_DEVICE_FAILURE = 4

MAX_FRAME = 256  # an RTU ADU is at most 256 bytes
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125

_CRC_TABLE: list[int] = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0xA001 if _crc & 1 else _crc >> 1
    _CRC_TABLE.append(_crc)


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """Append the CRC, low byte first as RTU sends it."""
    return body + struct.pack("<H", crc16(body))


def crc_ok(frame: bytes | bytearray | memoryview) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == (frame[-2] | (frame[-1] << 8))


# --- timing (Modbus over Serial Line, 2.5.1.1) ------------------------------


def char_time_s(baud: int, bits_per_char: int = 11) -> float:
    """Time of one character: 1 start + 8 data + parity + 1 stop = 11 bits (8E1, or 8N2)."""
    return bits_per_char / baud


def silent_interval_s(baud: int) -> float:
    """The 3.5-character inter-frame silence; fixed at 1.75 ms above 19200 baud."""
    return 0.00175 if baud > 19200 else 3.5 * char_time_s(baud)


def wire_time_s(n_bytes: int, baud: int) -> float:
    """Time to send n bytes back to back."""
    return n_bytes * char_time_s(baud)


# --- frames ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A master's request. ``values`` only for writes."""

    address: int
    function: int
    start: int = 0
    count: int = 0
    values: tuple[int, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        f = self.function
        if f in READ_FUNCTIONS:
            body = struct.pack(">BBHH", self.address, f, self.start, self.count)
        elif f == WRITE_SINGLE_REGISTER:
            body = struct.pack(">BBHH", self.address, f, self.start, self.values[0])
        elif f == WRITE_SINGLE_COIL:
            body = struct.pack(
                ">BBHH", self.address, f, self.start, 0xFF00 if self.values[0] else 0
            )
        elif f == WRITE_MULTIPLE_REGISTERS:
            n = len(self.values)
            body = struct.pack(f">BBHHB{n}H", self.address, f, self.start, n, 2 * n, *self.values)
        elif f == WRITE_MULTIPLE_COILS:
            packed = pack_bits(self.values)
            body = (
                struct.pack(">BBHHB", self.address, f, self.start, len(self.values), len(packed))
                + packed
            )
        else:
            raise ValueError(f"function {f} is not supported")
        return with_crc(body)


@dataclass(frozen=True)
class Response:
    """A slave's answer: bits or registers for reads, echo for writes, or an exception code."""

    address: int
    function: int
    bits: tuple[bool, ...] = ()
    registers: tuple[int, ...] = ()
    exception: int | None = None


def pack_bits(bits: tuple[int, ...] | list[int] | list[bool] | tuple[bool, ...]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> tuple[bool, ...]:
    return tuple(bool(data[i // 8] >> (i % 8) & 1) for i in range(count))


def encode_bits_response(address: int, function: int, bits: list[bool] | tuple[bool, ...]) -> bytes:
    packed = pack_bits(bits)
    return with_crc(bytes([address, function, len(packed)]) + packed)


def encode_registers_response(
    address: int, function: int, registers: list[int] | tuple[int, ...]
) -> bytes:
    n = len(registers)
    return with_crc(
        struct.pack(f">BBB{n}H", address, function, 2 * n, *(r & 0xFFFF for r in registers))
    )


def encode_write_response(request: Request) -> bytes:
    """Writes answer with the request's first six bytes (single) or address and count (multiple)."""
    if request.function in (WRITE_SINGLE_REGISTER, WRITE_SINGLE_COIL):
        return request.encode()
    return with_crc(
        struct.pack(">BBHH", request.address, request.function, request.start, len(request.values))
    )


def encode_exception(address: int, function: int, code: int) -> bytes:
    return with_crc(bytes([address, function | 0x80, code]))


def request_length(buf: bytes | bytearray) -> int | None:
    """Length of the request at the start of buf; None: not yet knowable; 0: a function we cannot frame."""
    if len(buf) < 2:
        return None
    f = buf[1]
    if f in (1, 2, 3, 4, 5, 6):
        return 8
    if f in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    # framed so they can be answered with ILLEGAL_FUNCTION: diagnostics, report slave id, MEI
    return {8: 8, 17: 4, 43: 7}.get(f, 0)


def response_length(buf: bytes | bytearray, function: int) -> int | None:
    """Length of a response to ``function`` at the start of buf, None if not yet knowable."""
    if len(buf) < 3:
        return None
    if buf[1] == function | 0x80:
        return 5
    if function in READ_FUNCTIONS:
        return 5 + buf[2]
    return 8


def parse_request(frame: bytes) -> Request | None:
    """Decode a CRC-checked request frame; None when its body is malformed."""
    address, f = frame[0], frame[1]
    if f in READ_FUNCTIONS and len(frame) == 8:
        start, count = struct.unpack(">HH", frame[2:6])
        return Request(address, f, start, count)
    if f == WRITE_SINGLE_REGISTER and len(frame) == 8:
        start, value = struct.unpack(">HH", frame[2:6])
        return Request(address, f, start, 1, (value,))
    if f == WRITE_SINGLE_COIL and len(frame) == 8:
        start, value = struct.unpack(">HH", frame[2:6])
        return Request(address, f, start, 1, (1 if value == 0xFF00 else 0,))
    if f == WRITE_MULTIPLE_REGISTERS and len(frame) >= 9:
        start, count, nbytes = struct.unpack(">HHB", frame[2:7])
        if nbytes != 2 * count or len(frame) != 9 + nbytes:
            return None
        return Request(address, f, start, count, struct.unpack(f">{count}H", frame[7 : 7 + nbytes]))
    if f == WRITE_MULTIPLE_COILS and len(frame) >= 9:
        start, count, nbytes = struct.unpack(">HHB", frame[2:7])
        if nbytes != (count + 7) // 8 or len(frame) != 9 + nbytes:
            return None
        return Request(
            address,
            f,
            start,
            count,
            tuple(int(b) for b in unpack_bits(frame[7 : 7 + nbytes], count)),
        )
    return None


def parse_response(frame: bytes, request: Request) -> Response | None:
    """Decode a CRC-checked response to ``request``; None when it does not answer it."""
    address, f = frame[0], frame[1]
    if address != request.address:
        return None
    if f == request.function | 0x80 and len(frame) == 5:
        return Response(address, request.function, exception=frame[2])
    if f != request.function:
        return None
    if f in BIT_FUNCTIONS:
        if frame[2] != (request.count + 7) // 8:
            return None
        return Response(address, f, bits=unpack_bits(frame[3:-2], request.count))
    if f in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        if frame[2] != 2 * request.count:
            return None
        return Response(address, f, registers=struct.unpack(f">{request.count}H", frame[3:-2]))
    if len(frame) == 8:
        return Response(address, f)
    return None


@dataclass
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0
    garbage_bytes: int = 0
    overflows: int = 0


class RequestDecoder:
    """Slave side: feed bytes as they arrive, take complete CRC-valid requests out.

    A bad CRC drops one byte and hunts again, so a good frame right after
    garbage or a damaged frame is still found.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.stats = DecoderStats()

    def feed(self, data: bytes) -> list[tuple[bytes, Request | None]]:
        """Returns (raw frame, parsed request or None if the function is unsupported)."""
        self.buf += data
        if len(self.buf) > 4 * MAX_FRAME:
            drop = len(self.buf) - MAX_FRAME
            del self.buf[:drop]
            self.stats.overflows += 1
            self.stats.garbage_bytes += drop
        out: list[tuple[bytes, Request | None]] = []
        while len(self.buf) >= 4:
            if self.buf[0] > MAX_SLAVE_ADDRESS:  # not a slave address (0 is broadcast)
                self._drop()
                continue
            n = request_length(self.buf)
            if n is None:
                break
            if n == 0:  # a function we cannot frame: noise, drop a byte
                self._drop()
                continue
            if n > MAX_FRAME:
                self._drop()
                continue
            if len(self.buf) < n:
                break
            frame = bytes(self.buf[:n])
            if not crc_ok(frame):
                self.stats.crc_errors += 1
                self._drop()
                continue
            del self.buf[:n]
            self.stats.frames += 1
            out.append((frame, parse_request(frame)))
        return out

    def _drop(self) -> None:
        del self.buf[:1]
        self.stats.garbage_bytes += 1

    def line_went_silent(self) -> None:
        """The line was silent for longer than a frame gap with bytes still buffered: in
        RTU a frame never spans a silence, so they frame nothing (noise that looked like the
        start of a long frame must not swallow the requests after it)."""
        if self.buf:
            self.stats.garbage_bytes += len(self.buf)
            self.buf.clear()


def decode_response(buf: bytes | bytearray, request: Request) -> tuple[int, Response | None, int]:
    """Master side: look for the answer to ``request`` in buf.

    Returns (bytes consumed, response or None, CRC errors seen). Bytes before
    a valid answer (garbage, another slave's frame, a damaged frame) are
    consumed; an incomplete candidate at the end is left for more data.
    """
    pos, crc_errors = 0, 0
    want = (request.address, request.function, request.function | 0x80)
    while len(buf) - pos >= 5:
        if buf[pos] != want[0] or buf[pos + 1] not in want[1:]:
            pos += 1
            continue
        n = response_length(buf[pos:], request.function)
        if n is None or n > MAX_FRAME:
            pos += 1
            continue
        if len(buf) - pos < n:
            break
        frame = bytes(buf[pos : pos + n])
        if not crc_ok(frame):
            crc_errors += 1
            pos += 1
            continue
        resp = parse_response(frame, request)
        if resp is None:
            pos += 1
            continue
        return pos + n, resp, crc_errors
    return pos, None, crc_errors
