"""Pool exhaustion answers 503 with Retry-After, not a hang or a 500."""

import threading

import pytest
from django.db import connection

from conftest import login_client

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_exhausted_pool_answers_503_with_retry_after(member, project, settings):
    settings.CACHE_HOT_READS = False
    client = login_client(member)
    pool = connection.pool
    assert pool is not None, "production shape uses psycopg's pool"
    held = []
    old_timeout = pool.timeout
    pool.timeout = 0.3
    result = {}

    def request():
        try:
            result["response"] = client.get(f"/api/projects/{project.pk}")
        finally:
            connection.close()

    try:
        while True:
            try:
                held.append(pool.getconn(timeout=0.2))
            except Exception:  # noqa: BLE001 - PoolTimeout: every connection is lent
                break
        thread = threading.Thread(target=request)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "the request hung"
    finally:
        for conn in held:
            pool.putconn(conn)
        pool.timeout = old_timeout
    response = result["response"]
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "unavailable"
