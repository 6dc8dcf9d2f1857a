"""Where the MQTT broker is and who we are to it: URL parsing and credentials.

Credentials are optional. They come from flags or the environment
(``PARKGUIDE_MQTT_USERNAME`` / ``PARKGUIDE_MQTT_PASSWORD``), never from
defaults in code. Over TLS (``mqtts://``) the broker's certificate is checked against the
system's CAs, or against ``--ca-file`` / ``PARKGUIDE_MQTT_CA_FILE`` for a private CA. No
paho import: :meth:`BrokerConfig.apply` sets up a client it is given.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

ENV_USERNAME = "PARKGUIDE_MQTT_USERNAME"
ENV_PASSWORD = "PARKGUIDE_MQTT_PASSWORD"
ENV_CA_FILE = "PARKGUIDE_MQTT_CA_FILE"
DEFAULT_PORT = 1883
ROLE_LOGINS = ("gateway", "api", "gate", "signs")
"""The shipped ACL's fixed broker usernames (deploy/mosquitto/parkguide.acl). Agents, gates
and signs log in under their own ids (agent, entrance, display), which its patterns take as
the username: an id equal to another's or to one of these would share its login's rights."""
DEFAULT_TLS_PORT = 8883
_X509_HOSTNAME_MISMATCH = 62  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH
_SUFFIX = re.compile(r"[0-9a-f]{16}")
_SUFFIXED_ID = re.compile(r"(.+)-[0-9a-f]{16}")


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # TLS: the CA the broker's certificate must chain to

    @classmethod
    def from_url(
        cls,
        url: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> BrokerConfig:
        """Parse ``mqtt://[user[:pass]@]host[:port]`` (or ``mqtts://``); flags, then the
        environment, fill in credentials and the CA file the URL does not carry. A CA file
        that cannot be read as one, or given for a broker without TLS, is a ValueError."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        shown = _without_password(url)  # errors are printed and logged
        if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
            raise ValueError(f"broker URL {shown!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {shown!r}: no host")
        tls = parts.scheme in {"mqtts", "ssl"}
        try:
            given = parts.port
        except ValueError:
            raise ValueError(f"broker URL {shown!r}: bad port") from None
        if given == 0:  # no broker listens on port 0: said, not taken for "no port"
            raise ValueError(f"broker URL {shown!r}: bad port 0")
        port = given or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
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
        if ca_file and not tls:
            raise ValueError(
                f"broker URL {shown!r}: --ca-file is for TLS: use mqtts:// (the broker's "
                "TLS listener, usually port 8883)"
            )
        # the variable may sit in an env file that services on the box's plain listener
        # share: without TLS it is not used
        ca = (ca_file or os.environ.get(ENV_CA_FILE) or None) if tls else None
        if ca is not None:
            _check_ca_file(ca)
        return cls(
            host=parts.hostname,
            port=port,
            username=user or None,
            password=pw or None,
            tls=tls,
            ca_file=ca,
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

    def ssl_context(self) -> ssl.SSLContext:
        """What a TLS connection to the broker trusts: ``ca_file``, else the system's CAs
        (``SSL_CERT_FILE`` works there too); the certificate must name the host."""
        return ssl.create_default_context(cafile=self.ca_file)

    def apply(self, client: Any) -> None:
        """Credentials and TLS (:meth:`ssl_context`) on a paho client, before it connects."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set_context(self.ssl_context())

    def why_unreachable(self, exc: BaseException | None) -> str:
        """What to say when connecting failed with ``exc``: a TLS failure explained (a
        certificate not trusted, a port that does not speak TLS), else the error itself.
        paho's on_connect_fail gets no exception: pass ``sys.exc_info()[1]`` there (paho
        calls it while handling the connect's error)."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            if exc.verify_code == _X509_HOSTNAME_MISMATCH:
                return (
                    f"the broker's TLS certificate is not for {self.host} ({exc.verify_message}):"
                    " use the host name (or address) the certificate gives"
                )
            where = f"--ca-file or ${ENV_CA_FILE}" if self.ca_file is None else self.ca_file
            return (
                f"the broker's TLS certificate is not trusted ({exc.verify_message}): "
                f"its CA must be in {where}"
            )
        if self.tls and isinstance(exc, ssl.SSLError | ConnectionResetError):
            # a plain MQTT listener answers a TLS hello by closing the connection
            return f"{exc}: is port {self.port} the broker's TLS listener?"
        return str(exc) if exc is not None else "connection failed"

    def why_closed_early(self, reason: object = None) -> str:
        """What to say when a connection ended before the broker answered our CONNECT:
        no answer within the keepalive (``reason`` says so: a hung broker, or a proxy or
        NAT in front of one it cannot reach), else a hang-up (a TLS listener does so to a
        plain client; so does a broker out of connections)."""
        if is_keepalive_timeout(reason):
            return (
                "the broker took the connection but did not answer within the keepalive (a"
                " hung broker, or a proxy or NAT in front of it that cannot reach it)"
            )
        hint = "" if self.tls else f": is port {self.port} a TLS listener (then use mqtts://)?"
        return f"the broker closed the connection before accepting it{hint}"

    @property
    def url(self) -> str:
        """The URL without credentials, safe to log."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def is_keepalive_timeout(reason: object) -> bool:
    """paho's reason for a connection it dropped itself: no packet from the broker within
    the keepalive (paho 2 reports it twice: once from its keepalive check, once from the
    loop)."""
    return reason is not None and "keep alive" in str(reason).lower()


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


def _check_ca_file(path: str) -> None:
    """ValueError unless ``path`` reads as a CA bundle (PEM), so a wrong path is said at
    start, not as an endless TLS failure."""
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"CA file {path}: no such file") from None
    except PermissionError:
        raise ValueError(f"CA file {path}: not readable by this user") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"CA file {path}: not a PEM certificate file ({exc})") from None


def refusal_hint(reason: str, broker: BrokerConfig) -> str:
    """What to check when the broker refused a connection for ``reason`` (a CONNACK's
    reason text): the login, for a refusal of its credentials; else nothing."""
    low = str(reason).lower()
    if "password" not in low and "authori" not in low:
        return ""
    if broker.username is None:
        given = "no user name was given"
    elif broker.password is None:
        given = f"user {broker.username!r} was given without a password"
    else:
        given = f"user {broker.username!r} was given with a password"
    return (
        f" -- check the login: {given} (--username, --password-env, or {ENV_USERNAME} and"
        f" {ENV_PASSWORD} in the service's environment file)"
    )


def public_url(url: str) -> str:
    """The URL without user info or query (it could carry a password or a token)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 address
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help=f"mqtts://: the CA the broker's certificate must chain to (default: "
        f"${ENV_CA_FILE}, else the system's CAs)",
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
    broker = BrokerConfig.from_url(
        url, getattr(args, "username", None), password, getattr(args, "ca_file", None)
    )
    if urlsplit(url if "://" in url else f"mqtt://{url}").password:
        # a command line is visible to every local user (ps, systemctl status)
        raise ValueError(
            f"broker URL {_without_password(url)!r}: a password in the URL is not taken (a "
            f"command line is visible to every local user): put it in ${ENV_PASSWORD}, or "
            "name another variable with --password-env, and give the URL without it"
        )
    return broker
