"""A user kept in a process's memory is used only under the user's current stamp:
a revocation in another process (which moves the stamp) ends it at the next
request here (accounts/backends.py)."""

from django.core.cache import cache

from accounts.backends import (
    CachedModelBackend,
    forget_user,
    local_user,
    user_cache_key,
    user_stamp_key,
)
from accounts.models import User
from chatsite.retired import retire


def revoke_elsewhere(user):
    """What another process's signals do on a deactivation: the row, a new stamp,
    the retired entry; this process's memory is not told."""
    User.objects.filter(pk=user.pk).update(is_active=False)
    cache.set(user_stamp_key(user.pk), 4242, None)
    retire([user_cache_key(user.pk)])


def test_a_kept_user_ends_when_another_process_moves_the_stamp(member):
    backend = CachedModelBackend()
    assert backend.get_user(member.pk) == member
    stamp = cache.get(user_stamp_key(member.pk))
    assert local_user(member.pk, stamp) == member  # kept under the stamp
    revoke_elsewhere(member)
    assert backend.get_user(member.pk) is None


def test_a_kept_user_costs_one_small_read_and_no_query(member, django_assert_num_queries,
                                                         monkeypatch):
    backend = CachedModelBackend()
    backend.get_user(member.pk)
    reads = []
    real_get = cache.get
    monkeypatch.setattr(cache, "get", lambda key, *a, **k: reads.append(key) or real_get(
        key, *a, **k))
    with django_assert_num_queries(0):
        assert backend.get_user(member.pk) == member
    assert reads == [user_stamp_key(member.pk)]  # not the pickled user


def test_a_revocation_here_moves_the_stamp(member):
    backend = CachedModelBackend()
    backend.get_user(member.pk)
    before = cache.get(user_stamp_key(member.pk))
    forget_user(member.pk)
    assert cache.get(user_stamp_key(member.pk)) not in (None, before)


def test_the_hot_path_stops_serving_a_kept_user_whose_stamp_moved(member, project, send):
    from django.core.handlers.wsgi import WSGIHandler

    from chatsite.hotpath import HotReads
    from chatsite.tests.test_hotpath import call, declined, environ, messages_path
    from conftest import login_client

    send(member, project, 2)
    client = login_client(member)
    assert client.get(messages_path(project)).status_code == 200
    hot = HotReads(WSGIHandler())
    status, _, _ = call(hot, environ(messages_path(project), client))
    assert status == 200  # served, the user now kept under its stamp
    before = declined("user")
    revoke_elsewhere(member)
    status, _, _ = call(hot, environ(messages_path(project), client))
    assert declined("user") == before + 1  # Django answered instead
    assert status in (401, 403)


def test_djangos_path_reads_the_stamp_with_the_session(member, monkeypatch):
    """Once the process knows the session's user: no GET of its own for the
    stamp; a stamp moved elsewhere still ends the user at the next request."""
    from django.test import Client

    from chatsite import cache as chat_cache

    client = Client()
    client.force_login(member)
    assert client.get("/api/auth/me").status_code == 200  # learns the session's user
    assert client.get("/api/auth/me").status_code == 200
    reads = []
    real = chat_cache.safe_get
    monkeypatch.setattr(chat_cache, "safe_get", lambda key, *a: reads.append(key) or real(key, *a))
    import accounts.backends as backends

    monkeypatch.setattr(backends, "safe_get", chat_cache.safe_get)
    assert client.get("/api/auth/me").status_code == 200
    assert user_stamp_key(member.pk) not in reads
    revoke_elsewhere(member)
    assert client.get("/api/auth/me").status_code == 401
