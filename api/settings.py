"""Settings of the API and dashboard, from the environment (``PARKGUIDE_*``).

Secrets come only from the environment. Without ``PARKGUIDE_SESSION_SECRET``
the app still starts, with a random secret, and says that sessions end at
restart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Everything the API can be told; each field is ``PARKGUIDE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PARKGUIDE_", extra="ignore")

    session_secret: SecretStr | None = Field(
        None,
        description="signs session cookies and bearer tokens; at least 32 characters. "
        "Unset: a random secret, so every session ends when the service restarts.",
    )
    public_read: bool = Field(
        True,
        description="zone counts and sign contents readable without login (residents' phones); "
        "false: everything needs login",
    )
    session_ttl_s: float = Field(12 * 3600, gt=60, description="how long a login lasts")
    cookie_secure: Literal["auto"] | bool = Field(
        "auto",
        description="mark the session cookie Secure: auto when the login came over HTTPS "
        "(directly, or from a trusted proxy's X-Forwarded-Proto); true always (behind TLS)",
    )
    login_max_failures_per_user: int = Field(
        5,
        ge=1,
        description="failed logins per user name from one client address within the window "
        "before 429 (20 times as many from anywhere)",
    )
    login_max_attempts_per_client: int = Field(
        20, ge=1, description="login attempts per client address within the window before 429"
    )
    login_window_s: float = Field(300.0, gt=0, description="rate-limit window for logins")
    long_occupied_h: float = Field(
        72.0, gt=0, description="a space occupied for longer than this raises an alert"
    )
    journal_disk_low_mb: float = Field(
        1024.0,
        ge=0,
        description="the journal_disk_low alert: a warning when the journal's disk has less "
        "free than this many MiB, critical below a quarter of it; 0: no such alert",
    )
    alert_check_s: float = Field(
        5.0, gt=0, description="how often alerts are re-derived when nothing changes"
    )
    max_public_streams: int = Field(
        200,
        ge=1,
        description="live streams open at once without a login (residents' phones); beyond "
        "it a new one is answered 503 with Retry-After, so anonymous pages cannot use up "
        "the process's connections",
    )
    max_streams: int = Field(
        400, ge=1, description="live streams open at once in all (logged-in ones included)"
    )
    streams_per_user: int = Field(
        8,
        ge=1,
        description="live streams one login may have open at once; beyond it a new one is "
        "answered 429 with Retry-After, so one login (a stolen session, a script reconnecting "
        "in a loop) cannot take every slot. Screens sharing one viewer login (lobby signs) "
        "need it raised to their number",
    )
    max_history_points: int = Field(
        2000, ge=10, description="most points one history series may have (range / step)"
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="a bearer token Prometheus may scrape /metrics with, besides user logins",
    )


# what a union branch pydantic tried accepts, in the words an environment variable takes
_BRANCH_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number"}


def settings_problems(exc: ValidationError) -> str:
    """The refused ``PARKGUIDE_*`` variables, one clause each: a setting of several types
    (``auto``, true or false) is named once with what it takes, not once per branch tried
    under a name that is no variable (``PARKGUIDE_COOKIE_SECURE_BOOL``)."""
    by_field: dict[str, list] = {}
    for err in exc.errors():
        by_field.setdefault(str(err["loc"][0]) if err["loc"] else "", []).append(err)
    clauses = []
    for field, errors in by_field.items():
        name = f"PARKGUIDE_{field.upper()}"
        if len(errors) > 1 and all(len(err["loc"]) == 2 for err in errors):
            words = [w for err in errors for w in _branch_words(err).split(" or ")]
            takes = ", ".join(words[:-1]) + f" or {words[-1]}"
            clauses.append(f"{name}: {errors[0]['input']!r} is not {takes}")
        else:
            clauses.append(f"{name}: " + "; ".join(err["msg"] for err in errors))
    return "; ".join(clauses)


def _branch_words(err: dict) -> str:
    if err["type"] == "literal_error":
        return str(err["ctx"]["expected"]).replace("'", "")
    branch = str(err["loc"][-1])
    return _BRANCH_WORDS.get(branch, branch)
