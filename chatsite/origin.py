from channels.security.websocket import OriginValidator
from django.conf import settings


class StrictOriginValidator(OriginValidator):
    """Accept a socket only with an Origin whose host is in ALLOWED_HOSTS.

    Channels' AllowedHostsOriginValidator lets a missing Origin through; a
    browser always sends one, so a missing Origin is refused here.
    """

    def __init__(self, application):
        super().__init__(application, allowed_origins=[])

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return False
        allowed = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not allowed:
            allowed = ["localhost", "127.0.0.1", "[::1]"]
        return any(self.match_allowed_origin(parsed_origin, pattern) for pattern in allowed)
