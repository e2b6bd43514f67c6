"""Garbage-collector settings of a server process (docs/PERFORMANCE.md, "Garbage collection").

A Django request allocates thousands of objects, so with Python's default
threshold (700) the collector runs several times per request, and every full
collection walks everything the process loaded at start (Django, the URL
configuration, the models). Measured in one process serving the API mix
(bench/gc_probe.py), the collector took ~6 % of the time; freezing what the
process holds after start-up (gc.freeze: the collector no longer walks it) and
collecting the young generation every GC_THRESHOLD allocations instead brought
it to ~2.5 %.
Reference cycles are still collected, only less often.
"""

import gc

from django.conf import settings


def tune_gc():
    """Call once the server's application is loaded (chatsite.wsgi, chatsite.asgi)."""
    thresholds = settings.GC_THRESHOLD
    if not thresholds:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
