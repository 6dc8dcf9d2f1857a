# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Schemathesis against the app's own OpenAPI: no input gives a 5xx or breaks the documented
schema, anonymous and as a manager (a bounded number of examples per operation)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from api_support import PASSWORD, ServerThread, harness, settings, users  # noqa: F401
from conftest import free_port
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 25


@pytest.fixture(scope="module")
def app(harness, users):
    harness.fill({"A-001", "B-002", "C-003"})
    # two login attempts per client: the rest answer 429 at once instead of costing an argon2 run
    return create_app(
        harness.gateway, settings(login_max_attempts_per_client=2), db_path=str(harness.db_path)
    )


@pytest.fixture(scope="module")
def server(app):
    with ServerThread(app, free_port()) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(server, manager_headers):  # log in first, before the login budget is spent
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # examples and random fuzzing only: the coverage phase's exhaustive boundary matrix is
    # hundreds of extra cases per operation, more than "a bounded number of examples"
    loaded.config.phases.coverage.enabled = False
    return loaded


@pytest.fixture(scope="module")
def manager_headers(server):
    r = httpx.post(
        f"{server.url}/api/v1/auth/login", json={"name": "manager", "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/api/v1/stream")
FAST = hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


@schema.parametrize()
@hypothesis_settings(FAST, max_examples=5)  # without login nearly everything is a quick 401
def test_openapi_anonymous(case):
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@FAST
def test_openapi_as_manager(case, manager_headers):
    case.call_and_validate(headers=manager_headers, checks=CHECKS)
