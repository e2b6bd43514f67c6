from django.urls import path

from chat import page_views, upload_views, views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("projects/<int:project_id>/", page_views.project_page, name="project"),
    path("search", page_views.search_page, name="search"),
    path("uploads/<int:upload_id>/", upload_views.download, name="upload"),
    path("uploads/<int:upload_id>/thumbnail", upload_views.thumbnail, name="upload-thumbnail"),
]
