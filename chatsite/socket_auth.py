"""The socket server's sign-in: cookies, session and user in one ASGI layer.

Channels' AuthMiddlewareStack is three layers (cookies, session, user); each
copies the scope and stays on the socket's stack, with its scope and its
coroutine, for the socket's whole life, and the session layer checks the
session on every frame sent through ASGI. The socket consumers read the
session key and the user once and never write the session, so one layer with
one copy of the scope does the same (Channels' own ``get_user``, Django's
cookie parser and session store): an idle socket holds about 3 KiB less
(docs/PERFORMANCE.md, "Sockets").
"""

from importlib import import_module

from channels.auth import get_user
from django.conf import settings
from django.http.cookie import parse_cookie


class SocketAuthMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        if "cookies" not in scope:
            scope["cookies"] = {}
            for name, value in scope.get("headers", ()):
                if name == b"cookie":
                    scope["cookies"] = parse_cookie(value.decode("latin-1"))
                    break
        if "session" not in scope:
            store = import_module(settings.SESSION_ENGINE).SessionStore
            scope["session"] = store(scope["cookies"].get(settings.SESSION_COOKIE_NAME))
        # As Channels' stack, a user an outer layer set (tests do) is kept.
        if "user" not in scope:
            scope["user"] = await get_user(scope)
        return await self.inner(scope, receive, send)
