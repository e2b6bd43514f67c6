"""Schemathesis over every operation of /api/openapi.json, in-process (WSGI).

The schema is loaded from the app itself (GET /api/openapi.json through
Django's WSGI handler) and each operation becomes one test. Schemathesis runs
its coverage phase (boundary and invalid values of every documented parameter
and body field, missing fields, unsupported methods, undeclared and malformed
Content-Types) and its fuzzing phase (MAX_EXAMPLES random cases, valid and
invalid) against Django's WSGI handler, signed in as the access matrix's member
(session cookie through schemathesis' auth; CSRF cookie and X-CSRFToken on
every unsafe call). Every response goes through all of schemathesis' checks:
not_a_server_error, status_code_conformance, content_type_conformance,
response_schema_conformance, response_headers_conformance (Retry-After),
negative_data_rejection, positive_data_acceptance, ignored_auth,
unsupported_method and the rest. Part of the path ids and body ids is swapped
for the world's real ones, so the fuzz reaches real projects and messages too.

Runs on both backends (SQLite here; PostgreSQL + Redis in production shape),
in well under a minute; each run draws new examples (no fixed seed).
"""

import time

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests import test_access_matrix

world = test_access_matrix.world  # the same users and projects as the access matrix

MAX_EXAMPLES = 100
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

APP = WSGIHandler()
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", APP)

# Schema-valid requests may still break a rule of the domain the schema cannot
# state (content only spaces, over 10,000 characters after stripping, @all in a
# big project, a client_msg_id that is not a UUID): docs/API.md §3 answers those 422
# "invalid". A schema-valid request answered 400 "malformed" stays a failure.
positive = schema.config.checks.positive_data_acceptance
positive.expected_statuses = [*positive.expected_statuses, "422"]

# The world's ids of the running test, read when a case is drawn.
REAL = {"ids": [1], "usernames": ["member"]}
# Coverage-phase cases are built when the module is collected, before any
# session exists: they carry this placeholder, swapped for the real key on call.
PLACEHOLDER = "member-session-placeholder"
SESSION = {"sessionid": PLACEHOLDER}
STATS = {"operations": set(), "calls": 0, "statuses": {}}


def real_ids():
    return st.integers(0, 10).map(lambda i: REAL["ids"][i % len(REAL["ids"])])


def is_id(value):
    # A generated boolean is a negative case (True is an int to Python): kept.
    return isinstance(value, int) and not isinstance(value, bool)


@schema.hook
def flatmap_path_parameters(ctx, path_parameters):
    if not path_parameters:
        return st.just(path_parameters)
    ids = [name for name, value in path_parameters.items() if is_id(value)]
    if not ids:
        return st.just(path_parameters)
    real = st.fixed_dictionaries({name: real_ids() for name in ids}).map(
        lambda r: {**path_parameters, **r})
    return st.one_of(st.just(path_parameters), st.just(path_parameters), real)


@schema.hook
def flatmap_body(ctx, body):
    if not isinstance(body, dict):
        return st.just(body)
    replaced = {}
    if is_id(body.get("project_id")):
        replaced["project_id"] = real_ids()
    if isinstance(body.get("username"), str):
        replaced["username"] = st.sampled_from(REAL["usernames"])
    if not replaced:
        return st.just(body)
    return st.one_of(st.just(body), st.fixed_dictionaries(replaced).map(lambda r: {**body, **r}))


class MemberSession:
    """The member's session cookie: the schema's SessionAuth.

    Set through schemathesis' auth, so its checks know which cookie is the
    credential: ignored_auth probes the same request without it and with a
    wrong one, and negative cases that drop or spoil it are sent as generated.
    """

    def get(self, case, ctx):
        return SESSION["sessionid"]

    def set(self, case, data, ctx):
        case.cookies = {**(case.cookies or {}), django_settings.SESSION_COOKIE_NAME: data}


@pytest.fixture
def member_session(world):
    """Sign the member in; return the CSRF cookie and header every unsafe call carries.

    The WSGI handler runs inside the test's transaction, as django.test.Client
    does, so the world's rows are visible and rolled back afterwards.
    """
    users, ids = world
    REAL["ids"] = [ids["pub"], ids["priv"], ids["msg"], ids["privmsg"], ids["missing"]]
    REAL["usernames"] = ["member", "owner", "newcomer", "nonmember"]
    client = Client()
    client.force_login(users["member"])
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    SESSION["sessionid"] = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    csrf = {
        "cookies": {django_settings.CSRF_COOKIE_NAME:
                    client.cookies[django_settings.CSRF_COOKIE_NAME].value},
        "headers": {"X-CSRFToken": token, "Referer": "http://localhost/"},
    }
    # As django.test.Client does: a request must not close the test's
    # connection (and with it the test's transaction) when it starts or ends.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield csrf
    finally:
        SESSION["sessionid"] = PLACEHOLDER
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def both_cursors(case):
    query = case.query or {}
    return query.get("before") not in (None, "") and query.get("after") not in (None, "")


@schema.parametrize()
@schema.auth.apply(MemberSession, refresh_interval=None, retry_on=[])
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api(case, member_session):
    # The CSRF pair is not a credential: unsafe calls carry it even when a
    # negative case drops the session cookie, or on the sign-in itself, so the
    # request reaches body parsing instead of stopping at csrf_failed.
    csrf = member_session if case.method.upper() in UNSAFE else {}
    cookie = django_settings.SESSION_COOKIE_NAME
    if (case.cookies or {}).get(cookie) == PLACEHOLDER:
        case.cookies[cookie] = SESSION["sessionid"]
    excluded = []
    declared = {parameter.name for parameter in case.operation.query}
    if set(case.query or {}) - declared:
        # A query parameter the operation does not read is ignored, as HTTP APIs
        # (and Django's views) do: not a refusal the API owes (docs/API.md §1).
        excluded.append(schemathesis.checks.negative_data_rejection)
    if (case.method.upper() == "GET" and case.path == "/api/projects/{project_id}/messages"
            and both_cursors(case)):
        # "Give before or after, not both" (400) spans two parameters, which
        # OpenAPI cannot state; the answer is still checked below.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    started = time.monotonic()
    response = case.call_and_validate(app=APP, excluded_checks=excluded, **csrf)
    if schemathesis.checks.positive_data_acceptance in excluded:
        assert response.status_code in (400, 401, 403, 404), response.status_code
    seconds = time.monotonic() - started
    STATS["operations"].add(case.operation.label)
    STATS["calls"] += 1
    STATS["statuses"][response.status_code] = STATS["statuses"].get(response.status_code, 0) + 1
    assert seconds < 10, f"{case.operation.label} took {seconds:.1f} s"


def teardown_module():
    print(f"\nschemathesis: {len(STATS['operations'])} operations, {STATS['calls']} calls, "
          f"statuses {dict(sorted(STATS['statuses'].items()))}")
