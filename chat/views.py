import logging

from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def healthz(request):
    """The process is alive."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Database and Redis reachable (short timeouts), else 503 naming the failing part."""
    from django.conf import settings

    failing = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        failing["database"] = str(exc)[:200]
    if settings.REDIS_URL and getattr(settings, "REDIS_CLUSTER", False):
        try:
            # Any node of the cluster answering: one shard failing over (its
            # keys degrade to the database meanwhile) must not make every app
            # server unready at once.
            from django_redis import get_redis_connection
            from redis.cluster import RedisCluster

            get_redis_connection("default").ping(target_nodes=RedisCluster.RANDOM)
        except Exception as exc:  # noqa: BLE001
            failing["redis"] = str(exc)[:200]
    elif settings.REDIS_URL:
        try:
            import redis

            redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
            ).ping()
        except Exception as exc:  # noqa: BLE001
            failing["redis"] = str(exc)[:200]
    if failing:
        response = JsonResponse({"status": "unavailable", "failing": failing}, status=503)
        response["Retry-After"] = "5"
        return response
    return JsonResponse({"status": "ok"})
