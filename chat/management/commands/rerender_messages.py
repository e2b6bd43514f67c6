"""Render stored messages again with the current renderer (docs/OPERATIONS.md
"rerender_messages").

Rows rendered by an older chat.rendering.RENDER_VERSION are also rendered
when they are read; this command does it ahead of the readers, in batches by
id. A new rendering is not a change of the message: no project number is
taken and nothing is broadcast. The cached history pages of the projects
whose rows changed are retired at the end, so readers see the new HTML at
once rather than after CACHE_TTL.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from chat.models import Message
from chat.rendering import RENDER_VERSION, get_stored_mentions, render
from chatsite.cache import bump_version


class Command(BaseCommand):
    help = "Render stored messages again: those of an older renderer version, or --all."

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size", type=int, default=500,
            help="messages read and written per transaction (default 500)",
        )
        parser.add_argument(
            "--all", action="store_true", dest="force",
            help="render every message again, not only those of an older version",
        )

    def handle(self, *args, batch_size, force, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        rendered = skipped = batches = 0
        projects = set()
        last_id = 0
        while True:
            rows = self.read_batch(last_id, batch_size, force)
            if not rows:
                break
            batches += 1
            done, missed = self.render_batch(rows, projects)
            rendered, skipped = rendered + done, skipped + missed
            last_id = rows[-1][0]
            if options["verbosity"] >= 2:
                self.stdout.write(f"batch {batches}: up to id {last_id}, {done} rendered")
        retired = sum(bump_version("project", pk) is not None for pk in sorted(projects))
        self.stdout.write(
            f"Rendered {rendered} messages with renderer version {RENDER_VERSION} "
            f"in {batches} batches; {skipped} changed meanwhile and were left as "
            f"they are. Retired the cached pages of {retired} of {len(projects)} projects."
        )

    def read_batch(self, last_id, batch_size, force):
        """The next rows after last_id to render, by id (deleted messages have no HTML)."""
        messages = Message.objects.filter(pk__gt=last_id, deleted_at__isnull=True)
        if not force:
            messages = messages.filter(render_version__lt=RENDER_VERSION)
        return list(
            messages.order_by("pk").values_list(
                "pk", "project_id", "content", "render_version", "changed_seq",
                "author_id", "author__username",
            )[:batch_size]
        )

    def render_batch(self, rows, projects):
        """Store each row's new rendering; return (rows written, rows skipped).

        Each UPDATE applies only while the row is as it was read (same
        render_version and changed_seq, not deleted): an edit or delete that
        committed meanwhile wins. One query per row that names someone
        (its Mention rows), one UPDATE per row.
        """
        done = missed = 0
        with transaction.atomic():
            for pk, project_id, content, version, changed_seq, author_id, username in rows:
                content_html = render(
                    content, get_stored_mentions(pk, content, author_id, username)
                )
                written = Message.objects.filter(
                    pk=pk, render_version=version, changed_seq=changed_seq,
                    deleted_at__isnull=True,
                ).update(content_html=content_html, render_version=RENDER_VERSION)
                if written:
                    done += 1
                    projects.add(project_id)
                else:
                    missed += 1
        return done, missed
