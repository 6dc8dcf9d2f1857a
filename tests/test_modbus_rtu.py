"""Modbus RTU framing as byte tables: garbage in front, bad CRC then good frame, split frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parking import modbus_rtu as rtu

# Read discrete inputs 0..15 from slave 1, a frame from the spec's examples family.
READ_DI = bytes.fromhex("01 02 00 00 00 10 79 C6")
READ_IR = rtu.Request(1, rtu.READ_INPUT_REGISTERS, 0, 2).encode()


def test_crc_known_vector():
    # Modbus over Serial Line, annex B: 02 07 -> CRC 0x1241, sent 41 12
    assert rtu.with_crc(bytes([0x02, 0x07])) == bytes([0x02, 0x07, 0x41, 0x12])
    assert rtu.Request(1, rtu.READ_DISCRETE_INPUTS, 0, 16).encode() == READ_DI


@pytest.mark.parametrize(
    ("chunks", "n_frames", "crc_errors"),
    [
        ([READ_DI], 1, 0),
        ([b"\x00\xff\x13" + READ_DI], 1, 0),  # garbage in front
        ([READ_DI[:3], READ_DI[3:]], 1, 0),  # split in two
        ([READ_DI[:-1] + b"\x00" + READ_DI], 1, 1),  # bad CRC then good frame
        ([READ_DI + READ_IR], 2, 0),  # two back to back
        ([READ_DI[:5]], 0, 0),  # truncated: waits
        ([bytes(range(256)) * 2 + READ_DI], 1, None),  # long garbage
    ],
)
def test_request_decoder_byte_tables(chunks, n_frames, crc_errors):
    dec = rtu.RequestDecoder()
    frames = []
    for c in chunks:
        frames += dec.feed(c)
    assert len(frames) == n_frames
    if n_frames:
        assert frames[0][1] == rtu.Request(1, rtu.READ_DISCRETE_INPUTS, 0, 16)
    if crc_errors is not None:
        assert dec.stats.crc_errors >= crc_errors  # garbage with a plausible header counts too


def test_response_roundtrip_and_hunting():
    req = rtu.Request(3, rtu.READ_DISCRETE_INPUTS, 0, 12)
    bits = [True, False, True] + [False] * 8 + [True]
    good = rtu.encode_bits_response(3, 2, bits)
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    for buf, expect_crc in [(good, 0), (b"\x55\x03" + good, 0), (bad + good, 1)]:
        consumed, resp, errs = rtu.decode_response(buf, req)
        assert resp is not None and resp.bits == tuple(bits)
        assert consumed == len(buf) and errs == expect_crc
    consumed, resp, _ = rtu.decode_response(good[:4], req)
    assert resp is None and consumed == 0
    # another slave's answer is not ours
    other = rtu.encode_bits_response(4, 2, bits)
    assert rtu.decode_response(other, req)[1] is None
    exc = rtu.encode_exception(3, 2, rtu.ILLEGAL_DATA_ADDRESS)
    assert rtu.decode_response(exc, req)[1].exception == rtu.ILLEGAL_DATA_ADDRESS


def test_registers_and_writes():
    req = rtu.Request(9, rtu.READ_INPUT_REGISTERS, 100, 3)
    resp = rtu.decode_response(rtu.encode_registers_response(9, 4, [1, 65535, 300]), req)[1]
    assert resp.registers == (1, 65535, 300)
    w = rtu.Request(9, rtu.WRITE_MULTIPLE_REGISTERS, 100, 2, (1, 2))
    ((frame, parsed),) = rtu.RequestDecoder().feed(w.encode())
    assert parsed == w
    assert rtu.decode_response(rtu.encode_write_response(w), w)[1] is not None


def test_timing():
    assert rtu.char_time_s(9600) == pytest.approx(11 / 9600)
    assert rtu.silent_interval_s(9600) == pytest.approx(3.5 * 11 / 9600)
    assert rtu.silent_interval_s(115200) == 0.00175


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_noise_never_yields_a_false_frame(pre, post):
    """Random noise around one frame: the real frame is found; noise alone only
    yields frames whose CRC is valid (probability 2^-16 per candidate)."""
    dec = rtu.RequestDecoder()
    got = dec.feed(pre + READ_DI + post)
    assert all(rtu.crc_ok(f) for f, _ in got)
    assert any(f == READ_DI for f, _ in got) or len(pre) > 0
