"""Opt-in cProfile of slow requests (the guide's profile_endpoint, as middleware).

Off by default. PROFILE_REQUESTS=true profiles every request and logs those
slower than PROFILE_THRESHOLD_MS; a staff user can add ?profile=1 to any URL to
have that one request profiled and logged whatever its duration. Nobody else
can switch it on.
"""

import cProfile
import io
import logging
import pstats
import time

from django.conf import settings

logger = logging.getLogger(__name__)

TOP_FUNCTIONS = 20


def wants_profile(request):
    """Return True when a staff user asked for this request's profile."""
    # The query string is checked first, so an ordinary request parses nothing
    # and loads no user for this.
    if "profile=" not in request.META.get("QUERY_STRING", ""):
        return False
    if request.GET.get("profile") != "1":
        return False
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def format_profile(profiler, limit=TOP_FUNCTIONS):
    """Return the top `limit` functions by cumulative time as text."""
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(limit)
    return stream.getvalue().strip()


class ProfilingMiddleware:
    """Profile a request when asked to; sits right after AuthenticationMiddleware."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        forced = wants_profile(request)
        if not forced and not settings.PROFILE_REQUESTS:
            return self.get_response(request)
        profiler = cProfile.Profile()
        try:
            profiler.enable()
        except ValueError:
            # Another profiler is active in this thread; do not fight it.
            return self.get_response(request)
        start = time.perf_counter()
        try:
            response = self.get_response(request)
        finally:
            profiler.disable()
        duration_ms = (time.perf_counter() - start) * 1000
        if forced or duration_ms > settings.PROFILE_THRESHOLD_MS:
            logger.info(
                "event=request_profile method=%s path=%s status=%s duration_ms=%.1f "
                "forced=%s\n%s",
                request.method, request.path, response.status_code, duration_ms,
                forced, format_profile(profiler),
                extra={"event": "request_profile", "duration_ms": round(duration_ms, 1),
                       "path": request.path, "forced": forced},
            )
        return response
