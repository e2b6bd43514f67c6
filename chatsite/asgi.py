"""ASGI entry point: Channels WebSockets and the HTTP path in one server.

HTTP goes through Django's WSGI handler inside the ASGI server (a2wsgi): measured
on this machine it serves about four times the requests per second of Django's
own ASGI handler (docs/PERFORMANCE.md). WebSockets stay Channels consumers.
Set HTTP_VIA_ASGI=true to route HTTP through Django's ASGI handler instead.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi = get_asgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from chatsite.origin import StrictOriginValidator  # noqa: E402
from chatsite.socket_auth import SocketAuthMiddleware  # noqa: E402

if settings.DEBUG or os.environ.get("HTTP_VIA_ASGI", "").lower() in {"1", "true", "yes"}:
    http_app = django_asgi
else:
    from chatsite.hotpath import wrap

    http_app = WSGIMiddleware(
        wrap(get_wsgi_application()), workers=int(os.environ.get("WSGI_THREADS", "16"))
    )

websocket_app = StrictOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns)))

application = ProtocolTypeRouter({"http": http_app, "websocket": websocket_app})

# METRICS_PORT: the first worker process binds it (multiprocess totals).
from chatsite.metrics import start_metrics_server  # noqa: E402

start_metrics_server()

from chatsite.runtime import tune_gc  # noqa: E402

tune_gc()
