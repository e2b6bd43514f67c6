from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path, re_path

from chat.consumers import ProjectConsumer
from chat.me_consumer import MeConsumer

# ProjectConsumer's "no such project" code, for a path that names nothing.
CLOSE_NO_ROUTE = 4404


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Refuse a socket on a path no route matches: accept, then close 4404.

    Without it Channels' URLRouter raises ValueError, which the server answers
    with HTTP 500 and a logged traceback. It lives here, beside the routes it
    completes, rather than in chat.consumers.
    """

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NO_ROUTE)


websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/", ProjectConsumer.as_asgi()),
    path("ws/me/", MeConsumer.as_asgi()),  # the sidebar's counts (docs/PROTOCOL.md)
    re_path(r"", NoRouteConsumer.as_asgi()),  # last: whatever else was asked for
]
