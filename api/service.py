"""``parkguide api``: the dashboard and REST API as their own process.

Live state comes from the broker's retained topics and the gateway's journal
(``api.mqttview``), so the dashboard can be restarted or scaled apart from the
gateway; manager actions go to the gateway over MQTT.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from pydantic import ValidationError

from api.settings import ApiSettings, settings_problems
from parking.broker import add_credential_arguments, broker_from_args
from parking.site import SiteError, load_site

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--broker", required=True, help="MQTT broker, mqtt://HOST:PORT")
    parser.add_argument("--db", required=True, help="the gateway's journal database (SQLite)")
    parser.add_argument(
        "--http", default="127.0.0.1:8000", help="where to serve, HOST:PORT (default %(default)s)"
    )
    add_credential_arguments(parser)


def parse_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def main(args: argparse.Namespace) -> int:
    address = parse_address(args.http)
    if address is None:
        print(f"--http {args.http!r}: expected HOST:PORT", file=sys.stderr)
        return 2
    try:
        site = load_site(args.site)
    except SiteError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        broker = broker_from_args(args.broker, args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    import uvicorn

    from api.app import create_app
    from api.mqttview import MqttLiveView
    from api.serving import http_protocol

    try:
        settings = ApiSettings()
    except ValidationError as exc:  # PARKGUIDE_* environment variables
        print(f"settings refused: {settings_problems(exc)}", file=sys.stderr)
        return 2
    view = MqttLiveView(site, broker, args.db)
    try:
        app = create_app(view, settings, db_path=args.db, broker=f"{broker.host}:{broker.port}")
    except sqlite3.Error as exc:
        print(f"--db {args.db}: cannot open the journal: {exc}", file=sys.stderr)
        return 2
    view.start()
    host, port = address
    log.info("dashboard on http://%s:%d (broker %s, journal %s)", host, port, broker.url, args.db)
    try:
        # live streams never finish by themselves: give them a second, then stop
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            http=http_protocol(),  # a stream nobody reads ends within its send timeout
        )
    finally:
        view.stop()
    return 0
