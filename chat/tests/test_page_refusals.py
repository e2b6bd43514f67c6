"""Refused pages say nothing about a private project: it reads as a missing one.

Looping over ids must not list which private projects exist nor what they are
called; a public project the caller has not joined keeps its name and join button.
"""

import re

import pytest

from projects.actions import do_create_project

SECRET_NAME = "Acquisition Zeta"

# The masked CSRF token differs on every render; nothing else may.
CSRF_VALUE = re.compile(r'(name="csrfmiddlewaretoken" value=")[^"]*(")')


def page_text(response):
    return CSRF_VALUE.sub(r"\1\2", response.content.decode())


@pytest.fixture
def private_project(owner, send):
    project = do_create_project(owner, name=SECRET_NAME, description="board only",
                                is_private=True)
    send(owner, project, 1, prefix="classified")
    return project


@pytest.fixture
def missing_id(private_project):
    return private_project.pk + 1000


def assert_same_refusal(private_response, missing_response):
    for text in (SECRET_NAME, "board only", "classified", "private"):
        assert text not in private_response.content.decode()
    assert private_response.status_code == missing_response.status_code == 404
    assert private_response["Content-Type"] == missing_response["Content-Type"]
    assert page_text(private_response) == page_text(missing_response)


@pytest.mark.parametrize("url", [
    "/projects/{id}/",
    "/projects/{id}/?before=5",
    "/search?project_id={id}",
    "/search?q=classified&project_id={id}",
])
def test_a_private_project_is_refused_exactly_as_a_missing_one(
    client_outsider, private_project, missing_id, url
):
    private_response = client_outsider.get(url.format(id=private_project.pk))
    missing_response = client_outsider.get(url.format(id=missing_id))
    assert_same_refusal(private_response, missing_response)


def test_posting_to_a_private_project_is_refused_as_to_a_missing_one(
    client_outsider, private_project, missing_id
):
    form = {"content": "hello", "client_msg_id": "c0ffee00-0000-4000-8000-000000000000"}
    private_response = client_outsider.post(f"/projects/{private_project.pk}/", form)
    missing_response = client_outsider.post(f"/projects/{missing_id}/", form)
    assert_same_refusal(private_response, missing_response)
    assert private_project.messages.count() == 1


def test_a_public_project_not_joined_is_still_named_with_a_join_button(
    client_outsider, project
):
    for url in (f"/projects/{project.pk}/", f"/search?project_id={project.pk}"):
        response = client_outsider.get(url)
        assert response.status_code == 403
        assert "not a member of <strong>General</strong>" in response.text
        assert f'action="/projects/{project.pk}/join"' in response.text


def test_a_member_of_a_private_project_opens_it(owner, private_project):
    from conftest import login_client

    response = login_client(owner).get(f"/projects/{private_project.pk}/")
    assert response.status_code == 200
    assert SECRET_NAME in response.text
