from django.urls import path

from projects import views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new", views.create_project, name="project_create"),
    path("projects/<int:project_id>/join", views.join_project, name="project_join"),
    path("projects/<int:project_id>/leave", views.leave_project, name="project_leave"),
    path("dm/<str:username>", views.open_direct_message, name="dm_open"),
    path("join/<str:token>", views.join_by_invite, name="join"),
]
