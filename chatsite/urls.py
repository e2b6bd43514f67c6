from django.contrib import admin
from django.urls import include, path

from chatsite import ops_views
from chatsite.api import api

urlpatterns = [
    # Before admin.site.urls, whose catch-all would answer it otherwise.
    path("admin/performance/", ops_views.performance, name="admin-performance"),
    path("admin/", admin.site.urls),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/", api.urls),
    path("", include("chat.urls")),
    path("", include("projects.urls")),
    path("", include("accounts.urls")),
]
