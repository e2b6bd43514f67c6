"""A reader that read before a revocation cannot store what it read after it
(chatsite/retired.py): the access entry and the cached user."""

import pytest
from django.core.cache import cache

from accounts.backends import CachedModelBackend, user_cache_key
from chatsite.errors import ChatError
from projects import access
from projects.access import access_key, access_project_cached
from projects.actions import do_leave_project


def test_access_read_before_a_leave_is_not_stored_after_it(
        monkeypatch, project, member, django_capture_on_commit_callbacks):
    real = access.access_project

    def read_then_the_leave_commits(user, project_id):
        found = real(user, project_id)  # still a member when read
        with django_capture_on_commit_callbacks(execute=True):
            do_leave_project(user, project_id)  # and its after-commit invalidation ran
        return found

    monkeypatch.setattr(access, "access_project", read_then_the_leave_commits)
    access_project_cached(member, project.pk)  # the stale reader
    monkeypatch.setattr(access, "access_project", real)
    assert cache.get(access_key(member.pk, project.pk)) != "member"
    with pytest.raises(ChatError):
        access_project_cached(member, project.pk)


def test_user_read_before_a_deactivation_is_not_stored_after_it(
        monkeypatch, member, django_capture_on_commit_callbacks):
    from django.contrib.auth.backends import ModelBackend

    real = ModelBackend.get_user

    def read_then_the_deactivation_commits(self, user_id):
        found = real(self, user_id)  # active when read
        with django_capture_on_commit_callbacks(execute=True):
            member.is_active = False
            member.save()
        return found

    monkeypatch.setattr(ModelBackend, "get_user", read_then_the_deactivation_commits)
    CachedModelBackend().get_user(member.pk)  # the stale reader
    monkeypatch.setattr(ModelBackend, "get_user", real)
    stored = cache.get(user_cache_key(member.pk))
    assert not (hasattr(stored, "is_active") and stored.is_active)
    assert CachedModelBackend().get_user(member.pk) is None
