"""The per-message group_send consumer: what a Channels chat does without batching."""

import orjson
from channels.generic.websocket import AsyncWebsocketConsumer


def project_group(project_id):
    return f"project.{project_id}"


class BaselineProjectConsumer(AsyncWebsocketConsumer):
    group = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        project_id = int(self.scope["url_route"]["kwargs"]["project_id"])
        self.group = project_group(project_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # Same first frame as the service, so one client serves both variants.
        await self.send(text_data=orjson.dumps(
            {"type": "hello", "project_id": project_id, "seq": None}
        ).decode())

    async def disconnect(self, code):
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def chat_message(self, event):
        # Encoded per recipient, one message per frame.
        await self.send(text_data=orjson.dumps(
            {"type": "message_batch", "messages": [event["message"]]}
        ).decode())
