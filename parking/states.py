"""Space states (the FIWARE ParkingSpot values) and their numeric codes.

The codes are what the gateway keeps in its numpy state array; keep them small
and stable, they are also written to the journal.
"""

from __future__ import annotations

from enum import IntEnum


class SpaceState(IntEnum):
    """State of one parking space. Silence is never FREE: it is UNKNOWN."""

    UNKNOWN = 0
    FREE = 1
    OCCUPIED = 2
    CLOSED = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> SpaceState:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(
                f"unknown space state {value!r}; expected one of {STATE_NAMES}"
            ) from None


STATE_NAMES: tuple[str, ...] = tuple(s.label for s in SpaceState)
