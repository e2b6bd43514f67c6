"""WSGI entry point: the production HTTP server (`make serve` runs it on granian).

Measured on this machine, granian's WSGI interface serves the cached history
page at about twice the requests per second of uvicorn + a2wsgi, at half the
CPU per request (docs/PERFORMANCE.md). Sockets are served by chatsite.asgi.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_application = get_wsgi_application()

from chatsite.hotpath import wrap  # noqa: E402

# The hot reads (first history page, project list) are answered before Django's stack
# (chatsite/hotpath.py); the rest is Django's.
application = wrap(django_application)

# METRICS_PORT: the first server process of either kind binds it (multiprocess totals).
from chatsite.metrics import start_metrics_server  # noqa: E402

start_metrics_server()

from chatsite.runtime import tune_gc  # noqa: E402

tune_gc()
