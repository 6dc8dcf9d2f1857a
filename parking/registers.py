"""Modbus RTU register map of a parkguide node controller (docs/modbus.md).

A node controller sits on an RS-485 bus at a slave address 1..247 and serves
8..64 ground detectors. The simulator serves exactly this map and the serial
agent polls exactly this map; change it here only.
"""

from __future__ import annotations

from enum import IntEnum

MAX_DETECTORS = 64

# --- discrete inputs (function 02) ---------------------------------------
OCCUPIED_BITS = 0
"""Discrete inputs 0..N-1: detector i's debounced occupied bit."""

# --- input registers (function 04) ---------------------------------------
IR_MODEL = 0  # model code
IR_FIRMWARE = 1  # major << 8 | minor
IR_DETECTOR_COUNT = 2
IR_UPTIME_HI = 3  # uptime seconds, high word
IR_UPTIME_LO = 4  # uptime seconds, low word
IR_CRC_ERRORS = 5  # frames the node received with a bad CRC (wraps at 65536)
IR_BUS_ERRORS = 6  # other framing errors seen by the node
IR_REQUESTS = 7  # requests served (wraps)
NODE_INFO_COUNT = 8
IR_DETECTOR_STATUS = 100  # 100+i: DetectorStatus of detector i
IR_DETECTOR_RAW = 200  # 200+i: raw reading of detector i (magnetic field delta, 0..65535)
IR_DETECTOR_BATTERY = 300  # 300+i: battery percent of detector i (0..100; 0xFFFF = wired)

# --- holding registers (functions 03, 06, 16) ----------------------------
HR_THRESHOLD = 0  # raw reading above which a detector counts as occupied
HR_DEBOUNCE_MS = 1  # node-side debounce, milliseconds
HR_INDICATOR = 100  # 100+i: IndicatorColour of bay i's indicator lamp
SETTINGS_COUNT = 2

MODEL_CODE = 0x4750  # "GP"
FIRMWARE_VERSION = (1 << 8) | 4
DEFAULT_THRESHOLD = 400
DEFAULT_NODE_DEBOUNCE_MS = 300
BATTERY_WIRED = 0xFFFF
BATTERY_LOW_PERCENT = 20
"""A wireless detector's battery at or below this wants replacing before the detector dies
(and its bay turns ``unknown``): the survey and the managers' alert say so."""


class DetectorStatus(IntEnum):
    OK = 0
    STUCK = 1
    FLAPPING = 2
    DEAD = 3
    FAULT = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class IndicatorColour(IntEnum):
    OFF = 0
    GREEN = 1
    RED = 2
    BLUE = 3
    YELLOW = 4
