"""``parkguide gateway``'s command line: flags, checks before anything starts, the journal
lock, the journaled signs republished first, then the service (``gateway.service``) and,
with ``--http``, the API in-process.

A restart is on the path to the signs: the journaled signs go out before the site file is
parsed when its stamp says these bytes passed before (``gateway.site_stamp``); when they are
behind (killed with changes pending), the compiled site comes from its cache beside the
journal, not from parsing the file, and the collector stays off until the service has
started (its start collects once and freezes what it loaded)."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import math
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

# Only light modules at the top (no pydantic, numpy or scipy): a restarted gateway whose
# site file is unchanged since it last validated it (gateway.site_stamp) republishes its
# journaled signs (republish_stored_signs) before the site file is parsed again (~0.6 s at
# 20,000 spaces), the allocation core and the journal's state are loaded.
from gateway.journal import CHECKPOINT_KEY, JournalInUse, lock_journal, peek_meta, stored_signs
from gateway.service import (
    BUSY_POLL_MS,
    JOURNAL_KEEP_DAYS,
    KEEP_WARM_FOR_S,
    KEEP_WARM_MS,
    MAX_HOLDS_PER_ENTRANCE,
    PLATE_KEEP_HOURS,
    GatewayService,
    journal_disk_hint,
)
from gateway.site_changes import DIGEST_KEY, OUTLINE_KEY, SITE_ID_KEY, parse_outline
from gateway.site_stamp import (
    ValidatedSite,
    read_site_cache,
    read_stamp,
    site_key,
    write_site_cache,
    write_stamp,
)
from parking import topics
from parking.broker import BrokerConfig, add_credential_arguments, broker_from_args, public_url

if TYPE_CHECKING:
    from parking.site import Site

log = logging.getLogger(__name__)

ENV_INFLUX_TOKEN = "INFLUX_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--broker", required=True, help="MQTT broker, mqtt://HOST:PORT")
    parser.add_argument("--db", required=True, help="journal database (SQLite, created if missing)")
    add_credential_arguments(parser)
    parser.add_argument(
        "--rename-site-from",
        metavar="OLD_ID",
        help="start on a journal last run for site OLD_ID (the site's id was changed in its"
        " file); without it such a journal is refused: each site needs its own --db",
    )
    parser.add_argument(
        "--client-id",
        help="MQTT client id of its persistent session (default: parkguide-gateway-SITE, with"
        " a random suffix kept in the journal appended when there is a password)",
    )
    parser.add_argument(
        "--hold-s",
        type=float,
        default=180.0,
        help="how long a space assigned to an arriving car stays held (seconds; default %(default)g)",
    )
    parser.add_argument(
        "--max-holds-per-entrance",
        type=int,
        default=MAX_HOLDS_PER_ENTRANCE,
        help="holds outstanding at one entrance; past it an arrival gets no space and is sent"
        " by the signs, so a gate flooding arrivals cannot take every space off them"
        " (default %(default)d)",
    )
    parser.add_argument(
        "--congestion-m",
        type=float,
        help="metres of detour one recent assignment to an aisle costs",
    )
    parser.add_argument(
        "--congestion-halflife-s", type=float, help="half-life of an aisle's congestion (seconds)"
    )
    parser.add_argument("--influx-url", help="InfluxDB v2 write endpoint; token from INFLUX_TOKEN")
    parser.add_argument("--influx-org", default="parkguide", help="InfluxDB organisation")
    parser.add_argument("--influx-bucket", default="parkguide", help="InfluxDB bucket")
    parser.add_argument(
        "--outbox-max-rows",
        type=int,
        help="disk cap of the InfluxDB outbox in points (oldest dropped and reported beyond it)",
    )
    parser.add_argument(
        "--journal-keep-days",
        type=float,
        default=JOURNAL_KEEP_DAYS,
        help="history the journal keeps (events, assignments and their plates); older rows are deleted a few hundred at a time when the gateway is idle, "
        f"so the file stops growing (default {JOURNAL_KEEP_DAYS:g}; 0 keeps everything)",
    )
    parser.add_argument(
        "--plate-keep-hours",
        type=float,
        default=PLATE_KEEP_HOURS,
        help="how long after its hold an arrival's plate stays in the journal, then blanked "
        f"(default {PLATE_KEEP_HOURS:g}; 0: plates are echoed to the gate, never stored; "
        "docs/privacy.md)",
    )
    parser.add_argument("--http", help="serve the API and dashboard in-process on HOST:PORT")
    parser.add_argument(
        "--policy-clock",
        metavar="HH:MM@SPEED",
        help="for simulations and the demo: judge time-window policies by a simulated day "
        "that starts at HH:MM (site time) and runs SPEED times faster than real time",
    )
    parser.add_argument(
        "--keep-warm-ms",
        type=float,
        default=KEEP_WARM_MS,
        help=f"while reports come more often than every {KEEP_WARM_FOR_S:g} s, rehearse the "
        "report path (read-only) every this many ms of idle time, so the next report is "
        "handled at warm-cache speed: about 0.35 ms sooner for 15-20 %% of a core meanwhile "
        f"(default {KEEP_WARM_MS:g}; 0 turns it off)",
    )
    parser.add_argument(
        "--busy-poll-ms",
        type=float,
        default=BUSY_POLL_MS,
        help="after handling reports, poll the broker's socket without sleeping (yielding "
        "the CPU to other tasks) for this many ms, so that a report coming meanwhile "
        "finds the CPU awake: about 0.4 ms sooner, for up to a core while reports come "
        f"that close together (default {BUSY_POLL_MS:g}; 0 turns it off; off under "
        "real-time scheduling)",
    )


def republish_stored_signs(
    db: str,
    broker: BrokerConfig,
    keep: Collection[str],
    timeout_s: float = 2.0,
    ttl_s: float | None = None,
) -> int:
    """Publish the signs the journal says are current, valid for what is left of their
    expiry (and of ``ttl_s``, the site's shortest source TTL) counted from the last report
    heard; returns how many. Only the topics in ``keep`` (the site file's displays now: a
    removed display's last content is not shown again).

    Run first thing on start: after a crash the signs are consistent again within a fraction
    of a second, while the full gateway is still loading. The contents are those committed
    with the last state change, which is the state the gateway resumes from.
    """
    rows = [row for row in stored_signs(db, now=time.time(), ttl_s=ttl_s) if row[0] in keep]
    if not rows:
        return 0
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"parkguide-gateway-restart-{os.getpid()}"
    )
    broker.apply(client)
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:
        log.warning(
            "broker %s not reachable yet (%s); signs follow once connected",
            broker.url,
            broker.why_unreachable(exc),
        )
        return 0
    client.loop_start()
    try:
        now = time.time()
        sent = []
        for topic, body, left_s in rows:
            content = json.loads(body)
            content["ts"], content["expires"] = now, now + left_s
            sent.append(
                client.publish(
                    topic,
                    json.dumps(content, ensure_ascii=False).encode(),
                    qos=topics.QOS_DISPLAY,
                    retain=topics.RETAIN_DISPLAY,
                )
            )
        for info in sent:
            info.wait_for_publish(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("republished %d signs from the journal", len(rows))
    return len(rows)


def _serve_http(service: GatewayService, address: str, db: str) -> threading.Thread | None:
    """Run the API app in-process in a uvicorn thread (the MQTT loop never waits on it).

    Returns None when the server could not start (e.g. the port is taken).
    """
    import uvicorn

    from api.app import create_app
    from api.serving import http_protocol
    from api.settings import ApiSettings

    host, _, port = address.rpartition(":")
    broker = f"{service.broker.host}:{service.broker.port}"
    app = create_app(service.gateway, ApiSettings(), db_path=db, broker=broker)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host or "127.0.0.1",
            port=int(port),
            log_level="warning",
            timeout_graceful_shutdown=1,  # live streams never end by themselves
            http=http_protocol(),  # a stream nobody reads ends within its send timeout
        )
    )
    # uvicorn leaves signal handling alone outside the main thread: SIGTERM stays ours
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread if server.started else None


def _number_flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric flags, or None: caught before anything starts (a NaN
    congestion would fail on the first arrival). ``--hold-s`` is the arrival desk's to check
    (gateway.arrivals)."""
    checks = (
        ("--keep-warm-ms", args.keep_warm_ms, 0.0, math.inf, "0 (off) or more"),
        ("--busy-poll-ms", args.busy_poll_ms, 0.0, math.inf, "0 (off) or more"),
        ("--journal-keep-days", args.journal_keep_days, 0.0, math.inf, "0 (keep all) or more"),
        ("--plate-keep-hours", args.plate_keep_hours, 0.0, math.inf, "0 (never store) or more"),
        ("--congestion-m", args.congestion_m, 0.0, math.inf, "0 or more metres"),
        ("--congestion-halflife-s", args.congestion_halflife_s, 1e-3, math.inf, "positive"),
        ("--outbox-max-rows", args.outbox_max_rows, 1, math.inf, "1 or more"),
        ("--max-holds-per-entrance", args.max_holds_per_entrance, 1, math.inf, "1 or more"),
    )
    for flag, value, low, high, expected in checks:
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            return f"{flag} {value}: must be {expected}"
    return None


def influx_url_problem(url: str) -> str | None:
    """A login or a query in ``--influx-url`` is refused: a command line is visible to every
    local user (ps, systemctl status), and InfluxDB v2 takes a token instead."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return None
    return (
        f"--influx-url {public_url(url)!r}: a login or a query in the URL is not taken (a "
        f"command line is visible to every local user): give the token in ${ENV_INFLUX_TOKEN}"
        " and the URL without it"
    )


def main(args: argparse.Namespace) -> int:
    if args.http:
        host, sep, port = args.http.rpartition(":")
        if not sep or not port.isdigit():
            print(f"--http {args.http!r}: expected HOST:PORT", file=sys.stderr)
            return 2
        if importlib.util.find_spec("api.app") is None:
            print(
                "--http: the API is not installed yet (no api.app module with create_app); "
                "run the gateway without --http, or `parkguide api` as its own process",
                file=sys.stderr,
            )
            return 2
    problem = _number_flag_problem(args)
    if problem is None and args.outbox_max_rows is not None and not args.influx_url:
        problem = "--outbox-max-rows: only with --influx-url (the outbox holds InfluxDB's points)"
    if problem is None and args.influx_url:
        problem = influx_url_problem(args.influx_url)
    if problem is None and args.influx_url and not (args.influx_org and args.influx_bucket):
        problem = (
            "--influx-org and --influx-bucket must not be empty (InfluxDB refuses such writes)"
        )
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        broker = broker_from_args(args.broker, args)
    except ValueError as exc:
        print(f"--broker: {exc}", file=sys.stderr)
        return 2
    influx = None
    if args.influx_url:
        influx = {
            "url": args.influx_url,
            "org": args.influx_org,
            "bucket": args.influx_bucket,
            "token": os.environ.get(ENV_INFLUX_TOKEN, ""),
        }
    core_options = {
        k: v
        for k, v in (
            ("congestion_m", args.congestion_m),
            ("congestion_halflife_s", args.congestion_halflife_s),
        )
        if v is not None
    }
    # the start makes objects that live as long as the process (~150,000 the collector
    # tracks at 20,000 spaces): collections while it runs cost ~0.2 s of a core, a third
    # of the start from the site's cache to a running gateway. GatewayService.start freezes
    # them (after one collection when the site file was parsed); gc is on again from
    # there (or when main returns)
    gc.disable()
    try:
        return _start(args, broker, influx, core_options)
    finally:
        gc.enable()


def _start(
    args: argparse.Namespace,
    broker: BrokerConfig,
    influx: dict[str, str] | None,
    core_options: dict[str, float],
) -> int:
    """The site file checked (or known good by its stamp), the journal locked, the gateway run."""
    try:
        raw: bytes | None = Path(args.site).read_bytes()
    except OSError:
        raw = None  # _parse_site says why
    key = site_key(raw) if raw is not None else None
    # A site file is parsed and validated before anything is published (a refused one
    # changes nothing), unless these very bytes passed these very checks before.
    shown = read_stamp(args.db, key) if key is not None else None
    site = None
    if shown is None:
        site = _parse_site(args.site, raw)
        if site is None:
            return 2
        shown = ValidatedSite.of(site)
    db = Path(args.db)
    if db.is_file() and db.stat().st_size == 0:  # `touch`ed, or emptied by a fault
        log.warning(
            "--db %s is an empty file: a new journal starts in it (no history, no dashboard "
            "users, a new broker session); if it held the site's journal, stop and restore "
            "the newest backup (deploy/README.md)",
            db,
        )
    try:
        with lock_journal(args.db):
            refused = _journal_of_another_site(args.db, shown.site_id, args.rename_site_from)
            if refused:
                print(f"--db {args.db}: {refused}", file=sys.stderr)
                return 2
            return _run_gateway(args, shown, site, raw, key, broker, influx, core_options)
    except JournalInUse as exc:
        print(f"--db {args.db}: {exc}; one gateway per journal", file=sys.stderr)
        return 2
    except OSError as exc:  # the lock file: no such folder, no permission, a failing disk
        hint = journal_disk_hint(exc)
        print(f"--db {args.db}: cannot lock the journal: {exc}{hint}", file=sys.stderr)
        return 2


def _parse_site(path: str, raw: bytes | None) -> Site | None:
    """The site file parsed and validated from ``raw`` (its bytes; None: read it); None
    when refused (said on stderr)."""
    from parking.site import SiteError, load_site, site_from_bytes

    try:
        return load_site(path) if raw is None else site_from_bytes(raw, path)
    except SiteError as exc:
        print(f"site file refused:\n{exc}", file=sys.stderr)
        return None


def damaged_hint(exc: sqlite3.Error) -> str:
    """What to do about a journal SQLite finds damaged (empty otherwise)."""
    text = str(exc)
    if "malformed" not in text and "not a database" not in text:
        return ""
    return (
        "\nthe journal is damaged: restore the newest backup, or salvage what is readable"
        " with `sqlite3 JOURNAL .recover | sqlite3 NEW` (deploy/README.md, Backups)"
    )


def _journal_of_another_site(db: str, site_id: str, rename_from: str | None) -> str | None:
    """Why a gateway for ``site_id`` must not start on journal ``db`` (None: it may). A
    journal of another site would have its events, agents and retained signs taken over
    as a rename of that site; that happens only when asked (``--rename-site-from``)."""
    meta = peek_meta(db, (SITE_ID_KEY, OUTLINE_KEY))
    was = meta.get(SITE_ID_KEY) or (parse_outline(meta.get(OUTLINE_KEY)) or {}).get("site")
    if was is None or was == site_id:
        return None
    if rename_from == was:
        log.warning("site %s renamed from %s: the journal is taken over", site_id, was)
        return None
    return (
        f"this journal belongs to site {was!r}, not {site_id!r} (the site file's id): give "
        f"each site its own journal, or, if the site's id was changed, start once with "
        f"--rename-site-from {was}"
    )


def _run_gateway(
    args: argparse.Namespace,
    shown: ValidatedSite,
    site: Site | None,
    raw: bytes | None,
    key: str | None,
    broker: BrokerConfig,
    influx: dict[str, str] | None,
    core_options: dict[str, float],
) -> int:
    """The gateway's life once its journal is locked and known to be this site's. ``site``
    is None when ``shown`` comes from the stamp of these bytes (``key``) validated before:
    once the journaled signs are out, the compiled site is read from its cache (written
    after every parse), or, without a good one, the file is parsed."""
    # the journaled signs are of the site the journal last ran: after an edit (a sign's
    # label or arrow, its lines) they would show the old content until the full start
    meta = {} if site is None else peek_meta(args.db, [DIGEST_KEY, CHECKPOINT_KEY])
    stored = meta.get(DIGEST_KEY)
    if site is None or stored == site.digest:
        try:
            keep = {topics.display_content(shown.site_id, d) for d in shown.displays}
            republish_stored_signs(args.db, broker, keep, ttl_s=shown.shortest_ttl_s)
        except Exception:  # a fast path only: the full start below publishes everything anyway
            log.exception("republishing the journaled signs failed")
    elif stored is None and CHECKPOINT_KEY in meta:  # signs shown by a release without digests
        log.info(
            "the journal's signs are from a release that did not record which site file they "
            "show: they follow the full start"
        )
    elif stored is None:  # nothing was shown yet: no change to speak of
        log.info("a new journal: the signs follow the full start")
    else:
        log.info("site file changed since the journal's signs: they follow the full start")
    parsed = site is not None  # before anything was published: the stamp did not vouch
    if parsed and key is not None:
        write_stamp(args.db, key, shown)
    if site is None:
        assert key is not None  # shown came from the stamp of these bytes
        site = read_site_cache(args.db, key)
        if site is not None:
            log.info(
                "site file %s unchanged since validated: compiled site from its cache", args.site
            )
        else:
            # the same bytes passed the same code before (read_stamp checked the time zone,
            # the one input from the machine): this parse is not expected to refuse them
            site = _parse_site(args.site, raw)
            if site is None:
                return 2
            log.info("site file %s parsed after the signs (validated before, unchanged)", args.site)
            parsed = True
    from parking.site import SiteError

    try:
        service = GatewayService(
            site,
            broker,
            args.db,
            client_id=args.client_id,
            hold_s=args.hold_s,
            max_holds_per_entrance=args.max_holds_per_entrance,
            core_options=core_options,
            influx=influx,
            outbox_max_rows=args.outbox_max_rows,
            policy_clock_spec=args.policy_clock,
            keep_warm_ms=args.keep_warm_ms,
            busy_poll_ms=args.busy_poll_ms,
            journal_keep_days=args.journal_keep_days,
            plate_keep_hours=args.plate_keep_hours,
        )
    except SiteError as exc:
        print(f"site file refused:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # --policy-clock, --hold-s
        print(str(exc), file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"--db {args.db}: cannot open the journal: {exc}{damaged_hint(exc)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, service.request_stop)
    # a parse leaves cyclic garbage to collect before start() freezes what is loaded; a
    # site from its cache next to none
    service.start(collect=parsed)
    gc.enable()  # main turned it off for the start; start() froze what it loaded
    # the cache is written off the path to the first signs (~0.2 s at 20,000 spaces, once
    # per site file): the next start with changes to replay reads it
    if parsed and key is not None:
        write_site_cache(args.db, key, site)
    if args.http:
        if _serve_http(service, args.http, args.db) is None:
            print(
                f"--http {args.http}: the API server did not start (see the log)", file=sys.stderr
            )
            service.stop()
            return 1
        log.info("API and dashboard on http://%s", args.http)
    log.info(
        "gateway for site %s running; broker %s, journal %s", service.site.id, broker.url, args.db
    )
    try:
        service.wait()
    except KeyboardInterrupt:
        log.info("stopping (signal SIGINT)")
    finally:
        service.stop()
    if service.fatal is not None:
        print(f"gateway stopped: {service.fatal}", file=sys.stderr)
        return 1
    return 0
