from django.urls import path

from bench.baseline.consumers import BaselineProjectConsumer

websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/", BaselineProjectConsumer.as_asgi()),
]
