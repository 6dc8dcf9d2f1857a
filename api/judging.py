"""One stand-alone API process judging one zone's actions one at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ZoneJudging:
    """A lock per zone, held by a stand-alone API's manager action from reading the journal
    (settle) until its send is noted: two managers' actions on one space or zone in this
    process are judged one after the other, the second on the state the first left (settle
    waits for the first's journal event). Per zone, not per space: a zone's action and an
    action on one of its spaces are judged on each other's spaces."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def zone(self, zone: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(zone, threading.Lock())
        with lock:
            yield
