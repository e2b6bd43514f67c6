"""Who is online in a project, across server processes.

Each process announces the users it has online in a project when that set
changes and every PRESENCE_HEARTBEAT_SECONDS; every hub keeps the union of the
announcements of the last PRESENCE_STALE_SECONDS, so it is right with several
processes and forgets a process that died.
"""

import asyncio
import time

from chat.realtime.bus import PROCESS_ID
from chat.realtime.frames import encode_frame
from chat.realtime.notify import notify_presence

PRESENCE_HEARTBEAT_SECONDS = 15.0
PRESENCE_STALE_SECONDS = 45.0


class Presence:
    """One hub's view of who is online in its project."""

    def __init__(self, hub):
        self.hub = hub
        self.seen = {}  # process -> (users, seen_at)
        self.frame_sent = None
        self.heartbeat = None
        # This process's sockets in the project by user: kept as sockets join
        # and leave, so neither walks the project's sockets.
        self.local = {}  # user id -> [username, sockets]
        self.sockets = 0

    def start(self):
        self.heartbeat = self.hub.loop.create_task(self._heartbeat())

    def stop(self):
        if self.heartbeat is not None:
            self.heartbeat.cancel()

    def joined(self, consumer):
        """A socket of this process joined: announce if its user is new here."""
        self.sockets += 1
        entry = self.local.get(consumer.user_id)
        if entry is not None:
            entry[1] += 1
            return
        self.local[consumer.user_id] = [consumer.username, 1]
        # The first socket here also asks the other processes for theirs.
        self.announce(query=self.sockets == 1)

    def left(self, consumer):
        """A socket of this process left: announce if it was its user's last here."""
        entry = self.local.get(consumer.user_id)
        if entry is None:
            return
        self.sockets -= 1
        entry[1] -= 1
        if not entry[1]:
            del self.local[consumer.user_id]
            self.announce()

    def local_users(self):
        return [{"id": uid, "username": entry[0]} for uid, entry in sorted(self.local.items())]

    def announce(self, query=False):
        """Publish this process's users of the project (off the event loop)."""
        users, project_id = self.local_users(), self.hub.project_id
        self.hub.loop.run_in_executor(
            None, lambda: notify_presence(project_id, users, query=query)
        )

    def on_event(self, event):
        """Another process's (or this one's) announcement."""
        self.seen[event["process"]] = (event["users"], time.monotonic())
        if event.get("query") and event["process"] != PROCESS_ID and self.hub.consumers:
            self.announce()
        self.send_if_changed()

    def online(self):
        now = time.monotonic()
        users = {}
        for process, (members, seen) in list(self.seen.items()):
            if now - seen > PRESENCE_STALE_SECONDS:
                del self.seen[process]
                continue
            for user in members:
                users[user["id"]] = user
        return [users[uid] for uid in sorted(users)]

    def frame(self):
        return encode_frame({"type": "presence", "online": self.online()})

    def send_if_changed(self):
        frame = self.frame()
        if frame != self.frame_sent:
            self.frame_sent = frame
            self.hub.fan_out(frame)

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(PRESENCE_HEARTBEAT_SECONDS)
            self.announce()
            self.send_if_changed()
