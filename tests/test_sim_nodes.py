"""The simulated node controllers as byte tables through parking.modbus_rtu; the console parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim import commands as cmd
from firmware_sim.nodes import SimulatedBus
from parking import modbus_rtu as rtu
from parking import registers as reg
from parking.site import Bus, NodeController

T0 = 1000.0
BUS = Bus(
    "bus-t",
    9600,
    "E",
    15.0,
    (
        NodeController(1, 4, ("S1", "S2", "S3", None)),
        NodeController(2, 2, ("T1", "T2")),
    ),
)


@pytest.fixture
def bus() -> SimulatedBus:
    b = SimulatedBus(BUS, T0, seed=3)
    b.settle({"S1": True, "S2": False, "S3": True, "T1": False, "T2": True})
    return b


def ask(bus: SimulatedBus, request: rtu.Request | bytes, now: float = T0 + 1) -> bytes | None:
    """Send one request frame, return the single answer's bytes (None: no answer)."""
    frame = request if isinstance(request, bytes) else request.encode()
    answers = bus.receive(frame, now)
    assert len(answers) <= 1
    return answers[0].frame if answers else None


def read(bus, address, function, start, count, now=T0 + 1) -> rtu.Response:
    req = rtu.Request(address, function, start, count)
    raw = ask(bus, req, now)
    assert raw is not None
    consumed, resp, errors = rtu.decode_response(raw, req)
    assert resp is not None and consumed == len(raw) and errors == 0
    return resp


def exception_of(bus, request, now=T0 + 1) -> int | None:
    raw = ask(bus, request, now)
    assert raw is not None and rtu.crc_ok(raw) and raw[1] & 0x80
    return raw[2]


# --- the register map as bytes --------------------------------------------------


def test_discrete_inputs_are_the_occupied_bits_as_bytes(bus):
    # S1 on, S2 off, S3 on, detector 3 (no space) off -> 0b0101
    assert ask(bus, bytes.fromhex("01 02 00 00 00 04 79 C9")) == rtu.with_crc(
        bytes.fromhex("01 02 01 05")
    )
    assert read(bus, 2, rtu.READ_DISCRETE_INPUTS, 0, 2).bits == (False, True)
    assert read(bus, 1, rtu.READ_DISCRETE_INPUTS, 2, 2).bits == (True, False)


def test_node_info_registers(bus):
    now = T0 + 70_000.5  # uptime 70000 s = 0x0001_1170
    regs = read(bus, 1, rtu.READ_INPUT_REGISTERS, 0, reg.NODE_INFO_COUNT, now).registers
    assert regs[reg.IR_MODEL] == reg.MODEL_CODE
    assert regs[reg.IR_FIRMWARE] == reg.FIRMWARE_VERSION
    assert regs[reg.IR_DETECTOR_COUNT] == 4
    assert (regs[reg.IR_UPTIME_HI], regs[reg.IR_UPTIME_LO]) == (1, 70_000 - 65_536)
    assert regs[reg.IR_CRC_ERRORS] == 0 and regs[reg.IR_BUS_ERRORS] == 0
    assert regs[reg.IR_REQUESTS] == 1  # this very request
    again = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_REQUESTS, 1, now).registers
    assert again == (2,)


def test_detector_registers_agree_with_the_threshold(bus):
    status = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_STATUS, 4).registers
    assert status == (reg.DetectorStatus.OK,) * 4
    for _ in range(20):  # noisy, but always on the right side of the threshold
        raw = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_RAW, 4).registers
        assert raw[0] > reg.DEFAULT_THRESHOLD and raw[2] > reg.DEFAULT_THRESHOLD
        assert raw[1] < reg.DEFAULT_THRESHOLD and raw[3] < reg.DEFAULT_THRESHOLD
    battery = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_BATTERY, 4).registers
    assert all(0 <= b <= 100 or b == reg.BATTERY_WIRED for b in battery)


def test_holding_registers_read_and_write(bus):
    regs = read(bus, 1, rtu.READ_HOLDING_REGISTERS, 0, reg.SETTINGS_COUNT).registers
    assert regs == (reg.DEFAULT_THRESHOLD, reg.DEFAULT_NODE_DEBOUNCE_MS)
    single = rtu.Request(1, rtu.WRITE_SINGLE_REGISTER, reg.HR_DEBOUNCE_MS, 1, (150,))
    assert ask(bus, single) == single.encode()  # function 06 echoes the request
    many = rtu.Request(1, rtu.WRITE_MULTIPLE_REGISTERS, reg.HR_INDICATOR, 2, (1, 2))
    assert ask(bus, many) == rtu.with_crc(bytes.fromhex("01 10 00 64 00 02"))
    assert read(bus, 1, rtu.READ_HOLDING_REGISTERS, 0, 2).registers == (400, 150)
    assert read(bus, 1, rtu.READ_HOLDING_REGISTERS, reg.HR_INDICATOR, 4).registers == (1, 2, 0, 0)
    # node 2 untouched
    assert read(bus, 2, rtu.READ_HOLDING_REGISTERS, 1, 1).registers == (300,)


def test_a_bad_write_changes_nothing(bus):
    # the second value is no indicator colour: the whole write is refused
    bad = rtu.Request(1, rtu.WRITE_MULTIPLE_REGISTERS, reg.HR_INDICATOR, 2, (1, 99))
    assert exception_of(bus, bad) == rtu.ILLEGAL_DATA_VALUE
    past = rtu.Request(1, rtu.WRITE_MULTIPLE_REGISTERS, reg.HR_INDICATOR + 3, 2, (1, 1))
    assert exception_of(bus, past) == rtu.ILLEGAL_DATA_ADDRESS
    gap = rtu.Request(1, rtu.WRITE_SINGLE_REGISTER, 2, 1, (5,))
    assert exception_of(bus, gap) == rtu.ILLEGAL_DATA_ADDRESS
    assert read(bus, 1, rtu.READ_HOLDING_REGISTERS, reg.HR_INDICATOR, 4).registers == (0,) * 4


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (rtu.Request(1, rtu.READ_DISCRETE_INPUTS, 3, 2), rtu.ILLEGAL_DATA_ADDRESS),  # past N
        (rtu.Request(1, rtu.READ_DISCRETE_INPUTS, 0, 0), rtu.ILLEGAL_DATA_VALUE),
        (rtu.Request(1, rtu.READ_INPUT_REGISTERS, 0, 9), rtu.ILLEGAL_DATA_ADDRESS),  # 8 unmapped
        (rtu.Request(1, rtu.READ_INPUT_REGISTERS, 104, 1), rtu.ILLEGAL_DATA_ADDRESS),
        (rtu.Request(1, rtu.READ_INPUT_REGISTERS, 0, 126), rtu.ILLEGAL_DATA_VALUE),
        (rtu.Request(1, rtu.READ_HOLDING_REGISTERS, 2, 1), rtu.ILLEGAL_DATA_ADDRESS),
        (rtu.Request(1, rtu.READ_COILS, 0, 1), rtu.ILLEGAL_FUNCTION),
        (rtu.Request(1, rtu.WRITE_SINGLE_COIL, 0, 1, (1,)), rtu.ILLEGAL_FUNCTION),
        (rtu.with_crc(bytes([1, 17])), rtu.ILLEGAL_FUNCTION),  # report slave id
    ],
)
def test_exceptions(bus, request_, code):
    assert exception_of(bus, request_) == code


def test_only_nodes_on_the_bus_answer_and_broadcast_writes_are_silent(bus):
    assert ask(bus, rtu.Request(9, rtu.READ_DISCRETE_INPUTS, 0, 1)) is None
    broadcast = rtu.Request(0, rtu.WRITE_SINGLE_REGISTER, reg.HR_THRESHOLD, 1, (500,))
    assert ask(bus, broadcast) is None
    for address in (1, 2):
        assert read(bus, address, rtu.READ_HOLDING_REGISTERS, 0, 1).registers == (500,)


def test_bad_crc_is_counted_by_its_node_and_the_next_frame_answered(bus):
    good = rtu.Request(1, rtu.READ_INPUT_REGISTERS, reg.IR_CRC_ERRORS, 1).encode()
    damaged = good[:-1] + bytes([good[-1] ^ 0x55])
    assert bus.receive(damaged, T0 + 1) == []
    resp = rtu.decode_response(ask(bus, good), rtu.Request(1, 4, reg.IR_CRC_ERRORS, 1))[1]
    assert resp is not None and resp.registers == (1,)
    # garbage in front and a frame split in two still get their answer
    assert bus.receive(b"\xff\xfe" + good[:3], T0 + 2) == []
    assert len(bus.receive(good[3:], T0 + 2)) == 1


# --- debounce, threshold ------------------------------------------------------------


def bit(bus: SimulatedBus, space: str, now: float) -> bool:
    node, i = bus.locate(space)
    return read(bus, node.address, rtu.READ_DISCRETE_INPUTS, i, 1, now).bits[0]


def test_node_debounce_holds_a_change_for_the_debounce_time(bus):
    bus.set_present("S2", True, T0 + 10)
    assert bit(bus, "S2", T0 + 10.29) is False
    assert bit(bus, "S2", T0 + 10.30) is True
    # a blip shorter than the debounce never shows
    bus.set_present("S2", False, T0 + 20)
    bus.set_present("S2", True, T0 + 20.2)
    assert bit(bus, "S2", T0 + 21) is True
    # debounce written to 0: changes show at once
    ask(bus, rtu.Request(1, rtu.WRITE_SINGLE_REGISTER, reg.HR_DEBOUNCE_MS, 1, (0,)), T0 + 30)
    bus.set_present("S2", False, T0 + 31)
    assert bit(bus, "S2", T0 + 31) is False


def test_a_threshold_above_the_vehicle_reading_frees_the_bay_after_debounce(bus):
    ask(bus, rtu.Request(1, rtu.WRITE_SINGLE_REGISTER, reg.HR_THRESHOLD, 1, (5000,)), T0 + 10)
    assert bit(bus, "S1", T0 + 10.1) is True
    assert bit(bus, "S1", T0 + 10.4) is False


# --- faults ----------------------------------------------------------------------


def test_stuck_detector_freezes_its_bit(bus):
    assert bus.apply(cmd.FaultSpace("S1", cmd.DetectorFault.STUCK), T0 + 1).startswith("ok")
    bus.set_present("S1", False, T0 + 2)
    assert bit(bus, "S1", T0 + 5) is True
    status = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_STATUS, 1, T0 + 5)
    assert status.registers == (reg.DetectorStatus.STUCK,)
    bus.apply(cmd.ClearSpace("S1"), T0 + 6)
    assert bit(bus, "S1", T0 + 6) is False


def test_flapping_detector_toggles_every_200_to_400_ms(bus):
    bus.apply(cmd.FaultSpace("S2", cmd.DetectorFault.FLAP), T0)
    seen = [bit(bus, "S2", T0 + k * 0.01) for k in range(1, 401)]  # 4 s at 10 ms
    toggles = sum(a != b for a, b in zip(seen, seen[1:], strict=False))
    assert 9 <= toggles <= 21
    status = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_STATUS + 1, 1, T0 + 5)
    assert status.registers == (reg.DetectorStatus.FLAPPING,)


def test_dead_detector_reads_nothing(bus):
    bus.apply(cmd.FaultSpace("S1", cmd.DetectorFault.DEAD), T0 + 1)
    assert bit(bus, "S1", T0 + 2) is False
    regs = read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_STATUS, 1, T0 + 2).registers
    assert regs == (reg.DetectorStatus.DEAD,)
    assert read(bus, 1, rtu.READ_INPUT_REGISTERS, reg.IR_DETECTOR_RAW, 1, T0 + 2).registers == (0,)


def test_node_faults(bus):
    req = rtu.Request(2, rtu.READ_DISCRETE_INPUTS, 0, 2)
    bus.apply(cmd.FaultNode(2, cmd.NodeFault.DEAD), T0)
    assert ask(bus, req) is None
    bus.apply(cmd.ClearNode(2), T0)
    bus.apply(cmd.FaultNode(2, cmd.NodeFault.SLOW, 250.0), T0)
    answers = bus.receive(req.encode(), T0 + 1)
    assert len(answers) == 1 and answers[0].delay_s == pytest.approx(0.25)
    bus.apply(cmd.FaultNode(2, cmd.NodeFault.CRC, 1.0), T0)
    for _ in range(50):
        raw = ask(bus, req)
        assert raw is not None and rtu.decode_response(raw, req)[1] is None
    bus.apply(cmd.FaultNode(2, cmd.NodeFault.CRC, 0.3), T0)
    good = sum(rtu.decode_response(ask(bus, req), req)[1] is not None for _ in range(400))
    assert 200 < good < 360
    assert bus.apply(cmd.ClearAll(), T0).startswith("ok")
    assert read(bus, 2, rtu.READ_DISCRETE_INPUTS, 0, 2).bits == (False, True)


def test_console_errors_change_nothing(bus):
    before = bus.status(None, T0 + 1)
    for bad in (
        cmd.SetSpace("Z9", True),
        cmd.FaultSpace("Z9", cmd.DetectorFault.DEAD),
        cmd.FaultNode(9, cmd.NodeFault.DEAD),
        cmd.ClearNode(9),
        cmd.Status("Z9"),
    ):
        with pytest.raises(cmd.CommandError, match="Z9|9"):
            bus.apply(bad, T0 + 1)
    assert bus.status(None, T0 + 1) == before


def test_status_lines(bus):
    assert bus.apply(cmd.Status("S1"), T0 + 1).startswith("ok S1 node=1 detector=0 bit=1 ")
    line = bus.apply(cmd.Status(), T0 + 1)
    assert line.startswith("ok bus bus-t") and "node 1: online" in line and "node 2:" in line
    assert "\n" not in line


# --- the console parser ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("set A-001 occupied", cmd.SetSpace("A-001", True)),
        ("  SET A-001 Free  ", cmd.SetSpace("A-001", False)),
        ("fault A-001 stuck", cmd.FaultSpace("A-001", cmd.DetectorFault.STUCK)),
        ("fault A-001 flap", cmd.FaultSpace("A-001", cmd.DetectorFault.FLAP)),
        ("fault A-001 dead", cmd.FaultSpace("A-001", cmd.DetectorFault.DEAD)),
        ("fault node 3 dead", cmd.FaultNode(3, cmd.NodeFault.DEAD)),
        ("fault node 3 slow 120", cmd.FaultNode(3, cmd.NodeFault.SLOW, 120.0)),
        ("fault node 247 crc 0.1", cmd.FaultNode(247, cmd.NodeFault.CRC, 0.1)),
        ("clear A-001", cmd.ClearSpace("A-001")),
        ("clear node 3", cmd.ClearNode(3)),
        ("clear all", cmd.ClearAll()),
        ("status", cmd.Status()),
        ("status A-001", cmd.Status("A-001")),
        ("help", cmd.Help()),
        ("set A-001 free # comment", cmd.SetSpace("A-001", False)),
        ("", None),
        ("   # only a comment", None),
    ],
)
def test_parse_good_lines(line, command):
    assert cmd.parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("sett A-001 occupied", "unknown command"),
        ("set A-001", "usage: set"),
        ("set A-001 parked", "occupied or free"),
        ("fault A-001 melted", "unknown detector fault"),
        ("fault A-001", "usage: fault"),
        ("fault node x dead", "number"),
        ("fault node 0 dead", "1..247"),
        ("fault node 248 dead", "1..247"),
        ("fault node 3 slow", "usage: fault node ADDR slow"),
        ("fault node 3 slow fast", "milliseconds"),
        ("fault node 3 slow -5", "0..60000"),
        ("fault node 3 crc 1.5", "0..1"),
        ("fault node 3 crc nan", "0..1"),
        ("fault node 3 hot", "unknown node fault"),
        ("fault node 3 dead now", "usage"),
        ("clear", "usage: clear"),
        ("clear node", "usage: clear node"),
        ("clear a b", "usage: clear"),
        ("status a b", "usage: status"),
    ],
)
def test_parse_bad_lines(line, reason):
    with pytest.raises(cmd.CommandError, match=reason):
        cmd.parse_command(line)


@given(st.text(max_size=80))
def test_parser_only_ever_refuses_with_a_reason(line):
    try:
        cmd.parse_command(line)
    except cmd.CommandError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_line_noise_never_crashes_and_every_answer_is_a_valid_frame(chunks):
    b = SimulatedBus(BUS, T0, seed=1)
    for k, chunk in enumerate(chunks):
        for answer in b.receive(chunk, T0 + k):
            assert rtu.crc_ok(answer.frame) and answer.frame[0] in (1, 2)
