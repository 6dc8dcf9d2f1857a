"""The InfluxDB writer: drains the journal's outbox to an InfluxDB v2 write endpoint.

One thread with its own SQLite connection reads the outbox in id order, writes batches of
line protocol with influxdb-client's synchronous write API (precision ns) and deletes rows
only after a 2xx. Server answers are sorted the way Telegraf's influxdb_v2 output does:

| answer | what happens to the batch |
|---|---|
| 2xx | deleted from the outbox, counted as written |
| connection refused / reset / timeout | kept; retried with capped exponential backoff |
| 401, 403 (token refused) | kept; ERROR at the first refusal (then rate-limited), counted in ``auth_failed``, retried with backoff: fixing the token loses no history |
| 413 (too large) | split in halves and resent, down to single points; a single point still refused is dropped and counted |
| 404 (no such bucket or org) | kept; ERROR as for a refused token, counted in ``not_found`` |
| 429, 5xx | kept; retried after ``Retry-After`` (seconds or HTTP date) if given, else backoff |
| other 4xx | dropped and counted in ``dropped_4xx`` (the data is bad; a retry would not help) |

influxdb-client's own retries are off (``retries=False`` on the client, SYNCHRONOUS write
options which never retry), so this policy is the only one and ``Retry-After`` is honoured.
The token is handed in (the CLI reads ``INFLUX_TOKEN``) and never logged.

The writer keeps its status (``status()``: the counts above, the current error and what
kind of failure it is, since when writes fail, the last accepted write) in the journal's
``meta`` table (``gateway.outbox.save_status``), for a stand-alone API process to show in
its ``/metrics`` and as the ``influx_failing`` alert. From this thread and its connection
only, never on the report-to-sign path: when something changed, at most every
``status_interval_s``, and every ``status_heartbeat_s`` regardless (so a reader can tell a
running writer from a row a stopped gateway left behind).
"""

from __future__ import annotations

import email.utils
import logging
import random
import sqlite3
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.rest import ApiException

from gateway import outbox
from parking.broker import public_url
from parking.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

REGROW_AFTER = 16  # writes in a row that fit before a batch limit cut by a 413 is lifted
ERROR_TEXT_LIMIT = 200  # server bodies are cut to this many characters in logs and stats

# What kind of failure keeps points waiting, as the status row names it (``failing``):
AUTH = "auth"  # 401/403: the token is refused
NOT_FOUND = "not_found"  # 404: no such bucket or org
UNREACHABLE = "unreachable"  # connection refused, reset, timeout, name resolution
SERVER = "server"  # 429, 5xx
NO_WRITE_ANSWER = "answer"  # 3xx, 1xx, no status: not a write endpoint (check the URL)
UNEXPECTED = "error"  # anything else (a locked database, a bug)

Row = tuple[int, str]  # (outbox id, line protocol)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None.

    RFC 9110 section 10.2.3 allows both forms; a date in the past means "now" (0 s).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT; a zone-less parse means the same
            when = when.replace(tzinfo=UTC)
        reference = datetime.now(UTC).timestamp() if now is None else now
        return max(0.0, when.timestamp() - reference)
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


class InfluxWriter:
    """Drains the outbox of the journal at ``db_path`` to InfluxDB, in its own thread."""

    def __init__(
        self,
        db_path: str,
        url: str,
        org: str,
        bucket: str,
        token: str,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        *,
        request_timeout_s: float = 10.0,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        drain_timeout_s: float = 5.0,
        log_interval_s: float = 60.0,
        status_interval_s: float = 2.0,
        status_heartbeat_s: float = 30.0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"InfluxDB URL must look like http://host:8086, got {public_url(url)!r}"
            )
        self.db_path = str(db_path)
        self.url = url
        self.shown_url = public_url(url)  # what logs and errors name: no user, no query
        self.org = org
        self.bucket = bucket
        self._token = token
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.request_timeout_s = request_timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.drain_timeout_s = drain_timeout_s
        self.status_interval_s = status_interval_s
        self.status_heartbeat_s = max(status_heartbeat_s, status_interval_s)
        self._log = RateLimitedLog(log, log_interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._written = 0
        self._dropped_4xx = 0
        self._retries = 0
        self._auth_failed = 0
        self._not_found = 0
        self._last_error: str | None = None  # the current error: cleared by an accepted write
        self._latest_error: str | None = None  # the latest error, kept after recovery
        self._latest_error_at: float | None = None  # wall time
        self._last_ok_at: float | None = None  # wall time of the last accepted write
        self._failing: str | None = None  # why points wait (AUTH, ...); None: they do not
        self._failing_since: float | None = None  # wall time of the first such failure
        self._started_at: float | None = None
        self._failures = 0  # consecutive failed attempts, drives the backoff
        # the status as last saved in the journal, and when (monotonic)
        self._status_saved: dict[str, Any] | None = None
        self._status_saved_at = -float("inf")
        # A server that answered 413 keeps its body limit: later batches start below it,
        # and go back to batch_size after REGROW_AFTER writes in a row went through, so
        # one oversized point does not leave every later batch at a single point (a
        # server whose limit is really lower costs a split every REGROW_AFTER writes).
        self._batch_limit = batch_size
        self._fits = 0  # writes in a row accepted since the last 413

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Open the database (creating the outbox tables if needed) and start the thread."""
        if self._thread is not None:
            raise RuntimeError("InfluxWriter already started")
        if not self._token:
            log.warning(
                "no InfluxDB token given (INFLUX_TOKEN): InfluxDB 2.x/3.x will refuse writes"
            )
        conn = sqlite3.connect(
            self.db_path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        outbox.ensure_schema(conn)
        conn.execute(outbox.META_SCHEMA)
        self._started_at = time.time()
        # the first change is saved at once; an unchanged status only at the first heartbeat
        # (a restart does not blank, for a moment, what the last run said)
        self._status_saved = self.status()
        self._status_saved_at = time.monotonic() - self.status_interval_s
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="influx-writer", daemon=True
        )
        self._thread.start()
        log.info(
            "InfluxDB writer started: %s org=%r bucket=%r", self.shown_url, self.org, self.bucket
        )

    def stop(self) -> None:
        """Stop the thread after draining what it can within ``drain_timeout_s``.

        Whatever is not written stays in the outbox for the next start.
        """
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(self.drain_timeout_s + self.request_timeout_s + 1.0)
        if thread.is_alive():
            log.warning("InfluxDB writer did not stop in time; unwritten points stay in the outbox")
        self._thread = None

    def stats(self) -> dict[str, Any]:
        """Counters since start, plus the outbox's depth and the cap's total drops."""
        with self._lock:
            result: dict[str, Any] = {
                "written": self._written,
                "dropped_4xx": self._dropped_4xx,
                "retries": self._retries,
                "auth_failed": self._auth_failed,
                "not_found": self._not_found,
                "last_error": self._last_error,
            }
        try:
            conn = sqlite3.connect(self.db_path, timeout=5.0)
            try:
                result["outbox_depth"] = outbox.depth(conn)
                result["dropped_cap"] = outbox.dropped_by_cap(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            result["outbox_depth"] = None
            result["dropped_cap"] = None
            result["last_error"] = result["last_error"] or f"outbox unreadable: {exc}"
        return result

    def status(self) -> dict[str, Any]:
        """What the journal's status row holds (``gateway.outbox.STATUS_KEY``): counts since
        start, the current error (``error``, None once a write is accepted), the latest error
        and its time, the last accepted write, and why and since when points wait
        (``failing``: ``auth``, ``not_found``, ``unreachable``, ``server``, ``answer`` or
        ``error``; None while writes go through). Times are UNIX seconds. Never the token."""
        with self._lock:
            return {
                "version": outbox.STATUS_VERSION,
                "url": public_url(self.url),
                "org": self.org,
                "bucket": self.bucket,
                "started": self._started_at,
                "written": self._written,
                "auth_failed": self._auth_failed,
                "not_found": self._not_found,
                "dropped_4xx": self._dropped_4xx,
                "retries": self._retries,
                "error": self._last_error,
                "last_error": self._latest_error,
                "last_error_at": self._latest_error_at,
                "last_ok_at": self._last_ok_at,
                "failing": self._failing,
                "failing_since": self._failing_since,
            }

    # -- the thread ------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        # retries=False: urllib3 neither retries nor follows redirects, so every answer
        # reaches the policy below (the library's default WriteOptions retries belong to
        # its batching mode, which is not used here).
        client = InfluxDBClient(
            url=self.url,
            token=self._token,
            org=self.org,
            timeout=int(self.request_timeout_s * 1000),
            retries=False,
        )
        write_api = client.write_api(write_options=SYNCHRONOUS)
        drain_deadline: float | None = None
        try:
            while True:
                self._save_status(conn)
                if self._stop.is_set():
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + self.drain_timeout_s
                    elif time.monotonic() >= drain_deadline:
                        break
                try:
                    rows = self._next_batch(conn)
                    if not rows:
                        if self._stop.is_set():
                            break
                        self._pause(conn, self.flush_interval_s)
                        continue
                    delay = self._deliver(write_api, conn, rows)
                except Exception as exc:  # the thread must outlive any surprise (locked db, bug)
                    self._record_error(f"{type(exc).__name__}: {exc}", failing=UNEXPECTED)
                    self._log(
                        "unexpected",
                        logging.ERROR,
                        "InfluxDB writer: unexpected error; points stay in the outbox",
                        exc_info=True,
                    )
                    delay = self._next_backoff()
                if delay is not None:
                    if self._stop.is_set():
                        break  # the server is failing: do not hold up shutdown waiting for it
                    self._pause(conn, delay)
        finally:
            self._save_status(conn, final=True)
            write_api.close()
            client.close()
            conn.close()

    def _next_batch(self, conn: sqlite3.Connection) -> list[Row]:
        return conn.execute(
            "SELECT id, line FROM outbox ORDER BY id LIMIT ?", (self._batch_limit,)
        ).fetchall()

    def _deliver(
        self, write_api: WriteApi, conn: sqlite3.Connection, rows: list[Row]
    ) -> float | None:
        """Write ``rows``; None once every row is settled, else the seconds to wait before retrying."""
        try:
            write_api.write(
                bucket=self.bucket,
                org=self.org,
                # one string: given a list, the client serializes it point by point in
                # Python, holding the GIL for milliseconds per batch (the MQTT thread's
                # reports then wait for it: p99 of a journal commit 0.07 -> 5 ms)
                record="\n".join([line for _, line in rows]),
                write_precision=WritePrecision.NS,
            )
        except ApiException as exc:
            return self._on_refusal(write_api, conn, rows, exc)
        except Exception as exc:  # transport: refused, reset, timeout, name resolution
            self._record_error(f"{type(exc).__name__}: {exc}", retry=True, failing=UNREACHABLE)
            delay = self._next_backoff()
            self._log(
                "unreachable",
                logging.WARNING,
                "InfluxDB at %s unreachable (%s); points kept in the outbox, retrying in %.1f s",
                self.shown_url,
                _cut(self._masked(str(exc))),
                delay,
            )
            return delay
        self._settle(conn, rows)
        with self._lock:
            self._written += len(rows)
            self._failures = 0
            recovered, self._last_error = self._last_error, None  # metrics show a live error
            self._last_ok_at = time.time()
            self._failing = self._failing_since = None
            self._fits += 1
            if self._fits >= REGROW_AFTER:
                self._batch_limit = self.batch_size
        if recovered is not None:
            log.info(
                "InfluxDB at %s accepts writes again (last error: %s)", self.shown_url, recovered
            )
        # a later outage or refusal is news again: log it at once (bad points are not:
        # one batch in a few with a bad point must not log on every request)
        self._log.reset_where(lambda key: not key.startswith(("drop-", "split")))
        return None

    def _on_refusal(
        self, write_api: WriteApi, conn: sqlite3.Connection, rows: list[Row], exc: ApiException
    ) -> float | None:
        status = int(exc.status or 0)
        reason = f"HTTP {status} {exc.reason or ''}".strip()
        body = _cut(self._masked(str(exc.body or "")))
        if status in (401, 403):
            with self._lock:
                self._auth_failed += 1
            self._record_error(f"{reason}: token refused", retry=True, failing=AUTH)
            delay = self._next_backoff()
            self._log(
                "auth",
                logging.ERROR,
                "InfluxDB at %s refused the token (%s) writing to org %r bucket %r: check that "
                "INFLUX_TOKEN is valid and may write to the bucket. Points are kept in the "
                "outbox and retried (next in %.1f s). Server said: %s",
                self.shown_url,
                reason,
                self.org,
                self.bucket,
                delay,
                body,
            )
            return delay
        if status == 404:
            # On the write endpoint 404 means the bucket or org does not exist: a setup
            # mistake like a bad token, not bad data. Dropping would lose all history
            # until someone creates the bucket or fixes the flag.
            with self._lock:
                self._not_found += 1
            self._record_error(f"{reason}: {body}", retry=True, failing=NOT_FOUND)
            delay = self._next_backoff()
            self._log(
                "notfound",
                logging.ERROR,
                "InfluxDB at %s has no bucket %r in org %r (%s): create it or fix "
                "--influx-bucket/--influx-org. Points are kept in the outbox and retried "
                "(next in %.1f s). Server said: %s",
                self.shown_url,
                self.bucket,
                self.org,
                reason,
                delay,
                body,
            )
            return delay
        if status == 413:
            return self._split(write_api, conn, rows, reason, body)
        if status == 429 or status >= 500:
            self._record_error(f"{reason}: {body}", retry=True, failing=SERVER)
            retry_after = parse_retry_after(_header(exc, "Retry-After"))
            # honoured, but never below the first backoff step: "0" or a date already
            # past would otherwise mean hundreds of requests a second to a server that
            # said it is overloaded
            delay = (
                min(max(retry_after, self.initial_backoff_s), self.max_retry_after_s)
                if retry_after is not None
                else self._next_backoff()
            )
            if retry_after is not None:
                with self._lock:
                    self._failures += 1
            self._log(
                f"status-{status}",
                logging.WARNING,
                "InfluxDB at %s answered %s; %d points kept, retrying in %.1f s",
                self.shown_url,
                reason,
                len(rows),
                delay,
            )
            return delay
        if 400 <= status < 500:
            self._drop(conn, rows, reason, body)
            return None
        # 0 (no answer), 1xx, 3xx: nothing says the data is bad; keep it and retry. A
        # redirect is a setup mistake (http:// behind an https-only proxy): say where to.
        location = _header(exc, "Location")
        where = f" to {location}" if location else ""
        self._record_error(f"{reason}{where}: {body}", retry=True, failing=NO_WRITE_ANSWER)
        delay = self._next_backoff()
        self._log(
            f"status-{status}",
            logging.ERROR,
            "InfluxDB at %s answered %s%s: not a write answer (check --influx-url); %d points "
            "kept, retrying in %.1f s",
            self.shown_url,
            reason,
            where,
            len(rows),
            delay,
        )
        return delay

    def _split(
        self, write_api: WriteApi, conn: sqlite3.Connection, rows: list[Row], reason: str, body: str
    ) -> float | None:
        if len(rows) == 1:
            self._drop(conn, rows, reason, body)
            return None
        half = len(rows) // 2
        with self._lock:
            self._batch_limit = min(self._batch_limit, half)
            self._fits = 0
        self._log(
            "split",
            logging.WARNING,
            "InfluxDB at %s answered %s to %d points: splitting batches (now at most %d)",
            self.shown_url,
            reason,
            len(rows),
            half,
        )
        for part in (rows[:half], rows[half:]):
            delay = self._deliver(write_api, conn, part)
            if delay is not None:
                return delay  # the rest stays in the outbox, in order
        return None

    def _drop(self, conn: sqlite3.Connection, rows: list[Row], reason: str, body: str) -> None:
        self._settle(conn, rows)
        with self._lock:
            self._dropped_4xx += len(rows)
            self._failures = 0
        self._record_error(f"{reason}: {body}")
        self._log(
            f"drop-{reason}",
            logging.ERROR,
            "InfluxDB at %s rejected %d points (%s), dropped: %s; first point: %s",
            self.shown_url,
            len(rows),
            reason,
            body,
            _cut(rows[0][1]),
        )

    @staticmethod
    def _settle(conn: sqlite3.Connection, rows: list[Row]) -> None:
        # The rows of a batch are every outbox row between its first and last id: ids are
        # assigned in commit order (AUTOINCREMENT under SQLite's single writer) and rows
        # only ever leave the table, so a range delete removes exactly this batch.
        conn.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))

    def _masked(self, text: str) -> str:
        """``text`` (an error, a server's answer) without the token or the URL's login: a
        server or proxy that echoes the request put them in the log."""
        if self._token:
            text = text.replace(self._token, "***")
        if self.url != self.shown_url:
            text = text.replace(self.url, self.shown_url)
        return text

    def _next_backoff(self) -> float:
        with self._lock:
            self._failures += 1
            failures = self._failures
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** min(failures - 1, 30))
        # jitter below the ceiling so several gateways behind one outage do not retry in step
        return ceiling * random.uniform(0.8, 1.0)

    def _record_error(self, text: str, retry: bool = False, failing: str | None = None) -> None:
        """Note a failure; ``failing`` says why points now wait in the outbox (None: a batch
        was settled, dropped as bad data, and the writer moves on)."""
        with self._lock:
            self._last_error = self._latest_error = _cut(self._masked(text))
            self._latest_error_at = time.time()
            if retry:
                self._retries += 1
            if failing is not None:
                self._failing = failing
                if self._failing_since is None:
                    self._failing_since = self._latest_error_at

    # -- the status row ----------------------------------------------------------------

    def _status_due(self, now: float, status: dict[str, Any] | None = None) -> float:
        """Seconds from ``now`` (monotonic) until the status is to be saved (0: now)."""
        since = now - self._status_saved_at
        if (self.status() if status is None else status) != self._status_saved:
            return max(0.0, self.status_interval_s - since)
        return max(0.0, self.status_heartbeat_s - since)

    def _save_status(self, conn: sqlite3.Connection, final: bool = False) -> None:
        """Save the status in the journal when it is due (``final``: if it changed at all)."""
        now = time.monotonic()
        status = self.status()
        if status == self._status_saved if final else self._status_due(now, status) > 0:
            return
        self._status_saved, self._status_saved_at = status, now  # a failure waits its turn
        try:
            outbox.save_status(conn, {**status, "updated": time.time()})
        except sqlite3.Error as exc:
            self._log(
                "status",
                logging.WARNING,
                "InfluxDB writer: cannot save its status in the journal %s: %s",
                self.db_path,
                exc,
            )

    def _pause(self, conn: sqlite3.Connection, seconds: float) -> None:
        """Wait ``seconds`` or until stopped, saving the status meanwhile when it is due."""
        deadline = time.monotonic() + seconds
        while True:
            self._save_status(conn)
            now = time.monotonic()
            if now >= deadline:
                return
            step = min(deadline - now, max(self._status_due(now), 0.01))
            if self._stop.wait(step):
                return


def _header(exc: ApiException, name: str) -> str | None:
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    try:
        return headers.get(name)
    except AttributeError:
        return None


def _cut(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT] + "..."
