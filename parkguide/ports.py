"""Local TCP ports: pick a free one, check one can be listened on, wait for a server.

Used by the demo to place its embedded broker, simulators and dashboard, and
by the tests and benchmarks to start real servers on free ports.
"""

from __future__ import annotations

import errno
import os
import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """None if a server could listen on ``host:port`` now, else why not, in words.

    "in use" is said only when something holds the port; a host name that does not
    resolve, an address that is not this machine's or a port that needs privileges
    each say so (they are not fixed by picking another port).
    """
    if not 0 < port < 65536:
        return f"port {port} is out of range (1-65535)"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"cannot resolve the host {host!r} ({reason})"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        if os.name != "nt":
            # as servers do (asyncio, uvicorn): connections of a server that just stopped,
            # still in TIME_WAIT, do not hold the port; a listening socket still does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is in use"
            return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now (``port_problem`` says why not)."""
    return port_problem(host, port) is None


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Return once something accepts connections on host:port; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
