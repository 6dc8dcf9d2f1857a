"""``parkguide demo``: the example community running on this machine in one command.

Starts an embedded MQTT broker (unless ``--broker``), a node-controller
simulator and a serial edge agent per RS-485 bus, the synthetic camera and the
camera agent, the gateway with its journal and the dashboard, and simulated
drivers; shows zone counts and signs live in the terminal; stops everything on
Ctrl-C, SIGTERM or SIGHUP (its terminal closed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from firmware_sim.drivers import BrokerLink
from firmware_sim.scenario import parse_hhmm
from parkguide.ports import free_port, port_problem
from parkguide.supervisor import Supervisor
from parking import topics
from parking.broker import ENV_CA_FILE, BrokerConfig, broker_from_args
from parking.payloads import ARROW_GLYPHS as ARROWS
from parking.payloads import Assignment, DisplayContent, ZoneCounts, both_languages
from parking.site import EXAMPLE_SITE, Site, SiteError, load_site

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--site", default=str(EXAMPLE_SITE), help="site file (default: the example community)"
    )
    parser.add_argument(
        "--broker", help="use this MQTT broker instead of the embedded one (mqtt://HOST:PORT)"
    )
    parser.add_argument(
        "--broker-port", type=int, help="port for the embedded broker (default: a free one)"
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="--broker mqtts://: the CA the broker's certificate must chain to (default: "
        "$PARKGUIDE_MQTT_CA_FILE, else the system's CAs); the demo's parts get it too",
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:8000",
        help="dashboard address (HOST:PORT; default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per real second (default: %(default)s)",
    )
    parser.add_argument(
        "--start",
        default="07:00",
        help="simulated time of day to start at (HH:MM; default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed of the simulators (default: %(default)s)"
    )
    parser.add_argument(
        "--run-dir", help="keep logs, journal and spools here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--no-camera",
        action="store_true",
        help="leave out the simulated cameras and their agents: the demo runs on the site "
        "without them (a copy of the site file in the run directory), so no alert waits for "
        "an agent that was never started; their spaces have no sensor",
    )
    parser.add_argument(
        "--no-drivers",
        action="store_true",
        help="no simulated drivers; the sensors follow a scenario",
    )
    parser.add_argument("--duration", type=float, help="stop by itself after this many seconds")


class _StartFailed(Exception):
    """A part of the demo exited while the demo was starting it."""

    def __init__(self, child):
        super().__init__(child.name)
        self.child = child


LISTEN_TRIES = 3
"""Ports a server part is started on before the demo gives up: a port found free is free
only until another process on the machine takes it, before the part listens on it."""


def _start_listening(sup, name: str, argv_for, timeout: float):
    """Start a part that serves on a local port the demo picks (``argv_for(port)``), on
    another port when the one picked was taken meanwhile; (child, port) once it listens."""
    for attempt in range(LISTEN_TRIES):
        port = free_port()
        child = sup.start(name, argv_for(port), stdin_pipe=True)
        try:
            _wait_for(child, lambda p=port: _listening("127.0.0.1", p), timeout)
        except _StartFailed:
            taken = "Address already in use" in sup.tail(child)
            if not taken or attempt == LISTEN_TRIES - 1:
                raise
            log.info("%s: port %d was taken before it listened; another port", name, port)
            sup.forget(child)
            continue
        return child, port
    raise AssertionError("unreachable")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_for(child, ready, timeout: float) -> bool:
    """Wait until ``ready()``, at most ``timeout`` s; _StartFailed as soon as ``child``
    has exited (no point waiting out the timeout for a process that is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        if child.proc.poll() is not None:
            raise _StartFailed(child)
        if ready():
            # ready, and still the child's doing: a port someone else listens on, or a
            # child that failed just now, is not a started part
            if child.proc.poll() is not None:
                raise _StartFailed(child)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


_SHOWN = {
    "zones": ZoneCounts,
    "displays/content": DisplayContent,
    "entrances/assignment": Assignment,
}


class StatusBoard:
    """Live zone counts and sign contents, read from the retained topics."""

    def __init__(self, site_id: str, broker: BrokerConfig):
        import paho.mqtt.client as mqtt

        self.zones: dict[str, dict] = {}
        self.displays: dict[str, dict] = {}
        self.assignments = 0
        self.last_assignment: dict | None = None
        self.bad_payloads = 0
        self.gateway = "?"
        self.notices: list[str] = []  # e.g. a part that died while the demo runs on
        self.lock = threading.Lock()
        self.site_id = site_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-status-{secrets.token_hex(3)}"
        )
        # credentials and TLS as every other part; failures logged and shown in the view
        self.link = BrokerLink(self.client, broker, "status view", log)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()

    @property
    def broker_state(self) -> str:
        return self.link.state

    def notice(self, text: str) -> None:
        with self.lock:
            self.notices.append(text)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.link.connected(reason_code):
            return
        for t in (
            topics.zones_all(self.site_id),
            topics.displays_all(self.site_id),
            topics.gateway_availability(self.site_id),
            topics.assignments_all(self.site_id),
        ):
            client.subscribe(t, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        parsed = topics.parse(msg.topic)
        if parsed is None or parsed.site != self.site_id:
            return
        try:
            if parsed.kind == "gateway/availability":
                with self.lock:
                    self.gateway = msg.payload.decode(errors="replace")
                return
            model = _SHOWN.get(parsed.kind)
            if model is None:
                return
            if not msg.payload and parsed.kind in ("zones", "displays/content"):
                with self.lock:  # an empty retained message clears it (MQTT's way)
                    (self.zones if parsed.kind == "zones" else self.displays).pop(
                        parsed.ident, None
                    )
                return
            # checked before it is shown: content that is not what the contract says is
            # counted and left out, never a crash of the view
            data = model.model_validate_json(msg.payload).model_dump(mode="json", by_alias=True)
        except ValueError:  # not JSON, or not the contract's payload (ValidationError)
            with self.lock:
                self.bad_payloads += 1
            return
        with self.lock:
            if parsed.kind == "zones":
                self.zones[parsed.ident] = data
            elif parsed.kind == "displays/content":
                self.displays[parsed.ident] = data
            elif parsed.kind == "entrances/assignment":
                self.assignments += 1
                self.last_assignment = data

    def stop(self) -> None:
        self.link.closing()
        self.client.loop_stop()
        self.client.disconnect()

    def render_text(self, site) -> list[str]:
        out = []
        with self.lock:
            names = {z.id: z.name.en for z in site.zones}
            cells = []
            for z in site.zones:
                c = self.zones.get(z.id)
                cells.append(
                    f"{z.id}: {c['free']}/{c['total']} free"
                    + (f" ({c['unknown']}?)" if c["unknown"] else "")
                    if c
                    else f"{z.id}: -"
                )
            out.append("zones  " + " | ".join(cells))
            now = time.time()
            for d in site.displays:
                content = self.displays.get(d.id)
                if not content or content.get("expires", 0) < now:
                    out.append(f"sign {d.id:<11} [blank]")
                    continue
                lines = [
                    f"{_both(ln['label'], '/')}{ARROWS.get(ln['arrow'], '')} {_both(ln['text'])}"
                    for ln in content["lines"]
                ]
                out.append(f"sign {d.id:<11} " + " | ".join(lines))
            a = self.last_assignment
            tail = (
                f"; last: {a.get('class')} at {a.get('entrance')} -> {a.get('space') or 'none'}"
                if a
                else ""
            )
            bad = f"; bad payloads {self.bad_payloads}" if self.bad_payloads else ""
            out.append(
                f"gateway {self.gateway}; broker {self.broker_state}; "
                f"assignments {self.assignments}{tail}{bad}"
            )
            out.extend(f"! {n}" for n in self.notices)
            del names
        return out


def _both(text: dict[str, str], sep: str = " ") -> str:
    """A sign's text in Chinese and English, once where they are the same ("12")."""
    return both_languages(text["zh"], text["en"], sep)


_LINE_STYLES = {"ok": "bold green", "full": "bold red", "fallback": "yellow"}


def _render_rich(board: StatusBoard, site, header: list[str], console=None):
    """The live view. With ``console``, it fits the console's height: the framed tables
    when they fit, else a compact layout (one row per zone and per sign, the status
    line last); only a site too big for even that loses its last rows, said in a row."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    with board.lock:
        zones = [(z, board.zones.get(z.id)) for z in site.zones]
        signs = [(d.id, _sign_text(board.displays.get(d.id))) for d in site.displays]
        foot = _footer(board)
        notices = [Text(n, style="bold red") for n in board.notices]
    head = Text("\n".join(header))
    full = Panel(
        Group(head, _zone_table(zones, False), _sign_table(signs, False), foot, *notices),
        title="parkguide demo",
    )
    if console is None or _rows(console, full) <= console.height:
        return full
    title = Text("parkguide demo — ", style="bold")
    title.append_text(head)
    # compact: with blank lines between the parts if they fit; sign lines wrapped if
    # they fit, else one row per sign, cut short with "…"
    for wrap, spacer in ((True, [Text("")]), (True, []), (False, [Text("")]), (False, [])):
        compact = Group(
            title, *spacer, _zone_table(zones, True), *spacer, _sign_table(signs, True, wrap),
            foot, *notices,
        )  # fmt: skip
        if _rows(console, compact) <= console.height:
            return compact
    # even compact is too tall: as many zone and sign rows as fit, then a row saying so
    fixed = _rows(console, Group(title, foot, *notices)) + 2  # the zones' header, "… more"
    room = max(console.height - fixed, 2)
    shown_zones = zones[: min(len(zones), max(room - len(signs), room // 2))]
    shown_signs = signs[: max(room - len(shown_zones), 0)]
    hidden = len(zones) - len(shown_zones) + len(signs) - len(shown_signs)
    more = Text(f"… {hidden} more rows; every zone and sign is on the dashboard", style="dim")
    return Group(
        title,
        _zone_table(shown_zones, True),
        _sign_table(shown_signs, True),
        *([more] if hidden else []),
        foot,
        *notices,
    )


def _rows(console, renderable) -> int:
    return len(console.render_lines(renderable, console.options.update(height=None), pad=False))


def _sign_text(content: dict | None):
    from rich.text import Text

    if not content or content.get("expires", 0) < time.time():
        return Text("(blank)", style="dim")
    parts = Text()
    for i, ln in enumerate(content["lines"]):
        if i:
            parts.append("  ")
        parts.append(f"{_both(ln['label'], '/')} {ARROWS.get(ln['arrow'], '')} ")
        parts.append(_both(ln["text"]), style=_LINE_STYLES.get(ln["status"], ""))
    return parts


def _zone_table(zones: list, compact: bool):
    from rich.table import Table

    if compact:
        zt = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    else:
        zt = Table(title="Zones", expand=False)
    for col in ("zone", "free", "occupied", "unknown", "closed", "total"):
        if col == "zone":
            zt.add_column(col, no_wrap=compact, overflow="ellipsis", max_width=24)
        else:
            zt.add_column(col, justify="right", no_wrap=compact)
    for z, c in zones:
        counts = ("free", "occupied", "unknown", "closed", "total")
        zt.add_row(f"{z.id} {z.name.zh}", *(str(c[k]) if c else "-" for k in counts))
    return zt


def _sign_table(signs: list, compact: bool, wrap: bool = False):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    width = max((len(sign_id) for sign_id, _ in signs), default=4)
    if compact and not wrap:  # one row per sign: a line too long ends in "…"
        rows = []
        for sign_id, text in signs:
            row = Text(f"{sign_id:<{width}}  ", style="bold", no_wrap=True, overflow="ellipsis")
            row.append_text(text)
            rows.append(row)
        return Group(*rows)
    if compact:
        st = Table(box=None, pad_edge=False, show_edge=False, show_header=False)
        st.add_column("sign", no_wrap=True, style="bold", min_width=width)
        st.add_column("lines")
    else:
        st = Table(title="Signs (as drivers see them)", expand=False, show_lines=False)
        st.add_column("sign")
        st.add_column("lines")
    for sign_id, text in signs:
        st.add_row(sign_id, text)
    return st


def _footer(board: StatusBoard):
    """The status line; called with board.lock held."""
    from rich.text import Text

    state = board.broker_state
    foot = Text("broker: ")
    foot.append(state, style="green" if state == "connected" else "bold red")
    foot.append(f"   gateway: {board.gateway}   assignments: {board.assignments}")
    if board.bad_payloads:
        foot.append(f"   bad payloads: {board.bad_payloads}")
    a = board.last_assignment
    if a:
        foot.append(
            f"   last: {a.get('class')} at {a.get('entrance')} → {a.get('space') or 'none'}"
        )
    return foot


def _check_args(args: argparse.Namespace) -> tuple[str, int, BrokerConfig | None] | str:
    """(dashboard host, port, the --broker given) or the one line that says what is wrong;
    checked before anything starts, so a typo costs no wait."""
    try:
        parse_hhmm(args.start)
    except ValueError:
        return f"--start {args.start!r}: expected HH:MM, from 00:00 to 23:59"
    from gateway.service import MAX_POLICY_SPEED  # the gateway's --policy-clock takes it

    if not (0 < args.speed <= MAX_POLICY_SPEED):  # NaN fails too
        return f"--speed {args.speed}: must be more than 0 and at most {MAX_POLICY_SPEED:g}"
    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        return f"--duration {args.duration}: must be a positive number of seconds"
    http_host, _, http_port_s = args.http.rpartition(":")
    http_host = http_host or "127.0.0.1"
    try:
        http_port = int(http_port_s)
    except ValueError:
        return f"--http {args.http!r}: expected HOST:PORT"
    problem = port_problem(http_host, http_port)
    if problem and problem.endswith(" is in use"):
        return f"--http {args.http}: that port is taken; pick another with --http HOST:PORT"
    if problem:
        return f"--http {args.http}: {problem}"
    broker = None
    if args.ca_file and not args.broker:
        return "--ca-file: only with --broker mqtts://… (the embedded broker has no TLS)"
    if args.broker:
        try:
            broker = broker_from_args(args.broker, args)
        except ValueError as exc:
            return f"--broker: {exc}"
        if broker.ca_file:  # every part of the demo it starts trusts the same CA
            os.environ[ENV_CA_FILE] = str(Path(broker.ca_file).resolve())
    elif args.broker_port is not None:
        problem = port_problem("127.0.0.1", args.broker_port)
        if problem and problem.endswith(" is in use"):
            # something listens there (maybe a broker of yours): the demo would publish
            # into it, retained, and take it for its own
            return (
                f"--broker-port {args.broker_port}: 127.0.0.1:{args.broker_port} is in use; "
                "pick a free port, leave --broker-port out for any free one, or use a "
                "broker of yours with --broker mqtt://HOST:PORT"
            )
        if problem:
            return f"--broker-port {args.broker_port}: {problem}"
        if args.broker_port == http_port:
            return f"--broker-port {args.broker_port}: the dashboard's port (--http)"
    return http_host, http_port, broker


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
    except SiteError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    checked = _check_args(args)
    if isinstance(checked, str):
        print(checked, file=sys.stderr)
        return 2
    try:
        return _run(args, site, *checked)
    except BrokenPipeError:
        # stdout was a pipe whose reader left (`parkguide demo | head`): everything is
        # stopped by now; end quietly, like Ctrl-C
        _drop_stdout()
        return 0


def _drop_stdout() -> None:
    """Send what is left for stdout to /dev/null (its reader is gone): no second
    BrokenPipeError when the interpreter flushes it at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _out(text: str) -> None:
    """Lines to stdout in one write: print() writes the text and its newline apart
    (unbuffered, as under PYTHONUNBUFFERED), and a log line could land between them."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _say(text: str) -> None:
    try:
        _out(text)
    except BrokenPipeError:
        _drop_stdout()


def _run(
    args: argparse.Namespace, site, http_host: str, http_port: int, broker: BrokerConfig | None
) -> int:
    run_dir = (
        Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="parkguide-demo-"))
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    keep = bool(args.run_dir)
    sup = Supervisor(run_dir)
    stop = threading.Event()

    def _on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)  # its terminal closed: stop the same way
    board: StatusBoard | None = None
    drivers = None
    try:
        if broker is not None:
            broker_url = args.broker
        else:
            port = args.broker_port or free_port()
            embedded = sup.start(
                "broker", ["--port", str(port)], module="parkguide.embedded_broker"
            )
            if not _wait_for(embedded, lambda: _listening("127.0.0.1", port), 15):
                keep = True
                print(
                    f"embedded broker did not start; see {run_dir / 'broker.log'}", file=sys.stderr
                )
                return 1
            broker_url = f"mqtt://127.0.0.1:{port}"
            broker = BrokerConfig.from_url(broker_url)

        site_path = args.site
        if args.no_camera and site.cameras:
            site_path, site = _site_without_cameras(args.site, run_dir)
        db = run_dir / "journal.sqlite"
        password = secrets.token_urlsafe(9)
        _add_demo_user(db, password)
        common = ["--site", str(site_path)]
        sim_clock = ["--speed", str(args.speed), "--start", args.start, "--seed", str(args.seed)]
        scenario = ["--scenario", "none"] if not args.no_drivers else ["--scenario", "residential"]

        sup.start(
            "gateway",
            [
                "gateway",
                *common,
                "--broker",
                broker_url,
                "--db",
                str(db),
                "--http",
                f"{http_host}:{http_port}",
                "--policy-clock",
                f"{args.start}@{args.speed}",
            ],
            env={"PARKGUIDE_SESSION_SECRET": secrets.token_hex(32)},
        )
        sims = {}
        for bus in site.buses:
            link = run_dir / f"{bus.id}.pty"
            sims[bus.id] = sup.start(
                f"sim-{bus.id}",
                [
                    "sim",
                    "bus",
                    *common,
                    "--bus",
                    bus.id,
                    "--link",
                    str(link),
                    *scenario,
                    *sim_clock,
                ],
                stdin_pipe=True,
            )
            _wait_for(sims[bus.id], link.exists, 15)
            sup.start(
                f"edge-{bus.id}",
                [
                    "edge",
                    "serial",
                    *common,
                    "--bus",
                    bus.id,
                    "--port",
                    str(link),
                    "--broker",
                    broker_url,
                    "--spool-dir",
                    str(run_dir / "spool"),
                ],
            )
        if site.cameras and not args.no_camera:
            for cam in site.cameras:
                sims[cam.id], cam_port = _start_listening(
                    sup,
                    f"sim-{cam.id}",
                    lambda port, cam=cam: [
                        "sim",
                        "camera",
                        *common,
                        "--camera",
                        cam.id,
                        "--listen",
                        f"127.0.0.1:{port}",
                        *scenario,
                        *sim_clock,
                    ],
                    20,
                )
                sup.start(
                    f"edge-{cam.id}",
                    [
                        "edge",
                        "camera",
                        *common,
                        "--camera",
                        cam.id,
                        "--source",
                        f"http://127.0.0.1:{cam_port}/stream.mjpg",
                        "--broker",
                        broker_url,
                        "--spool-dir",
                        str(run_dir / "spool"),
                    ],
                )
        if not args.no_drivers:
            drivers = sup.start(
                "drivers",
                ["sim", "drivers", *common, "--live", "--broker", broker_url, *sim_clock],
                stdin_pipe=False,
            )
            threading.Thread(
                target=_route_driver_events, args=(drivers, sims, site, stop), daemon=True
            ).start()

        threading.Thread(
            target=_route_commands, args=(sys.stdin, sims, site, stop), daemon=True
        ).start()
        board = StatusBoard(site.id, broker)
        header = [
            f"{site.name.zh} {site.name.en} — dashboard http://{http_host}:{http_port}",
            f"login: demo-manager / {password}   Ctrl-C to stop",
            f"broker {broker_url}   logs {run_dir}",
        ]
        _out("\n".join(header))
        died = _run_status(board, site, header, stop, sup, args.duration, run_dir)
        if died or (drivers is not None and drivers.proc.poll() is not None):
            keep = True  # a part died: its log is what the user needs next
            print(f"a part of the demo died; logs kept in {run_dir}", file=sys.stderr)
            return 1
        return 0
    except _StartFailed as exc:
        keep = True
        _report_dead(sup, exc.child, " while the demo was starting it")
        print(f"the demo could not start; logs kept in {run_dir}", file=sys.stderr)
        return 1
    finally:
        if board:
            board.stop()
        sup.stop_all()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        _say("parkguide demo stopped; nothing left running.")


def _site_without_cameras(site_path: str, run_dir: Path) -> tuple[Path, Site]:
    """The site file with its cameras left out (``--no-camera``), written into the run
    directory, and the site it describes. Every part of the demo runs on it: the gateway
    and its API list the agents of the site file, and would raise ``agent_never_seen`` for
    a camera agent the demo did not start. The cameras' spaces stay, with no sensor (as
    ``site check`` warns): unknown, as they would be with a camera that never reports, and
    the simulated drivers do not park in them."""
    raw = yaml.safe_load(Path(site_path).read_text(encoding="utf-8"))
    raw.pop("cameras", None)
    out = run_dir / "site-no-camera.yaml"
    out.write_text(
        f"# {Path(site_path).name} without its cameras, for parkguide demo --no-camera\n"
        + yaml.safe_dump(raw, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    return out, load_site(out)


def _report_dead(sup: Supervisor, child, note: str = "") -> None:
    log.error(
        "%s exited with code %s%s; last lines of its log (%s):\n%s",
        child.name,
        child.proc.returncode,
        note,
        child.log_path,
        sup.tail(child),
    )


def _add_demo_user(db: Path, password: str) -> None:
    from api.auth import UserStore

    UserStore(str(db)).add("demo-manager", "manager", password, replace=True)


def _route_commands(stream, sims: dict, site, stop: threading.Event) -> None:
    """A technician's commands typed into the demo (its stdin), to break it on purpose:
    ``SIM COMMAND`` goes to simulator SIM (a bus or camera id: ``cam-c fault camera off``,
    ``bus-g fault A-001 stuck``); ``set SPACE occupied|free`` to the simulator of the
    space's sensor. Their answers are in the simulators' logs (the run dir). Ends at the
    end of stdin (none: ``/dev/null``, a closed pipe)."""
    owner = {sid: b.source for sid, b in site.bindings.items()}
    try:
        for raw in stream:
            if stop.is_set():
                return
            line = raw.strip()
            if not line:
                continue
            first, _, rest = line.partition(" ")
            parts = line.split()
            if first in sims and rest.strip():
                sent = sims[first].send(rest.strip())
            elif parts[0] == "set" and len(parts) == 3 and parts[1] in owner:
                sim = sims.get(owner[parts[1]])
                sent = sim is not None and sim.send(line)
            else:
                print(
                    f"demo: {line[:80]!r} is not a command here. Type SIM COMMAND, SIM one of"
                    f" {', '.join(sorted(sims))} (e.g. '{next(iter(sorted(sims)), 'bus')} "
                    "status'; the simulators' commands: docs/modbus.md, docs/camera.md), or set"
                    " SPACE occupied|free",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if not sent:
                print(f"demo: {first} did not take {line[:80]!r} (stopped?)", file=sys.stderr)
    except (OSError, ValueError):  # stdin closed under us
        return


def _route_driver_events(drivers, sims: dict, site, stop: threading.Event) -> None:
    """The driver simulation prints 'set SPACE occupied|free' as cars park and leave;
    hand each line to the simulator that owns the space's sensor."""
    owner = {sid: b.source for sid, b in site.bindings.items()}
    log_path = drivers.log_path
    pos = 0
    while not stop.is_set():
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except OSError:
            chunk = ""
        for line in chunk.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "set" and parts[1] in owner:
                sim = sims.get(owner[parts[1]])
                if sim is not None:
                    sim.send(line)
        stop.wait(0.1)


def _run_status(
    board: StatusBoard,
    site,
    header: list[str],
    stop: threading.Event,
    sup: Supervisor,
    duration: float | None,
    run_dir: Path | None = None,
) -> bool:
    """Show the live status until stopped or ``duration`` is up; True if a part died.

    The simulated drivers are the exception: without them the system still runs (no
    cars come or go), so their death is told (on stderr and in the view) and the demo
    runs on."""
    started = time.monotonic()
    tty = sys.stdout.isatty()
    live = None
    told: set[str] = set()
    if tty:
        from rich.live import Live

        live = Live(refresh_per_second=2, screen=False)
        live.update(_render_rich(board, site, header, live.console))
        live.start()
    last_plain = 0.0
    try:
        with _logs_above(live):
            while not stop.is_set():
                if duration and time.monotonic() - started > duration:
                    break
                dead = sup.dead()
                for c in dead:
                    if c.name == "drivers" and c.name not in told:
                        told.add(c.name)
                        _report_dead(
                            sup, c, "; no cars come or go now, the rest of the demo runs on"
                        )
                        board.notice(
                            f"the simulated drivers exited (code {c.proc.returncode}) at "
                            f"{time.strftime('%H:%M:%S')}; see {c.log_path}"
                        )
                dead = [c for c in dead if c.name != "drivers"]
                if dead:
                    for c in dead:
                        _report_dead(sup, c)
                    return True
                if live is not None:
                    live.update(_render_rich(board, site, header, live.console))
                elif time.monotonic() - last_plain > 10:
                    last_plain = time.monotonic()
                    _out("\n".join(board.render_text(site)))
                stop.wait(0.5)
    finally:
        if live is not None:
            live.stop()
    return False


@contextlib.contextmanager
def _logs_above(live):
    """While the live view is up on a terminal, log lines (on the same terminal) go
    above it through rich, instead of into the middle of it."""
    swapped = []
    original = sys.__stderr__
    if live is not None and original is not None and original.isatty():
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler and h.stream is original:
                h.setStream(sys.stderr)  # rich's proxy while the Live runs
                swapped.append(h)
    try:
        yield
    finally:
        for h in swapped:
            h.setStream(original)
