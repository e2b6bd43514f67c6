"""Load demo data, fast and idempotently (docs/OPERATIONS.md, "seed_demo").

Every kind of row is written with bulk_create in batches, and the password is
hashed once and shared: hashing is the slow part of creating users (PBKDF2 at
Django's default cost is most of a second per call).

Messages take their numbers the way chat.actions does, only a block at a time:
one ``UPDATE ... SET seq = seq + k RETURNING seq`` per project reserves k
numbers under the project row lock, and the messages are inserted in the same
transaction, so numbers stay gapless, a send racing the seed simply waits, and
sends after the seed continue from the project's number.
"""

import time
from argparse import RawDescriptionHelpFormatter
from contextlib import contextmanager
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Count, Max
from django.utils import timezone
from django.utils.functional import cached_property

from chat.models import Message
from chat.rendering import RENDER_VERSION, render
from loadtest.config import DEFAULT_PASSWORD
from projects.models import Membership, Project

DEMO_USERNAME = "demo"
SITE_URL = "http://127.0.0.1:8000/"
LOAD_PROJECT = "Load"
PROJECT_NAMES = [
    "General",
    "Random",
    "Engineering",
    "Design",
    "Support",
    "Marketing",
    "Sales",
    "Operations",
    "Announcements",
    "Off-topic",
]
PHRASES = [
    "Good morning, everyone!",
    "Has anyone looked at the latest build?",
    "The deploy went out without a hitch.",
    "Can we move the sync to 3pm?",
    "I pushed a fix for the flaky test.",
    "Lunch at the usual place?",
    "The dashboard shows p95 under 50 ms now.",
    "Reviewing the pull request after this call.",
    "Who owns the on-call rotation this week?",
    "Nice work on the release notes.",
    "I'll write it up in the docs.",
    "The index made that query forty times faster.",
    "Let's keep the discussion in this channel.",
    "Coffee break, back in ten.",
    "Does anyone have the link to the design doc?",
    "Thanks, that answers my question.",
    "Load test passed: 1,200 requests per second.",
    "Remember to update your dependencies.",
    "Weekly retro notes are up.",
    "Merged. Thanks for the review!",
]

HELP = f"""Create demo data fast (bulk inserts) and idempotently.

Creates the superuser {DEMO_USERNAME!r} (staff, so /admin/ works) and users
<prefix>1..<prefix>N, the projects General, Random, ... (owned by
{DEMO_USERNAME!r}), their memberships, and --messages messages spread evenly
over the projects, numbered 1..k per project with times spread over the last
--days days. Running it again creates only what is missing: users, projects and
memberships are matched by name, and messages are added only up to the
requested total per project, numbered on from the project's current number.
Existing users keep their passwords.

Load tests: --loadtest creates users <prefix>0..<prefix>N-1 (prefix "load"
unless --users-prefix is given), all with --password, all members of one public
project "{LOAD_PROJECT}" (owned by {DEMO_USERNAME!r}) that gets the --messages;
no other projects. Example: seed_demo --loadtest --users 1000 --messages 0
With --loadtest-projects K, the public projects "{LOAD_PROJECT}", "{LOAD_PROJECT} 2", ...
"{LOAD_PROJECT} K" are created and user i is a member of project i % K only
(load0 in "{LOAD_PROJECT}", load1 in "{LOAD_PROJECT} 2", ...); the --messages are spread
over them. Example: seed_demo --loadtest --users 500 --loadtest-projects 25 --messages 0

Passwords are hashed with the configured hasher: seed with the same
FAST_PASSWORD_HASHER setting as the server that will check them.

`make run` uses --once: if the demo data exists, only print the login.
"""


@contextmanager
def given_timestamps(model, *field_names):
    """Let bulk_create store the timestamps given instead of now().

    auto_now/auto_now_add fields are overwritten by pre_save even in
    bulk_create; demo history needs its times spread over past days. Not
    thread-safe: only for this command's process.
    """
    fields = [model._meta.get_field(name) for name in field_names]
    saved = [(field, field.auto_now, field.auto_now_add) for field in fields]
    for field in fields:
        field.auto_now = field.auto_now_add = False
    try:
        yield
    finally:
        for field, auto_now, auto_now_add in saved:
            field.auto_now, field.auto_now_add = auto_now, auto_now_add


def reserve_seq_block(project_id, count):
    """Take the project's next `count` numbers; return the first.

    Call inside transaction.atomic: the UPDATE holds the project row lock until
    commit, as chat.actions.take_next_seq does for one number.
    """
    table = connection.ops.quote_name(Project._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET seq = seq + %s WHERE id = %s RETURNING seq",
            [count, project_id],
        )
        return cursor.fetchone()[0] - count + 1


class PasswordHash:
    """Hash a password once, on first use: a rerun that creates no user skips it."""

    def __init__(self, raw):
        self.raw = raw

    @cached_property
    def value(self):
        return make_password(self.raw)


def project_names(count):
    names = PROJECT_NAMES[:count]
    names += [f"Project {i}" for i in range(len(names) + 1, count + 1)]
    return names


def load_project_names(count):
    """"Load", "Load 2", ... "Load <count>": the projects of --loadtest-projects."""
    return [LOAD_PROJECT] + [f"{LOAD_PROJECT} {i}" for i in range(2, count + 1)]


def split_evenly(total, parts):
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Command(BaseCommand):
    help = HELP

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("formatter_class", RawDescriptionHelpFormatter)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument(
            "--users",
            type=int,
            default=20,
            help="numbered users besides demo (default 20)",
        )
        parser.add_argument(
            "--projects",
            type=int,
            default=5,
            help="projects General, Random, ... (default 5; ignored with --loadtest)",
        )
        parser.add_argument(
            "--messages",
            type=int,
            default=2000,
            help="messages in total, spread over the projects (default 2000)",
        )
        parser.add_argument(
            "--members-per-project",
            type=int,
            default=None,
            help="members of each project, demo included (default: all users)",
        )
        parser.add_argument(
            "--password",
            default=DEFAULT_PASSWORD,
            help=f"password of the users created (default {DEFAULT_PASSWORD!r})",
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="if the demo data exists, create nothing and only print the login",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=2000,
            help="rows per INSERT (default 2000)",
        )
        parser.add_argument(
            "--days",
            type=int,
            default=30,
            help="spread message times over this many past days (default 30)",
        )
        parser.add_argument(
            "--users-prefix",
            default=None,
            help='username prefix of the numbered users (default "user", "load" '
            "with --loadtest)",
        )
        parser.add_argument(
            "--loadtest",
            action="store_true",
            help=f"create <prefix>0..<prefix>N-1, all members of project {LOAD_PROJECT!r}",
        )
        parser.add_argument(
            "--loadtest-projects",
            type=int,
            default=1,
            metavar="K",
            help=f"with --loadtest: projects {LOAD_PROJECT!r}, '{LOAD_PROJECT} 2', ... "
            f"'{LOAD_PROJECT} K'; user i joins project i %% K only (default 1)",
        )

    def handle(self, *args, **options):
        started = time.monotonic()
        for name in ("users", "projects", "messages", "days"):
            if options[name] < 0:
                raise CommandError(f"--{name} cannot be negative")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        members_per_project = options["members_per_project"]
        load_projects = options["loadtest_projects"]
        if load_projects < 1:
            raise CommandError("--loadtest-projects must be at least 1")
        if members_per_project is not None and members_per_project < 1:
            raise CommandError("--members-per-project must be at least 1 (demo)")

        loadtest = options["loadtest"]
        prefix = options["users_prefix"] or ("load" if loadtest else "user")
        first = 0 if loadtest else 1
        usernames = [f"{prefix}{i}" for i in range(first, first + options["users"])]
        names = (
            load_project_names(load_projects)
            if loadtest
            else project_names(options["projects"])
        )
        if loadtest:
            members_per_project = None
        self.batch_size = options["batch_size"]

        if options["once"] and self.demo_data_exists(names):
            self.print_login(options["password"], existing=True)
            return

        password = PasswordHash(options["password"])
        with transaction.atomic():
            demo_id, demo_created = self.ensure_demo(password)
            user_ids, users_created = self.ensure_users(prefix, usernames, password)
            users_created += demo_created
            projects, projects_created = self.ensure_projects(demo_id, names)
            members_created = self.ensure_memberships(
                demo_id,
                user_ids,
                projects,
                members_per_project,
                admins=not loadtest,
                round_robin=loadtest,
            )
        messages_created = self.ensure_messages(
            projects, options["messages"], options["days"]
        )

        elapsed = time.monotonic() - started
        self.stdout.write(
            f"Created {users_created} users, "
            f"{projects_created} projects, {members_created} memberships, "
            f"{messages_created} messages in {elapsed:.1f}s."
        )
        self.print_login(options["password"])

    def print_login(self, password, existing=False):
        if existing:
            self.stdout.write("Demo data already present; nothing created.")
        self.stdout.write(f"Demo login: {DEMO_USERNAME} / {password}")
        self.stdout.write(f"Open {SITE_URL} (admin: {SITE_URL}admin/)")

    def demo_data_exists(self, names):
        # Seeded once means: demo owns the first project (General, or Load).
        # Other counts may differ from an earlier run; --once does not top up.
        return Project.objects.filter(
            owner__username=DEMO_USERNAME, name=names[0] if names else "General"
        ).exists()

    def ensure_demo(self, password):
        User = get_user_model()
        demo = User.objects.filter(username=DEMO_USERNAME).first()
        if demo is None:
            demo = User.objects.create(
                username=DEMO_USERNAME,
                email=f"{DEMO_USERNAME}@example.com",
                password=password.value,
                is_staff=True,
                is_superuser=True,
            )
            return demo.pk, 1
        if not (demo.is_staff and demo.is_superuser and demo.is_active):
            User.objects.filter(pk=demo.pk).update(
                is_staff=True, is_superuser=True, is_active=True
            )
        return demo.pk, 0

    def ensure_users(self, prefix, usernames, password):
        """Create the missing users; return (ids in `usernames` order, created)."""
        User = get_user_model()

        def existing():
            # A prefix match rather than username__in: a list of 100k names
            # would exceed SQLite's limit on query parameters.
            return dict(
                User.objects.filter(username__startswith=prefix).values_list(
                    "username", "id"
                )
            )

        found = existing()
        missing = [name for name in usernames if name not in found]
        User.objects.bulk_create(
            (
                User(
                    username=name, email=f"{name}@example.com", password=password.value
                )
                for name in missing
            ),
            batch_size=self.batch_size,
        )
        if missing:
            found = existing()
        return [found[name] for name in usernames], len(missing)

    def ensure_projects(self, demo_id, names):
        """Create the missing projects; return (projects in `names` order, created)."""

        def existing():
            by_name = {}
            for project in Project.objects.filter(
                owner_id=demo_id, name__in=names
            ).order_by("id"):
                by_name.setdefault(project.name, project)
            return by_name

        found = existing()
        missing = [name for name in names if name not in found]
        Project.objects.bulk_create(
            Project(
                name=name,
                owner_id=demo_id,
                description=f"Demo project {name}: seeded by manage.py seed_demo.",
            )
            for name in missing
        )
        if missing:
            found = existing()
        return [found[name] for name in names], len(missing)

    def ensure_memberships(
        self, demo_id, user_ids, projects, per_project, admins, round_robin=False
    ):
        """Add the missing memberships; demo owns, the first other member admins.

        round_robin (--loadtest): the i-th user joins project i % len(projects)
        only; with one project that is every user.
        """
        existing = set(
            Membership.objects.filter(project__in=projects).values_list(
                "project_id", "user_id"
            )
        )
        others = [pk for pk in user_ids if pk != demo_id]
        rows = []
        for index, project in enumerate(projects):
            if round_robin:
                chosen = [
                    pk
                    for i, pk in enumerate(user_ids)
                    if i % len(projects) == index and pk != demo_id
                ]
            elif per_project is None or per_project - 1 >= len(others):
                chosen = others
            else:
                # A different window of users per project, so memberships overlap.
                size = per_project - 1
                start = (index * size) % len(others) if others else 0
                chosen = (others[start:] + others[:start])[:size]
            roles = [(demo_id, Membership.Role.OWNER)]
            roles += [
                (
                    pk,
                    Membership.Role.ADMIN
                    if admins and i == 0
                    else Membership.Role.MEMBER,
                )
                for i, pk in enumerate(chosen)
            ]
            rows += [
                Membership(user_id=pk, project_id=project.pk, role=role)
                for pk, role in roles
                if (project.pk, pk) not in existing
            ]
        Membership.objects.bulk_create(rows, batch_size=self.batch_size)
        return len(rows)

    def ensure_messages(self, projects, total, days):
        """Top each project up to its share of `total` messages; return how many."""
        if not projects:
            return 0
        stats = {
            row["project_id"]: row
            for row in Message.objects.filter(project__in=projects)
            .values("project_id")
            .annotate(count=Count("id"), last=Max("created_at"))
            .order_by()
        }
        now = timezone.now()
        created = 0
        for project, target in zip(projects, split_evenly(total, len(projects))):
            stat = stats.get(project.pk, {"count": 0, "last": None})
            missing = target - stat["count"]
            if missing <= 0:
                continue
            authors = list(
                Membership.objects.filter(project_id=project.pk)
                .order_by("user_id")
                .values_list("user_id", flat=True)
            )
            start = now - timedelta(days=days)
            if stat["last"] is not None and stat["last"] > start:
                start = stat["last"]
            created += self.insert_messages(project.pk, authors, missing, start, now)
        return created

    def insert_messages(self, project_id, authors, count, start, end):
        step = (end - start) / (count + 1)
        # Stored rendered, as a send stores it (no phrase names anyone): each
        # phrase is rendered once, so reads never render seeded rows lazily.
        rendered = [render(phrase) for phrase in PHRASES]
        with (
            transaction.atomic(),
            given_timestamps(Message, "created_at", "updated_at"),
        ):
            first_seq = reserve_seq_block(project_id, count)
            for offset in range(0, count, self.batch_size):
                batch = []
                for i in range(offset, min(offset + self.batch_size, count)):
                    seq = first_seq + i
                    at = start + step * (i + 1)
                    phrase = (seq * 7 + project_id) % len(PHRASES)
                    batch.append(
                        Message(
                            project_id=project_id,
                            author_id=authors[seq % len(authors)],
                            content=PHRASES[phrase],
                            content_html=rendered[phrase],
                            render_version=RENDER_VERSION,
                            seq=seq,
                            changed_seq=seq,
                            created_at=at,
                            updated_at=at,
                        )
                    )
                Message.objects.bulk_create(batch)
        return count
