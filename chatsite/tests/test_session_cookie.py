"""Two session cookies of one name: every path reads the same one (Django's, the
last), so no path answers as another user than the rest."""

import orjson
from django.conf import settings

from chatsite.tests.test_hotpath import apps, call, declined, environ, messages_path  # noqa: F401
from conftest import login_client


def test_two_session_cookies_are_read_as_django_reads_them(apps, project, member, outsider,  # noqa: F811
                                                            send):
    send(member, project, 2)
    as_member = login_client(member)
    as_outsider = login_client(outsider)
    # The member's first page is cached and the member's session would be served hot.
    assert as_member.get(messages_path(project)).status_code == 200
    name = settings.SESSION_COOKIE_NAME
    cookie = f"{name}={as_member.cookies[name].value}; {name}={as_outsider.cookies[name].value}"
    hot, plain = apps
    before = declined("cookies")
    env = environ(messages_path(project))
    env["HTTP_COOKIE"] = cookie
    status, _, body = call(hot, env)
    env = environ(messages_path(project))
    env["HTTP_COOKIE"] = cookie
    ref_status, _, ref_body = call(plain, env)
    # Django reads the last cookie (the outsider, not a member): so does the hot path.
    assert (status, body) == (ref_status, ref_body)
    assert status == 403
    assert orjson.loads(body)["error"]["code"] == "not_member"
    assert declined("cookies") == before + 1
