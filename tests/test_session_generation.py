# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""A replaced or removed user's sessions end whatever the clock says: each user has a session
generation (a random nonce, drawn anew on every replace or add) that its tokens must name.

Before, a session ended when it had been issued before the user's ``created`` time: after the
host's clock stepped back (NTP correcting a clock that ran ahead), a new password did not end
the sessions issued before the step."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from api_support import PASSWORD, SECRET, client, harness, settings, users  # noqa: F401
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import SessionSigner, UserError, UserStore, _b64, _unb64

STEP_BACK_S = 3600.0
PROTECTED = "/api/v1/site"


@contextmanager
def clock_stepped_back(
    monkeypatch: pytest.MonkeyPatch, by_s: float = STEP_BACK_S
) -> Iterator[None]:
    """The host clock by_s earlier (an hour; negative: later), as NTP steps the wall clock."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - by_s)
    try:
        yield
    finally:
        monkeypatch.setattr(time, "time", real)


def login(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    client.cookies.clear()  # the bearer token alone, so each request says which session it uses
    return {"Authorization": f"Bearer {r.json()['token']}"}


def status(client: TestClient, headers: dict[str, str]) -> int:
    return client.get(PROTECTED, headers=headers).status_code


def test_a_new_password_ends_old_sessions_after_the_clock_stepped_back(client, users, monkeypatch):
    users.add("rotated", "viewer", PASSWORD, replace=True)
    old = login(client, "rotated")
    assert status(client, old) == 200
    with clock_stepped_back(monkeypatch):
        users.add("rotated", "viewer", PASSWORD + "-new", replace=True)
        assert status(client, old) == 401
        new = login(client, "rotated", PASSWORD + "-new")
        assert status(client, new) == 200
    assert status(client, old) == 401  # nor once the clock is right again
    assert status(client, new) == 200


def test_the_cli_replace_ends_old_sessions_after_the_clock_stepped_back(
    client, users, harness, monkeypatch
):
    """`parkguide user add NAME --replace` while the API runs (the same database)."""
    from parkguide import cli

    users.add("cli-rotated", "manager", PASSWORD, replace=True)
    old = login(client, "cli-rotated")
    assert status(client, old) == 200
    args = ["user", "add", "cli-rotated", "--role", "manager", "--replace"]
    with clock_stepped_back(monkeypatch):
        monkeypatch.setattr(sys, "stdin", io.StringIO("a leaked token's end\n"))
        assert cli.main([*args, "--db", str(harness.db_path)]) == 0
        assert status(client, old) == 401
        assert status(client, login(client, "cli-rotated", "a leaked token's end")) == 200


def test_a_new_role_ends_old_sessions_after_the_clock_stepped_back(client, users, monkeypatch):
    users.add("promoted", "viewer", PASSWORD, replace=True)
    old = login(client, "promoted")
    assert status(client, old) == 200
    with clock_stepped_back(monkeypatch):
        users.add("promoted", "technician", PASSWORD, replace=True)  # same password
        assert status(client, old) == 401
        new = login(client, "promoted")
        assert client.get("/api/v1/auth/me", headers=new).json()["user"]["role"] == "technician"


def test_removed_and_added_again_ends_old_sessions_after_the_clock_stepped_back(
    client, users, monkeypatch
):
    users.add("returner", "viewer", PASSWORD, replace=True)
    old = login(client, "returner")
    with clock_stepped_back(monkeypatch):
        assert users.remove("returner")
        assert status(client, old) == 401
        users.add("returner", "viewer", PASSWORD)  # the same name, role and password
        assert status(client, old) == 401


def test_an_unchanged_user_keeps_its_session(client, users, monkeypatch):
    users.add("steady", "viewer", PASSWORD, replace=True)
    users.add("neighbour", "viewer", PASSWORD, replace=True)
    token = login(client, "steady")
    with clock_stepped_back(monkeypatch):
        users.add("neighbour", "manager", PASSWORD + "-new", replace=True)  # someone else
        assert status(client, token) == 200
        assert client.get("/api/v1/auth/me", headers=token).json()["user"]["name"] == "steady"
    assert status(client, token) == 200
    # an hour ahead (the clock ran ahead again): the session's own expiry still rules
    with clock_stepped_back(monkeypatch, -STEP_BACK_S):
        assert status(client, token) == 200


def old_format_token(name: str, secret: str = SECRET, ttl_s: float = 600.0) -> str:
    """A token as issued before session generations: user, issued, expires; validly signed."""
    signer = SessionSigner(secret.encode())
    now = time.time()
    body = {"u": name, "i": round(now, 6), "e": round(now + ttl_s, 3)}
    payload = _b64(json.dumps(body).encode("utf-8"))
    return f"{payload}.{signer._mac(payload)}"


def test_a_token_of_the_previous_format_is_refused(client, users):
    token = old_format_token("viewer")
    assert SessionSigner(SECRET.encode()).verify(token) is None
    assert status(client, {"Authorization": f"Bearer {token}"}) == 401
    client.cookies.set("parkguide_session_xinyuan", token)
    try:
        assert client.get(PROTECTED).status_code == 401
        assert client.get("/api/v1/auth/me").json()["user"] is None
    finally:
        client.cookies.clear()


def test_tokens_name_the_generation_read_with_the_password(client, users):
    """A password replaced while a login checks the old one: the token issued for that login
    names the old generation and counts for nothing (with times, it counted: it was issued
    after the replace)."""
    users.add("racer", "viewer", PASSWORD, replace=True)
    user = users.authenticate("racer", PASSWORD)
    assert user is not None and user.generation
    users.add("racer", "viewer", PASSWORD + "-new", replace=True)
    signer = SessionSigner(SECRET.encode())
    # as the login route does, after the check
    token, _ = signer.issue(user.name, ttl_s=600, generation=user.generation)
    assert status(client, {"Authorization": f"Bearer {token}"}) == 401
    current = users.get("racer")
    assert current is not None and current.generation != user.generation
    token, _ = signer.issue("racer", ttl_s=600, generation=current.generation)
    assert status(client, {"Authorization": f"Bearer {token}"}) == 200
    with pytest.raises(ValueError, match="generation"):
        signer.issue("racer", ttl_s=600, generation=None)  # no token without a generation


def test_a_forged_generation_is_refused(client, users):
    token = login(client, "viewer")["Authorization"].split()[1]
    payload, mac = token.split(".")
    data = json.loads(_unb64(payload))
    assert set(data) == {"u", "g", "i", "e"}
    data["g"] = "0" * 32  # another generation under the old MAC
    forged = _b64(json.dumps(data).encode()) + "." + mac
    assert status(client, {"Authorization": f"Bearer {forged}"}) == 401


OLD_SCHEMA = """
CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL,
                    created REAL NOT NULL);
"""


def old_database(path: str) -> None:
    """A journal database from before session generations, with one user."""
    template = UserStore(path + ".template")
    template.add("elder", "manager", PASSWORD)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("ATTACH DATABASE ? AS template", (path + ".template",))
        db.execute("INSERT INTO users SELECT name, role, hash, created FROM template.users")


def test_an_old_database_gets_generations_at_start(harness, tmp_path):
    db = str(tmp_path / "old.sqlite")
    old_database(db)
    # the API and `parkguide user add` starting on it at once: both find the column
    errors: list[BaseException] = []

    def start() -> None:
        try:
            UserStore(db)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
    assert columns == ["name", "role", "hash", "created", "generation"]
    elder = UserStore(db).get("elder")
    assert elder is not None and elder.generation and elder.role == "manager"
    app = create_app(harness.gateway, settings(), db_path=db)
    with TestClient(app) as c:
        assert (
            c.get(
                PROTECTED, headers={"Authorization": f"Bearer {old_format_token('elder')}"}
            ).status_code
            == 401
        )
        assert status(c, login(c, "elder")) == 200  # the same password still logs in


def test_a_user_written_without_a_generation_still_logs_in(harness, tmp_path):
    """A row an older `parkguide user add` wrote into an upgraded database (no generation)
    gets one at its first login; until then no token counts for it."""
    db = str(tmp_path / "mixed.sqlite")
    store = UserStore(db)
    store.add("mixed", "viewer", PASSWORD)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE users SET generation = NULL WHERE name = 'mixed'")
    assert store.get("mixed").generation is None
    app = create_app(harness.gateway, settings(), db_path=db)
    with TestClient(app) as c:
        token = login(c, "mixed")
        assert status(c, token) == 200
        assert store.get("mixed").generation


def test_concurrent_adds_of_a_new_name_do_not_both_succeed(tmp_path):
    store = UserStore(str(tmp_path / "race.sqlite"))
    outcomes: list[str] = []

    def add(i: int) -> None:
        try:
            store.add("twin", "viewer", f"password number {i}")
            outcomes.append("added")
        except UserError:
            outcomes.append("refused")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["added", "refused", "refused"]


def test_a_chinese_user_name_is_refused_saying_what_a_name_may_be(tmp_path):
    """'张伟' was refused as not "letters": it is letters, but not ASCII ones."""
    from api.auth import UserError, UserStore

    with pytest.raises(UserError, match="ASCII letters"):
        UserStore(str(tmp_path / "users.sqlite")).add("张伟", "viewer", PASSWORD)
