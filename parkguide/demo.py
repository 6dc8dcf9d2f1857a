"""``parkguide demo``: the example community running on this machine in one command.

Starts an embedded MQTT broker (unless ``--broker``), a node-controller
simulator and a serial edge agent per RS-485 bus, the synthetic camera and the
camera agent, the gateway with its journal and the dashboard, and simulated
drivers; shows zone counts and signs live in the terminal; stops everything on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from parkguide.ports import free_port, port_free, wait_port
from parkguide.supervisor import Supervisor
from parking import topics
from parking.broker import BrokerConfig
from parking.payloads import ARROW_GLYPHS as ARROWS
from parking.payloads import Assignment, DisplayContent, ZoneCounts, both_languages
from parking.site import EXAMPLE_SITE, SiteError, load_site

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
    parser.add_argument("--http", default="127.0.0.1:8000", help="dashboard address (HOST:PORT)")
    parser.add_argument(
        "--speed", type=float, default=60.0, help="simulated seconds per real second"
    )
    parser.add_argument(
        "--start", default="07:00", help="simulated time of day to start at (HH:MM)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--run-dir", help="keep logs, journal and spools here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--no-camera", action="store_true", help="leave out the simulated camera and its agent"
    )
    parser.add_argument(
        "--no-drivers",
        action="store_true",
        help="no simulated drivers; the sensors follow a scenario",
    )
    parser.add_argument("--duration", type=float, help="stop by itself after this many seconds")


def _wait_port(host: str, port: int, timeout: float) -> bool:
    try:
        wait_port(port, timeout, host)
        return True
    except TimeoutError:
        return False


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
        self.lock = threading.Lock()
        self.site_id = site_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-status-{secrets.token_hex(3)}"
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("status board: broker refused the connection: %s", reason_code)
            return
        for t in (
            topics.zones_all(self.site_id),
            topics.displays_all(self.site_id),
            topics.gateway_availability(self.site_id),
            f"{topics.site_prefix(self.site_id)}/entrances/+/assignment",
        ):
            client.subscribe(t, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        parsed = topics.parse(msg.topic)
        if parsed is None:
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
            out.append(f"gateway {self.gateway}; assignments {self.assignments}{tail}{bad}")
            del names
        return out


def _both(text: dict[str, str], sep: str = " ") -> str:
    """A sign's text in Chinese and English, once where they are the same ("12")."""
    return both_languages(text["zh"], text["en"], sep)


def _render_rich(board: StatusBoard, site, header: str):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    zt = Table(title="Zones", expand=False)
    for col in ("zone", "free", "occupied", "unknown", "closed", "total"):
        zt.add_column(col, justify="right" if col != "zone" else "left")
    st = Table(title="Signs (as drivers see them)", expand=False, show_lines=False)
    st.add_column("sign")
    st.add_column("lines")
    now = time.time()
    with board.lock:
        for z in site.zones:
            c = board.zones.get(z.id)
            if c:
                zt.add_row(
                    f"{z.id} {z.name.zh}",
                    str(c["free"]),
                    str(c["occupied"]),
                    str(c["unknown"]),
                    str(c["closed"]),
                    str(c["total"]),
                )
            else:
                zt.add_row(f"{z.id} {z.name.zh}", "-", "-", "-", "-", "-")
        for d in site.displays:
            content = board.displays.get(d.id)
            if not content or content.get("expires", 0) < now:
                st.add_row(d.id, Text("(blank)", style="dim"))
                continue
            parts = Text()
            for i, ln in enumerate(content["lines"]):
                if i:
                    parts.append("  ")
                style = {"ok": "bold green", "full": "bold red", "fallback": "yellow"}.get(
                    ln["status"], ""
                )
                parts.append(f"{_both(ln['label'], '/')} {ARROWS.get(ln['arrow'], '')} ")
                parts.append(_both(ln["text"]), style=style)
            st.add_row(d.id, parts)
        a = board.last_assignment
        foot = f"gateway: {board.gateway}   assignments: {board.assignments}"
        if board.bad_payloads:
            foot += f"   bad payloads: {board.bad_payloads}"
        if a:
            foot += f"   last: {a.get('class')} at {a.get('entrance')} → {a.get('space') or 'none'}"
    return Panel(Group(Text(header), zt, st, Text(foot)), title="parkguide demo")


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
    except SiteError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    http_host, _, http_port_s = args.http.rpartition(":")
    http_host = http_host or "127.0.0.1"
    try:
        http_port = int(http_port_s)
    except ValueError:
        print(f"--http {args.http!r}: expected HOST:PORT", file=sys.stderr)
        return 2
    if not port_free(http_host, http_port):
        print(
            f"--http {args.http}: that port is taken; pick another with --http HOST:PORT",
            file=sys.stderr,
        )
        return 2

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
    board: StatusBoard | None = None
    try:
        if args.broker:
            try:
                broker = BrokerConfig.from_url(args.broker)
            except ValueError as exc:
                print(f"--broker: {exc}", file=sys.stderr)
                return 2
            broker_url = args.broker
        else:
            port = args.broker_port or free_port()
            sup.start("broker", ["--port", str(port)], module="parkguide.embedded_broker")
            if not _wait_port("127.0.0.1", port, 15):
                print(
                    f"embedded broker did not start; see {run_dir / 'broker.log'}", file=sys.stderr
                )
                return 1
            broker_url = f"mqtt://127.0.0.1:{port}"
            broker = BrokerConfig.from_url(broker_url)

        db = run_dir / "journal.sqlite"
        password = secrets.token_urlsafe(9)
        _add_demo_user(db, password)
        common = ["--site", args.site]
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
            deadline = time.monotonic() + 15
            while not link.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
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
                cam_port = free_port()
                sims[cam.id] = sup.start(
                    f"sim-{cam.id}",
                    [
                        "sim",
                        "camera",
                        *common,
                        "--camera",
                        cam.id,
                        "--listen",
                        f"127.0.0.1:{cam_port}",
                        *scenario,
                        *sim_clock,
                    ],
                    stdin_pipe=True,
                )
                _wait_port("127.0.0.1", cam_port, 20)
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

        board = StatusBoard(site.id, broker)
        dashboard = f"http://{http_host}:{http_port}"
        header = (
            f"{site.name.zh} {site.name.en} — dashboard {dashboard}  login: demo-manager / {password}\n"
            f"broker {broker_url}   logs {run_dir}   Ctrl-C to stop"
        )
        print(header, flush=True)
        if _run_status(board, site, header, stop, sup, args.duration):
            keep = True  # a part died: its log is what the user needs next
            print(f"a part of the demo died; logs kept in {run_dir}", file=sys.stderr)
            return 1
        return 0
    finally:
        if board:
            board.stop()
        sup.stop_all()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        print("parkguide demo stopped; nothing left running.", flush=True)


def _add_demo_user(db: Path, password: str) -> None:
    from api.auth import UserStore

    UserStore(str(db)).add("demo-manager", "manager", password, replace=True)


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
    header: str,
    stop: threading.Event,
    sup: Supervisor,
    duration: float | None,
) -> bool:
    """Show the live status until stopped or ``duration`` is up; True if a part died."""
    started = time.monotonic()
    tty = sys.stdout.isatty()
    live = None
    if tty:
        from rich.live import Live

        live = Live(_render_rich(board, site, header), refresh_per_second=2, screen=False)
        live.start()
    last_plain = 0.0
    try:
        while not stop.is_set():
            if duration and time.monotonic() - started > duration:
                break
            dead = [c for c in sup.dead() if c.name != "drivers"]
            if dead:
                for c in dead:
                    log.error(
                        "%s exited with code %s; last lines of its log:\n%s",
                        c.name,
                        c.proc.returncode,
                        sup.tail(c),
                    )
                return True
            if live is not None:
                live.update(_render_rich(board, site, header))
            elif time.monotonic() - last_plain > 10:
                last_plain = time.monotonic()
                print("\n".join(board.render_text(site)), flush=True)
            stop.wait(0.5)
    finally:
        if live is not None:
            live.stop()
    return False
