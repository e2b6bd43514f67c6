"""Remove uploads never attached and the files of deleted ones (docs/OPERATIONS.md)."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from chat.models import Upload
from chat.uploads import remove_files

BATCH_SIZE = 500


class Command(BaseCommand):
    help = (
        "Remove uploads never attached to a message and older than --hours (24), "
        "and the files of deleted messages' uploads still in the storage. Run daily."
    )

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=float, default=24.0,
                            help="Age after which an unattached upload is removed (24).")

    def handle(self, *args, hours, **options):
        now = timezone.now()
        # Marked deleted first, by one conditional UPDATE: a send attaching one
        # of them at the same moment either claimed it before (no longer
        # unattached: skipped here) or finds it deleted (its send is refused).
        expired = Upload.objects.filter(
            message__isnull=True, deleted_at__isnull=True,
            created_at__lt=now - timedelta(hours=hours),
        ).update(deleted_at=now)
        files = rows = 0
        while True:
            batch = list(
                Upload.objects.filter(deleted_at__isnull=False)
                .exclude(file="", thumbnail="")
                .order_by("pk").values_list("pk", "message_id", "file", "thumbnail")[:BATCH_SIZE]
            )
            if not batch:
                break
            done_unattached, done_attached = [], []
            for pk, message_id, *names in batch:
                if not remove_files(names):
                    continue  # the storage refused: tried again on the next run
                files += sum(1 for name in names if name)
                (done_attached if message_id else done_unattached).append(pk)
            # A deleted message's upload keeps its row (the message's record);
            # one that was never attached goes entirely.
            rows += Upload.objects.filter(pk__in=done_unattached).delete()[0]
            Upload.objects.filter(pk__in=done_attached).update(file="", thumbnail="")
            if len(done_unattached) + len(done_attached) < len(batch):
                break  # some failed: stop rather than loop on them
        self.stdout.write(
            f"expired {expired} unattached upload(s); removed {files} file(s) "
            f"and {rows} upload row(s)"
        )
