"""Helpers for the API tests: a real gateway state (``gateway.live.LiveGateway``) on a real
SQLite journal, fed with real report payloads, and a real uvicorn server in a thread."""

from __future__ import annotations

import atexit
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from conftest import free_port
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import ROLES, UserStore
from api.serving import http_protocol
from api.settings import ApiSettings
from gateway.journal import Journal
from gateway.live import LiveGateway
from parking import topics
from parking.payloads import OccupancyReport, SpaceObservation
from parking.site import Site

PASSWORD = "correct horse battery"  # test users only; never a default in product code


class GatewayHarness:
    """A LiveGateway whose published messages are kept, with helpers to feed it reports."""

    def __init__(self, site: Site, db_path: Path, clock: Callable[[], float] = time.time):
        """``clock``: the gateway's wall clock, and the time of the reports fed to it."""
        self.site = site
        self.db_path = db_path
        self.published: list[tuple[str, bytes]] = []
        self.journal = Journal(db_path)
        self.clock = clock
        self.gateway = LiveGateway(site, self.journal, self._publish, clock=clock)
        self.gateway.publish_all()
        self.boot = uuid.uuid4().hex[:8]
        self.seq: dict[str, int] = {}

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.published.append((topic, payload))

    def report(
        self, source: str, states: dict[str, str], *, kind: str = "delta", agent: str | None = None
    ) -> None:
        """Send one occupancy report from the agent of ``source``, as it would arrive by MQTT."""
        agent = agent or next(
            x.agent for x in (*self.site.buses, *self.site.cameras) if x.id == source
        )
        seq = self.seq.get(agent, 0)
        self.seq[agent] = seq + 1
        now = self.clock()
        report = OccupancyReport(
            agent=agent,
            source=source,
            boot=self.boot,
            seq=seq,
            ts=now,
            kind=kind,
            spaces=[SpaceObservation(space=s, state=st, since=now) for s, st in states.items()],
        )
        self.gateway.handle(
            topics.edge_occupancy(self.site.id, agent), report.model_dump_json().encode()
        )

    def fill(self, occupied: Iterable[str] = ()) -> None:
        """A snapshot from every bus and camera: the given spaces occupied, all others free."""
        occ = set(occupied)
        for source in [b.id for b in self.site.buses] + [c.id for c in self.site.cameras]:
            spaces = self.site.spaces_of_source(source)
            self.report(
                source, {s: ("occupied" if s in occ else "free") for s in spaces}, kind="snapshot"
            )

    def close(self) -> None:
        self.journal.close()


class ServerThread:
    """uvicorn serving an app on a free port in this process (real HTTP, real streaming)."""

    def __init__(self, app, port: int, unacknowledged_s: float | None = None):
        """``unacknowledged_s``: the product's connection option, after another time."""
        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=1,
                http=http_protocol(unacknowledged_s),
            )
        )
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def served(harness: GatewayHarness, **overrides) -> Iterator[str]:
    """The real app on the harness's gateway and journal (``overrides``: its settings), served by
    uvicorn: its URL."""
    app = create_app(harness.gateway, settings(**overrides), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv:
        yield srv.url


# -- fixtures shared by the API test modules (import them by name) -----------------------------

SECRET = "test-secret-" + "x" * 32


def settings(**overrides) -> ApiSettings:
    values = {"session_secret": SECRET, "public_read": True, **overrides}
    return ApiSettings(**values)


@pytest.fixture(scope="module")
def harness(tmp_path_factory, request):
    from parking.site import EXAMPLE_SITE, load_site

    h = GatewayHarness(load_site(EXAMPLE_SITE), tmp_path_factory.mktemp("api") / "journal.sqlite")
    yield h
    h.close()


_user_template: Path | None = None


def user_template() -> Path:
    """One user per role, added once per test process (argon2 hashing is slow on purpose)."""
    global _user_template
    if _user_template is None:
        folder = Path(tempfile.mkdtemp(prefix="parkguide-users-"))
        atexit.register(shutil.rmtree, folder, True)
        store = UserStore(str(folder / "users.sqlite"))
        for role in ROLES:
            store.add(role, role, PASSWORD)
        _user_template = folder / "users.sqlite"
    return _user_template


def journal_with_users(tmp_path: Path) -> Path:
    """A journal database (the real Journal) with one user per role, who can log in."""
    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    UserStore(str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("ATTACH DATABASE ? AS template", (str(user_template()),))
        conn.execute("INSERT OR REPLACE INTO users SELECT * FROM template.users")
    return db


@pytest.fixture(scope="module")
def users(harness) -> UserStore:
    """Those users copied into this module's journal database."""
    store = UserStore(str(harness.db_path))
    with sqlite3.connect(harness.db_path) as db:
        db.execute("ATTACH DATABASE ? AS template", (str(user_template()),))
        db.execute("INSERT OR REPLACE INTO users SELECT * FROM template.users")
    return store


@pytest.fixture(scope="module")
def client(harness, users):
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def tokens(client) -> dict[str, dict[str, str]]:
    """Authorization headers per role (one login each: argon2 is deliberately slow)."""
    out = {}
    for role in ROLES:
        r = client.post("/api/v1/auth/login", json={"name": role, "password": PASSWORD})
        assert r.status_code == 200, r.text
        out[role] = {"Authorization": f"Bearer {r.json()['token']}"}
    client.cookies.clear()  # the tests send bearer tokens; without them they are anonymous
    return out
