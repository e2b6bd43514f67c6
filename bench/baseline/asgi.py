"""ASGI app of the naive baseline: the service's HTTP path (for /healthz and
login) and the baseline consumer behind the same auth and Origin checks.

Run: uvicorn bench.baseline.asgi:application (cwd = the repository root).
"""

import os

# Always the baseline settings (the service's settings + channels_redis core layer).
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.baseline.settings"

from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()

from a2wsgi import WSGIMiddleware
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.wsgi import get_wsgi_application

from bench.baseline.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator

http_app = WSGIMiddleware(get_wsgi_application(), workers=int(os.environ.get("WSGI_THREADS", "16")))
websocket_app = StrictOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

application = ProtocolTypeRouter({"http": http_app, "websocket": websocket_app})
