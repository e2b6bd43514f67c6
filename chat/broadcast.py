# Temporary: chat.actions' import while it is being edited; removed in this change.
from chat.realtime.notify import publish_change_on_commit as broadcast_on_commit  # noqa: F401
