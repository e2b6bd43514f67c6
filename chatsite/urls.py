from django.contrib import admin
from django.urls import include, path

from accounts.admin import admin_login
from chatsite import ops_views
from chatsite.api import api

urlpatterns = [
    # Before admin.site.urls, whose catch-all would answer it otherwise.
    path("admin/performance/", ops_views.performance, name="admin-performance"),
    # admin.site.login, answering 503 when the sign-in throttle is unavailable
    # (accounts/admin.py); before admin.site.urls, whose own login/ would answer.
    path("admin/login/", admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/", api.urls),
    path("", include("chat.urls")),
    path("", include("projects.urls")),
    path("", include("accounts.urls")),
]
