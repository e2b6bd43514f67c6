from django.contrib import admin
from django.urls import include, path

from chatsite.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("", include("chat.urls")),
    path("", include("projects.urls")),
    path("", include("accounts.urls")),
]
