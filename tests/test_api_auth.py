# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Who may do what: the auth matrix, sessions, the login rate limit, `parkguide user add`."""

from __future__ import annotations

import logging
import subprocess

import pytest
from api_support import PASSWORD, SECRET, client, harness, settings, tokens, users  # noqa: F401
from conftest import parkguide_cmd
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import SessionSigner, UserStore

SPACE = "A-001"
GROUP = "urn:ngsi-ld:ParkingGroup:xinyuan:A"
SPOT = "urn:ngsi-ld:ParkingSpot:xinyuan:A-001"

# (method, path template, access) for every operation of the API; access is
# public | viewer | technician | manager (public = zone counts and signs, by default).
ROUTES = [
    ("POST", "/api/v1/auth/login", "open"),
    ("POST", "/api/v1/auth/logout", "open"),
    ("GET", "/api/v1/auth/me", "open"),
    ("GET", "/api/v1/zones", "public"),
    ("GET", "/api/v1/displays", "public"),
    ("GET", "/api/v1/stream", "public"),
    ("GET", "/ngsi-ld/v1/entities", "viewer"),  # no type: spots included
    ("GET", "/ngsi-ld/v1/entities/{entity_id}", "public"),  # a ParkingGroup
    ("GET", "/api/v1/site", "viewer"),
    ("GET", "/api/v1/spaces", "viewer"),
    ("GET", "/api/v1/spaces/{space}", "viewer"),
    ("GET", "/api/v1/agents", "viewer"),
    ("GET", "/api/v1/detectors", "viewer"),
    ("GET", "/api/v1/events", "viewer"),
    ("GET", "/api/v1/events.csv", "viewer"),
    ("GET", "/api/v1/history", "viewer"),
    ("GET", "/api/v1/assignments", "viewer"),
    ("GET", "/api/v1/arrivals", "viewer"),
    ("GET", "/api/v1/alerts", "viewer"),
    ("GET", "/metrics", "viewer"),
    ("GET", "/api/v1/detectors/raw", "technician"),
    ("GET", "/api/v1/agents/{agent}/health", "technician"),
    ("POST", "/api/v1/spaces/{space}/close", "manager"),
    ("POST", "/api/v1/spaces/{space}/open", "manager"),
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge", "manager"),
]
PATH_VALUES = {"space": SPACE, "entity_id": GROUP, "agent": "serial-bus-g", "alert_id": "x"}
# query strings and bodies that would fail validation: the access check must answer first
BAD_QUERY = {"limit": "-5", "since": "yesterday", "state": "parked", "step": "0", "type": "Car"}
BAD_BODY = b'{"reason": ' + b'"x' * 300 + b"}"


def allowed(access: str, role: str | None, public_read: bool) -> bool:
    if access == "open":
        return True
    if access == "public" and public_read:
        return True
    if role is None:
        return False
    return access in ("public", "viewer") or access == role


def call(client: TestClient, method: str, template: str, headers: dict[str, str]):
    path = template.format(**PATH_VALUES)
    if method == "GET":
        return client.get(path, params=BAD_QUERY, headers=headers)
    return client.post(
        path, content=BAD_BODY, headers={**headers, "content-type": "application/json"}
    )


def test_every_operation_is_in_the_matrix(client):
    spec = client.get("/openapi.json").json()
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ops == {(m, p) for m, p, _ in ROUTES}


@pytest.mark.parametrize("role", [None, "viewer", "manager", "technician"])
def test_access_matrix_public_read(client, tokens, role):
    headers = tokens[role] if role else {}
    for method, template, access in ROUTES:
        if template == "/api/v1/stream" and allowed(access, role, True):
            continue  # an endless stream; tested against a real server in test_api_live
        if template in ("/api/v1/auth/login", "/api/v1/auth/logout"):
            continue  # count against the rate limit / end the shared sessions; tested below
        r = call(client, method, template, headers)
        assert not 300 <= r.status_code < 400, (method, template, r.status_code)
        assert r.status_code < 500, (method, template, r.text)
        if allowed(access, role, True):
            assert r.status_code not in (401, 403), (method, template, role, r.text)
        else:
            expected = 401 if role is None else 403
            assert r.status_code == expected, (method, template, role, r.status_code, r.text)
            assert "detail" in r.json()


def test_nothing_is_public_when_public_read_is_off(harness, users):
    app = create_app(harness.gateway, settings(public_read=False), db_path=str(harness.db_path))
    with TestClient(app) as c:
        for method, template, access in ROUTES:
            r = call(c, method, template, {})
            if access == "open":
                assert r.status_code not in (401, 403)
                continue
            assert r.status_code == 401, (method, template, r.status_code)
        me = c.get("/api/v1/auth/me").json()
        assert me["user"] is None and me["public_read"] is False and me["site"] == "xinyuan"
        token = c.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
        c.cookies.clear()
        h = {"Authorization": f"Bearer {token.json()['token']}"}
        assert c.get("/api/v1/zones", headers=h).status_code == 200


def test_no_redirect_for_a_trailing_slash(client):
    r = client.get("/api/v1/spaces/", follow_redirects=False)
    assert r.status_code in (401, 404)


def test_session_cookie_login_and_logout(client):
    r = client.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert r.json()["role"] == "manager" and r.json()["can_change"] is True
    assert client.get("/api/v1/spaces").status_code == 200  # the cookie alone is enough
    assert client.get("/api/v1/auth/me").json()["user"]["name"] == "manager"
    taken = client.cookies.get("parkguide_session")  # e.g. left on a shared PC
    assert client.post("/api/v1/auth/logout").status_code == 204
    assert client.get("/api/v1/spaces").status_code == 401
    client.cookies.clear()
    # the session is over, not only the cookie: its token no longer counts anywhere
    bearer = {"Authorization": f"Bearer {taken}"}
    assert client.get("/api/v1/spaces", headers=bearer).status_code == 401
    assert client.post("/api/v1/auth/logout").status_code == 204  # no session: fine too


def test_a_new_password_ends_the_old_sessions(client, users):
    r = client.post("/api/v1/auth/login", json={"name": "technician", "password": PASSWORD})
    old = {"Authorization": f"Bearer {r.json()['token']}"}
    client.cookies.clear()
    assert client.get("/api/v1/site", headers=old).status_code == 200
    users.add("technician", "technician", PASSWORD + "-new", replace=True)
    try:
        assert client.get("/api/v1/site", headers=old).status_code == 401
        r = client.post(
            "/api/v1/auth/login", json={"name": "technician", "password": PASSWORD + "-new"}
        )
        assert (
            client.get(
                "/api/v1/site", headers={"Authorization": f"Bearer {r.json()['token']}"}
            ).status_code
            == 200
        )
    finally:
        client.cookies.clear()
        users.add("technician", "technician", PASSWORD, replace=True)


def test_forged_and_expired_tokens_are_no_login(client, tokens):
    token = tokens["viewer"]["Authorization"].split()[1]
    payload, mac = token.split(".")
    forged = payload.replace(payload[2], "A" if payload[2] != "A" else "B") + "." + mac
    assert (
        client.get("/api/v1/site", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    )
    expired, _ = SessionSigner(SECRET.encode()).issue("viewer", ttl_s=60, now=1000.0)
    assert (
        client.get("/api/v1/site", headers={"Authorization": f"Bearer {expired}"}).status_code
        == 401
    )
    other_secret, _ = SessionSigner(b"another secret" * 4).issue("viewer", ttl_s=600)
    assert (
        client.get("/api/v1/site", headers={"Authorization": f"Bearer {other_secret}"}).status_code
        == 401
    )
    good, _ = SessionSigner(SECRET.encode()).issue("viewer", ttl_s=600)
    assert (
        client.get("/api/v1/site", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    )


def test_wrong_password_and_bad_login_bodies(client):
    r = client.post("/api/v1/auth/login", json={"name": "viewer", "password": "wrong password"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    r = client.post("/api/v1/auth/login", json={"name": "viewer"})
    assert r.status_code == 422 and "password" in r.text
    client.cookies.clear()


def test_login_rate_limit_per_user_and_per_client(harness, users):
    app = create_app(
        harness.gateway,
        settings(login_max_failures_per_user=2, login_max_attempts_per_client=4),
        db_path=str(harness.db_path),
    )
    with TestClient(app) as c:
        bad = {"name": "manager", "password": "not the password"}
        assert [c.post("/api/v1/auth/login", json=bad).status_code for _ in range(2)] == [401, 401]
        locked = c.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
        assert "too many login attempts" in locked.json()["detail"]
        # another user from the same client still may, until the client's budget is spent
        good = {"name": "viewer", "password": PASSWORD}
        assert c.post("/api/v1/auth/login", json=good).status_code == 200
        assert c.post("/api/v1/auth/login", json=good).status_code == 200
        assert c.post("/api/v1/auth/login", json=good).status_code == 429


def test_random_secret_warns_and_sessions_end_at_restart(harness, users, monkeypatch, caplog):
    monkeypatch.delenv("PARKGUIDE_SESSION_SECRET", raising=False)
    caplog.set_level(logging.WARNING, logger="api.app")
    from api.settings import ApiSettings

    first = create_app(harness.gateway, ApiSettings(), db_path=str(harness.db_path))
    assert any("sessions" in r.message or "login ends" in r.message for r in caplog.records)
    with TestClient(first) as c:
        token = c.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD}).json()
    restarted = create_app(harness.gateway, ApiSettings(), db_path=str(harness.db_path))
    with TestClient(restarted) as c:
        h = {"Authorization": f"Bearer {token['token']}"}
        assert c.get("/api/v1/site", headers=h).status_code == 401


def test_user_add_cli_reads_the_password_from_stdin(tmp_path, subprocess_env):
    db = tmp_path / "journal.sqlite"
    cmd = parkguide_cmd("user", "add", "alice", "--role", "manager", "--db", str(db))
    r = subprocess.run(cmd, input="a long enough password\n", capture_output=True, text=True,
                       env=subprocess_env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "alice (manager)" in r.stdout
    store = UserStore(str(db))
    assert store.authenticate("alice", "a long enough password").role == "manager"
    assert store.authenticate("alice", "a long enough passwor") is None
    again = subprocess.run(cmd, input="another password\n", capture_output=True, text=True,
                           env=subprocess_env, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr
    short = subprocess.run(
        parkguide_cmd("user", "add", "bob", "--role", "viewer", "--db", str(db)),
        input="short\n", capture_output=True, text=True, env=subprocess_env, timeout=60,
    )  # fmt: skip
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    assert store.get("bob") is None


def test_a_broken_journal_is_a_clear_503_and_the_rest_keeps_serving(harness, tmp_path):
    db = tmp_path / "journal.sqlite"
    UserStore(str(db))  # a valid database at start
    app = create_app(harness.gateway, settings(), db_path=str(db))
    with TestClient(app) as c:
        db.write_bytes(b"this is not an SQLite database" * 200)
        r = c.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
        assert r.status_code == 503 and "journal database is not available" in r.json()["detail"]
        assert c.get("/api/v1/zones").status_code == 200  # live state needs no database
