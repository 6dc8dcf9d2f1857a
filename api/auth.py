"""Users, password hashes, signed sessions and the login rate limit.

Pure of HTTP: the FastAPI dependencies that use these live in ``api.deps``.
Users live in the journal database (table ``users``); passwords are hashed
with argon2id. A session is an HMAC-SHA256-signed token naming the user, its
session generation and its expiry, sent as an HttpOnly cookie or as a bearer
token; the role and the generation are read from the database on every request,
so a changed role applies at once and a replaced or removed user's sessions end.

The generation is a random nonce stored with the user and drawn anew whenever its
password or role is replaced or it is added again: a token counts only while it
names the user's current one. It does not depend on the clock (a comparison of
times did, and failed after the host's clock stepped back).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from parking.private import create_private

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("viewer", "manager", "technician")
"""viewer reads; manager also changes things and reads the plates of arrivals; technician
also reads raw sensor data."""

CAN_CHANGE = frozenset({"manager"})
CAN_READ_RAW = frozenset({"technician"})
CAN_READ_PLATES = frozenset({"manager"})  # personal data: docs/privacy.md

USER_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256

_hasher = PasswordHasher()
MAX_CONCURRENT_VERIFICATIONS = 2
"""Password checks at once, in the whole process: each argon2id check takes 64 MiB for ~0.15 s,
so parallel logins must not add up to gigabytes."""
_verify_slots = threading.BoundedSemaphore(MAX_CONCURRENT_VERIFICATIONS)
# verified against when the user does not exist, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    generation TEXT  -- the session generation; NULL only in rows older code wrote
);
-- sessions ended by a logout before they expired (their token's MAC), until they expire
CREATE TABLE IF NOT EXISTS revoked_sessions (
    mac TEXT PRIMARY KEY,
    expires REAL NOT NULL
)
"""
USERS_COLUMNS_ADDED = ("generation TEXT",)
"""Columns of ``users`` added since the first release, for databases made before them."""

NEW_GENERATION_SQL = "lower(hex(randomblob(16)))"
"""A fresh session generation drawn by SQLite (also for a journal backup: gateway.backup)."""
GENERATION_RE = re.compile(r"[0-9A-Za-z_-]{1,128}")


def add_missing_user_columns(db: sqlite3.Connection) -> None:
    """Give a ``users`` table from an earlier release the columns added since."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
    for column in USERS_COLUMNS_ADDED:
        if column.split()[0] not in columns:
            db.execute(f"ALTER TABLE users ADD COLUMN {column}")


def new_generation() -> str:
    """A fresh session generation: 128 random bits."""
    return secrets.token_hex(16)


class UserError(ValueError):
    """A user that cannot be added: bad name, role or password, or a duplicate."""


class VerifierBusy(RuntimeError):
    """Every password-check slot stayed taken for the whole wait: try again shortly."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created: float
    generation: str | None = None
    """The session generation a token must name (None: none yet, no token counts)."""

    @property
    def can_change(self) -> bool:
        return self.role in CAN_CHANGE

    @property
    def can_read_raw(self) -> bool:
        return self.role in CAN_READ_RAW

    @property
    def can_read_plates(self) -> bool:
        return self.role in CAN_READ_PLATES


def check_user_name(name: str) -> None:
    if not USER_NAME_RE.match(name):
        raise UserError(
            f"user name {name!r} must be 1-64 characters of ASCII letters, digits, '_', '.',"
            " '@', '-' (a login name such as zhang.wei; not Chinese characters)"
        )


GUESSED_FIRST = frozenset(
    {
        "password",
        "password1",
        "password123",
        "passw0rd",
        "p@ssw0rd",
        "p@ssword",
        "qwertyuiop",
        "qwerty123",
        "qwer1234",
        "1qaz2wsx",
        "1q2w3e4r",
        "1q2w3e4r5t",
        "zaq12wsx",
        "asdfghjkl",
        "asdfghjk",
        "zxcvbnm1",
        "iloveyou",
        "iloveyou1",
        "woaini1314",
        "5201314520",
        "a123456789",
        "aa123456",
        "abc12345",
        "abcd1234",
        "admin123",
        "administrator",
        "welcome1",
        "welcome123",
        "changeme",
        "changeme1",
        "letmein1",
        "trustno1",
        "sunshine",
        "princess",
        "football",
        "baseball",
        "superman",
        "starwars",
        "dragon123",
        "monkey123",
        "computer",
        "internet",
        "parking",
        "parking1",
        "parkguide",
        "manager1",
        "manager123",
    }
)
"""Passwords of 8 or more characters that guessing starts with (the most common ones of
public leaks, and this product's own words): refused whatever the length rule says."""


def _runs_in_order(text: str) -> bool:
    """Every character one up (or one down) from the one before: 12345678, abcdefgh."""
    steps = {ord(b) - ord(a) for a, b in zip(text, text[1:], strict=False)}
    return steps in ({1}, {-1})


def check_password(password: str, name: str = "") -> None:
    """Refuse a password anyone guessing would try early: too short or long, one of
    :data:`GUESSED_FIRST`, the user's name in it, two characters or fewer, a run
    (12345678). The login limiter slows guessing; it cannot make such a password safe."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    lowered = password.lower()
    if name and len(name) >= 3 and name.lower() in lowered:
        raise UserError("the password must not contain the user name")
    if lowered in GUESSED_FIRST or len(set(lowered)) <= 2 or _runs_in_order(lowered):
        raise UserError(
            "the password is one that guessing tries first (a common password, a run such "
            "as 12345678, or one or two characters repeated): choose another, e.g. a few "
            "unrelated words"
        )


def _user(name: str, role: str, created: float, generation: str | None) -> User:
    return User(name, role, created, generation)


_USER_COLUMNS = "name, role, created, generation"


REVOKED_KEEP_S = 7 * 86400.0
"""How long past its expiry a logged-out token stays on the revoked list: longer than any clock
step this host's NTP would make."""


class UserStore:
    """The ``users`` table of the journal database."""

    def __init__(self, db_path: str):
        self.db_path = db_path
        create_private(db_path)  # password hashes: for the service's own user only
        with self._connect() as db:
            db.executescript(USERS_SCHEMA)
            if self._needs_migration(db):
                # the API and `parkguide user add` may both start on an old database at once:
                # one of them adds the columns, the other then finds them there
                db.execute("BEGIN IMMEDIATE")
                if self._needs_migration(db):
                    add_missing_user_columns(db)
                    # users from before generations: their old tokens have none and are
                    # refused anyway; a new one each lets them log in again
                    db.execute(
                        f"UPDATE users SET generation = {NEW_GENERATION_SQL} "
                        "WHERE generation IS NULL"
                    )

    @staticmethod
    def _needs_migration(db: sqlite3.Connection) -> bool:
        columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
        if any(column.split()[0] not in columns for column in USERS_COLUMNS_ADDED):
            return True
        return (
            db.execute("SELECT 1 FROM users WHERE generation IS NULL LIMIT 1").fetchone()
            is not None
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=5.0)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def add(self, name: str, role: str, password: str, *, replace: bool = False) -> User:
        """Add a user (or replace its role and password); raises UserError saying what is wrong.

        Either way the user gets a new session generation, so every session it had ends."""
        check_user_name(name)
        if role not in ROLES:
            raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
        check_password(password, name)
        user = _user(name, role, time.time(), new_generation())
        digest = _hasher.hash(password)
        with self._connect() as db:
            # the check and the write in one transaction: two `parkguide user add` at once
            # cannot both find the name free
            db.execute("BEGIN IMMEDIATE")
            exists = db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise UserError(f"user {name!r} already exists (use --replace to change it)")
            db.execute(
                "INSERT OR REPLACE INTO users (name, role, hash, created, generation) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, role, digest, user.created, user.generation),
            )
        return user

    def get(self, name: str) -> User | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
        return _user(*row) if row else None

    def authenticate(self, name: str, password: str, wait_s: float | None = None) -> User | None:
        """The user if the password matches, else None (same cost either way). At most
        MAX_CONCURRENT_VERIFICATIONS checks run at once; one that waited ``wait_s`` seconds
        for its turn (None: as long as it takes) raises VerifierBusy."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_USER_COLUMNS}, hash FROM users WHERE name = ?", (name,)
            ).fetchone()
        digest = row[4] if row else _DUMMY_HASH
        if not _verify_slots.acquire(timeout=wait_s):
            raise VerifierBusy("too many password checks at once")
        try:
            _hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        finally:
            _verify_slots.release()
        if row is None:
            return None
        if row[3] is None:  # written by an older `parkguide user add` while this one runs
            row = self._give_generation(name, digest)
            if row is None:  # replaced or removed meanwhile: the password checked is gone
                return None
        # the generation read with the hash: if the user is replaced while its password is
        # being checked, the token about to be issued names the old one and counts for nothing
        return _user(*row[:4])

    def _give_generation(self, name: str, digest: str) -> tuple | None:
        with self._connect() as db:
            db.execute(
                f"UPDATE users SET generation = {NEW_GENERATION_SQL} "
                "WHERE name = ? AND hash = ? AND generation IS NULL",
                (name, digest),
            )
            return db.execute(
                f"SELECT {_USER_COLUMNS}, hash FROM users WHERE name = ? AND hash = ?",
                (name, digest),
            ).fetchone()

    def remove(self, name: str) -> bool:
        """Delete a user (False: there was none); every session it had ends with it, and a
        user added again under the same name does not bring them back (it gets a new
        session generation)."""
        with self._connect() as db:
            gone = db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount
        return gone > 0

    def all(self) -> list[User]:
        """Every user, by name."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()
        return [_user(*row) for row in rows]

    def revoke(self, session: Session) -> None:
        """End a session before it expires (logout); ones expired REVOKED_KEEP_S ago are
        forgotten (not at once: a clock stepped forward past a token's expiry and back
        would make a logged-out token good again)."""
        with self._connect() as db:
            db.execute(
                "DELETE FROM revoked_sessions WHERE expires < ?", (time.time() - REVOKED_KEEP_S,)
            )
            db.execute(
                "INSERT OR REPLACE INTO revoked_sessions (mac, expires) VALUES (?, ?)",
                (session.mac, session.expires),
            )

    def session_user(self, session: Session) -> User | None:
        """The user of a verified session, or None when it no longer counts: the user is
        gone, was replaced (new password or role) or added again since the session began
        (its session generation is another), or the session was logged out."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (session.name,)
            ).fetchone()
            if row is None or row[3] is None:
                return None
            if not hmac.compare_digest(session.generation.encode(), row[3].encode()):
                return None
            revoked = db.execute(
                "SELECT 1 FROM revoked_sessions WHERE mac = ?", (session.mac,)
            ).fetchone()
        return None if revoked else _user(*row)

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM users").fetchone()[0]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """What a valid token says: who, with which of the user's session generations, when it
    was issued and expires, and its MAC (its id)."""

    name: str
    generation: str
    issued: float
    expires: float
    mac: str


class SessionSigner:
    """Issues and checks ``<payload>.<hmac>`` tokens: the user name, the user's session
    generation, when the token was issued and when it expires. Tokens without a generation
    (made before there were any) are refused."""

    def __init__(self, secret: bytes):
        self._key = hashlib.sha256(b"parkguide-session\0" + secret).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(
        self, name: str, ttl_s: float, now: float | None = None, *, generation: str | None
    ) -> tuple[str, float]:
        """A token for the user ``name`` with its session ``generation`` (``User.generation``
        as read from :class:`UserStore` with the password hash)."""
        if not isinstance(generation, str) or not GENERATION_RE.fullmatch(generation):
            raise ValueError(f"no session generation for user {name!r}: read it from UserStore")
        issued = time.time() if now is None else now
        expires = issued + ttl_s
        body = {"u": name, "g": generation, "i": round(issued, 6), "e": round(expires, 3)}
        payload = _b64(json.dumps(body).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}", expires

    def verify(self, token: str, now: float | None = None) -> Session | None:
        """The session of a valid, unexpired token; None for anything else. Whether its user
        still accepts it is :meth:`UserStore.session_user`'s to say."""
        if not token or len(token) > 1024 or token.count(".") != 1:
            return None
        payload, mac = token.split(".")
        try:
            if not hmac.compare_digest(mac, self._mac(payload)):
                return None
            data = json.loads(_unb64(payload))
        except (ValueError, UnicodeError):
            return None
        if not isinstance(data, dict):
            return None
        name, generation = data.get("u"), data.get("g")
        issued, expires = data.get("i"), data.get("e")
        if not isinstance(generation, str) or not GENERATION_RE.fullmatch(generation):
            return None  # none: a token of the previous format, whose user logs in again
        if not isinstance(name, str) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in (issued, expires)
        ):
            return None
        if expires < (time.time() if now is None else now):
            return None
        return Session(name, generation, float(issued), float(expires), mac)


def client_key(host: str) -> str:
    """The client a login limit counts: an IPv6 address by its /64 (a subscriber gets a whole
    /64, so counted by address every guess could come from a new one for free), an
    IPv4-mapped IPv6 address as the IPv4 one; anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address.exploded.split("%")[0], 64), strict=False))
    return str(address)


class LoginLimiter:
    """Sliding-window limits: failed logins per user name from one client, attempts per
    client, and a far higher ceiling of failures per user name from anywhere. A client is an
    address, an IPv6 one by its /64 (:func:`client_key`).

    Failures lock a name out only for the client they came from: counted per name alone,
    five guesses from anyone kept a manager out for good (the right password refused too).
    The ceiling (``USER_CEILING`` times the per-client limit) stops guessing spread over many
    clients without locking the manager out: once reached (logged), a client that failed for
    that name within the window is refused, so each guessing client is down to one guess a
    window, while a client with no failure for it still gets its try, and one that logged in
    as that name within ``KNOWN_CLIENT_S`` keeps its per-client limit (a typo of the manager's
    own). Those known pairs are at most ``KNOWN_CLIENTS``, the longest unused forgotten first;
    only a right password adds one.

    An attempt let through counts as a failure of its name and client until it is known
    to be none (:meth:`failed`, :meth:`succeeded` or :meth:`release`): parallel guesses,
    whose failures would only be recorded after their slow password checks, cannot get
    past the limit together."""

    IN_FLIGHT_RETRY_S = 1.0  # attempts in flight decide within about a second
    USER_CEILING = 20  # failures per name from anywhere, in per-client limits
    KNOWN_CLIENT_S = 30 * 86400.0
    KNOWN_CLIENTS = 4096

    def __init__(self, max_failures_per_user: int, max_attempts_per_client: int, window_s: float):
        self.max_user = max_failures_per_user
        self.max_client = max_attempts_per_client
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}  # by name and client
        self._user_failures: dict[str, deque[float]] = {}  # by name, from anywhere
        self._attempts: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}  # by name and client
        self._ceiling_logged: dict[str, float] = {}
        self._known: OrderedDict[str, float] = OrderedDict()  # name and client: last login
        self._lock = threading.Lock()

    @staticmethod
    def _key(user: str, client: str) -> str:
        return f"{user}\0{client_key(client)}"

    def _trim(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        q = table.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def _known_recently(self, key: str, now: float) -> bool:
        since = self._known.get(key)
        if since is None:
            return False
        if since <= now - self.KNOWN_CLIENT_S:
            del self._known[key]
            return False
        return True

    def check(self, user: str, client: str, now: float | None = None) -> float:
        """Seconds to wait before another attempt is allowed (0: go ahead); a go-ahead records
        the attempt and holds one of the name's failures from this client until the
        attempt's outcome is told."""
        now = time.monotonic() if now is None else now
        client = client_key(client)
        key = self._key(user, client)
        with self._lock:
            if len(self._attempts) > 100_000 or len(self._failures) > 100_000:
                self._sweep(now)
            attempts = self._trim(self._attempts, client, now)
            failures = self._trim(self._failures, key, now)
            everywhere = self._trim(self._user_failures, user, now)
            in_flight = self._in_flight.get(key, 0)
            ceiling = self.max_user * self.USER_CEILING
            wait = 0.0
            if len(attempts) >= self.max_client:
                wait = max(wait, attempts[0] + self.window_s - now)
            if len(failures) >= self.max_user:
                wait = max(wait, failures[0] + self.window_s - now)
            elif len(failures) + in_flight >= self.max_user:
                wait = max(wait, self.IN_FLIGHT_RETRY_S)
            if len(everywhere) >= ceiling:
                if now - self._ceiling_logged.get(user, -math.inf) >= self.window_s:
                    self._ceiling_logged[user] = now
                    log.warning(
                        "%d failed logins for %r from several addresses within %.0f s: each"
                        " address that failed for it is refused until then (guessing spread"
                        " over many addresses?)",
                        len(everywhere), user[:64], self.window_s,
                    )  # fmt: skip
                if not self._known_recently(key, now):
                    if failures:  # until its failure, or enough of everyone's, is old
                        below = everywhere[len(everywhere) - ceiling]
                        wait = max(wait, min(failures[-1], below) + self.window_s - now)
                    elif in_flight:
                        wait = max(wait, self.IN_FLIGHT_RETRY_S)
            if wait > 0:
                return wait
            attempts.append(now)
            self._in_flight[key] = in_flight + 1
            return 0.0

    def _settle(self, key: str) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def failed(self, user: str, client: str, now: float | None = None) -> None:
        """The attempt let through by :meth:`check` had a wrong name or password."""
        now = time.monotonic() if now is None else now
        key = self._key(user, client)
        with self._lock:
            self._settle(key)
            self._trim(self._failures, key, now).append(now)
            self._trim(self._user_failures, user, now).append(now)

    def succeeded(self, user: str, client: str, now: float | None = None) -> None:
        """The attempt let through by :meth:`check` logged in: the failures of its name from
        its client are forgotten (others' guesses still count against the ceiling), and the
        pair is known (past the ceiling it keeps its per-client limit)."""
        now = time.monotonic() if now is None else now
        key = self._key(user, client)
        with self._lock:
            self._settle(key)
            self._failures.pop(key, None)
            self._known[key] = now
            self._known.move_to_end(key)
            while len(self._known) > self.KNOWN_CLIENTS:
                self._known.popitem(last=False)

    def release(self, user: str, client: str) -> None:
        """The attempt let through by :meth:`check` ended undecided (server busy, journal down)."""
        with self._lock:
            self._settle(self._key(user, client))

    def _sweep(self, now: float) -> None:
        for table in (self._attempts, self._failures, self._user_failures):
            for key in [k for k, q in table.items() if not q or q[-1] <= now - self.window_s]:
                del table[key]
        for user in [u for u, t in self._ceiling_logged.items() if t <= now - self.window_s]:
            del self._ceiling_logged[user]
