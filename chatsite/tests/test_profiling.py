"""Opt-in profiling: off by default, never for non-staff, logged as the top functions."""

import logging

import pytest
from django.test import Client, override_settings

from conftest import login_client


def profile_records(caplog):
    return [r for r in caplog.records if getattr(r, "event", None) == "request_profile"]


@pytest.fixture
def staff_client(make_user):
    return login_client(make_user("staffer", is_staff=True))


def test_profiling_is_off_by_default(settings, client_member, project, caplog):
    assert settings.PROFILE_REQUESTS is False
    with caplog.at_level(logging.DEBUG, logger="chatsite.profiling"):
        client_member.get(f"/api/projects/{project.pk}/messages")
    assert not profile_records(caplog)


def test_a_non_staff_user_cannot_switch_it_on(client_member, project, caplog):
    with caplog.at_level(logging.DEBUG, logger="chatsite.profiling"):
        response = client_member.get(f"/api/projects/{project.pk}/messages?profile=1")
    assert response.status_code == 200
    assert not profile_records(caplog)


def test_an_anonymous_client_cannot_switch_it_on(db, caplog):
    with caplog.at_level(logging.DEBUG, logger="chatsite.profiling"):
        Client().get("/healthz?profile=1")
    assert not profile_records(caplog)


def test_staff_query_parameter_logs_the_top_20_functions(staff_client, caplog):
    with override_settings(PROFILE_THRESHOLD_MS=10_000), \
            caplog.at_level(logging.INFO, logger="chatsite.profiling"):
        response = staff_client.get("/healthz?profile=1")
    assert response.status_code == 200
    records = profile_records(caplog)
    assert len(records) == 1
    text = records[0].getMessage()
    assert text.startswith("event=request_profile method=GET path=/healthz status=200")
    assert "forced=True" in text
    assert "Ordered by: cumulative time" in text
    assert "List reduced from" in text and "to 20 due to restriction <20>" in text


def test_profile_requests_logs_only_requests_over_the_threshold(client_member, project, caplog):
    url = f"/api/projects/{project.pk}/messages"
    with caplog.at_level(logging.INFO, logger="chatsite.profiling"):
        with override_settings(PROFILE_REQUESTS=True, PROFILE_THRESHOLD_MS=60_000):
            client_member.get(url)
        assert not profile_records(caplog)
        with override_settings(PROFILE_REQUESTS=True, PROFILE_THRESHOLD_MS=0):
            client_member.get(url)
    records = profile_records(caplog)
    assert len(records) == 1 and records[0].forced is False
