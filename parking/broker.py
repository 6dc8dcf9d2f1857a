"""Where the MQTT broker is and who we are to it: URL parsing and credentials.

Credentials are optional. They come from flags or the environment
(``PARKGUIDE_MQTT_USERNAME`` / ``PARKGUIDE_MQTT_PASSWORD``), never from
defaults in code. No paho import: :meth:`BrokerConfig.apply` sets up a client it is given.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

ENV_USERNAME = "PARKGUIDE_MQTT_USERNAME"
ENV_PASSWORD = "PARKGUIDE_MQTT_PASSWORD"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
_SUFFIX = re.compile(r"[0-9a-f]{16}")
_SUFFIXED_ID = re.compile(r"(.+)-[0-9a-f]{16}")


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(
        cls, url: str, username: str | None = None, password: str | None = None
    ) -> BrokerConfig:
        """Parse ``mqtt://[user[:pass]@]host[:port]`` (or ``mqtts://``); flags, then the
        environment, fill in credentials the URL does not carry."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        shown = _without_password(url)  # errors are printed and logged
        if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
            raise ValueError(f"broker URL {shown!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {shown!r}: no host")
        tls = parts.scheme in {"mqtts", "ssl"}
        try:
            port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
        except ValueError:
            raise ValueError(f"broker URL {shown!r}: bad port") from None
        user = (
            username
            or (unquote(parts.username) if parts.username else None)
            or os.environ.get(ENV_USERNAME)
        )
        pw = (
            password
            or (unquote(parts.password) if parts.password else None)
            or os.environ.get(ENV_PASSWORD)
        )
        return cls(
            host=parts.hostname, port=port, username=user or None, password=pw or None, tls=tls
        )

    def session_id(self, base: str, suffix: Callable[[], str]) -> str:
        """A stable MQTT client id for ``base`` that other broker users cannot guess: with
        a password, ``base`` plus ``suffix()``, a random suffix the caller keeps privately
        (:func:`new_client_suffix`). Mosquitto lets a client id be taken over by any login
        (the old connection is closed and its last will fires), so a guessable gateway id
        let a sign controller's login blind the whole site, over and over. Never derived
        from the password: mosquitto logs every id, and a log reader could test guesses
        against a digest offline. Without a password any client may connect anyway, so
        the plain ``base`` stays (no file to keep, and a dev setup's ids do not change)."""
        if not self.password:
            return base
        return f"{base}-{suffix()}"

    def apply(self, client: Any) -> None:
        """Credentials and TLS (the system's CAs) on a paho client, before it connects."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set()

    @property
    def url(self) -> str:
        """The URL without credentials, safe to log."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def backoff_delay(
    attempt: int, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Capped exponential backoff with full jitter: attempt 0 -> up to base seconds. Any
    attempt count works (an outage of days must not overflow the exponent)."""
    r = rng or random
    return r.uniform(0.5, 1.0) * min(cap, base * (2.0 ** min(max(attempt, 0), 60)))


def new_client_suffix() -> str:
    """A fresh random client-id suffix (64 bits: no login can guess it)."""
    return secrets.token_hex(8)


def is_client_suffix(text: str) -> bool:
    """``text`` is a suffix as :func:`new_client_suffix` draws them (a file cut short is not)."""
    return _SUFFIX.fullmatch(text) is not None


def shown_client_id(client_id: str) -> str:
    """``client_id`` safe to log: its secret suffix (or the password digest of earlier
    releases, which a log reader could brute-force) as ``***``."""
    m = _SUFFIXED_ID.fullmatch(client_id)
    return f"{m.group(1)}-***" if m else client_id


def _without_password(url: str) -> str:
    """``url`` with the password of its user part (if any) replaced by ``***``."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


class _PasswordFlagRefused(argparse.Action):
    """``--password`` of earlier releases: refused with what to do instead, and without
    echoing the password (argparse's "unrecognized arguments" would print it)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        parser.error(
            "--password is not taken (a command line is visible to every local user): put "
            f"the MQTT password in ${ENV_PASSWORD}, or name another variable with --password-env"
        )


def add_credential_arguments(parser: Any) -> None:
    """``--username`` and ``--password-env`` on an argparse parser: the password itself is
    never a flag (a command line is visible to every local user, ``ps`` and ``systemctl
    status``)."""
    parser.add_argument("--username", help=f"MQTT user name (default: none, or ${ENV_USERNAME})")
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help=f"environment variable holding the MQTT password (default: {ENV_PASSWORD})",
    )
    parser.add_argument("--password", action=_PasswordFlagRefused, help=argparse.SUPPRESS)


def broker_from_args(url: str, args: Any) -> BrokerConfig:
    """The broker of ``url`` (from the command line) with the credentials of
    :func:`add_credential_arguments`; ValueError (for the user) on a bad URL, a password in
    the URL, or a named password variable that is not set."""
    password = None
    name = getattr(args, "password_env", None)
    if name:
        password = os.environ.get(name)
        if password is None:
            raise ValueError(f"--password-env {name}: that variable is not set")
    broker = BrokerConfig.from_url(url, getattr(args, "username", None), password)
    if urlsplit(url if "://" in url else f"mqtt://{url}").password:
        # a command line is visible to every local user (ps, systemctl status)
        raise ValueError(
            f"broker URL {_without_password(url)!r}: a password in the URL is not taken (a "
            f"command line is visible to every local user): put it in ${ENV_PASSWORD}, or "
            "name another variable with --password-env, and give the URL without it"
        )
    return broker
