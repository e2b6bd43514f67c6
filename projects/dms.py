"""Direct messages: the one conversation of a set of people (docs/API.md, "Direct messages").

A DM is a private project of kind `dm` whose members are fixed when it is
made: nobody joins, is added or leaves (projects.actions refuses those with
`dm_members_fixed`). It is found by its member set -- `Project.dm_key`, the
sorted user ids joined by commas, unique -- so two people opening the same
conversation at once get one. Every member has the role `member`: nobody in
a DM moderates the others' messages, makes invite links or manages members.
Everything else (history, live, unread, mentions, search, attachments) is the
project machinery unchanged.
"""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from chatsite.errors import Conflict, Invalid, NotFound
from projects.models import Membership, Project

MIN_DM_PEOPLE = 2
MAX_DM_PEOPLE = 8
# The stored name of a DM is only a fallback (admin search, a DM left with
# nobody else in it): every listing names a DM per viewer from its other
# members (display_names).
STORED_NAME_MAX = 200


def dm_key(user_ids):
    """The member-set key of a DM: the sorted user ids joined by commas."""
    return ",".join(str(pk) for pk in sorted(set(user_ids)))


def shown_name(user):
    """How a person is named in a DM's title: the display name, else the username."""
    return user.display_name or user.username


def join_names(names):
    """Join the other members' names as every listing shows them: sorted, ", "."""
    return ", ".join(sorted(names, key=lambda name: (name.casefold(), name)))


def check_open_dm(user, usernames):
    """Validate a list of usernames and return (the DM of them and the caller, created).

    The caller is included whether or not listed; duplicates collapse. 422 for
    input that is not a list of names or for fewer than MIN_DM_PEOPLE or more
    than MAX_DM_PEOPLE people in all; 404 naming the unknown or inactive ones.
    """
    if not isinstance(usernames, list) or not all(isinstance(n, str) for n in usernames):
        raise Invalid("usernames must be a list of usernames.",
                      fields={"usernames": "not_a_list_of_strings"})
    wanted = list(dict.fromkeys(name.strip() for name in usernames))
    wanted = [name for name in wanted if name and name != user.username]
    # Bounded before any query: a list of a million names costs no lookup.
    if len(wanted) + 1 > MAX_DM_PEOPLE:
        raise Invalid(f"A direct message has at most {MAX_DM_PEOPLE} people, you included.",
                      fields={"usernames": "too_many"})
    if not wanted:
        raise Invalid(f"A direct message needs at least {MIN_DM_PEOPLE} people: name "
                      "someone besides yourself.", fields={"usernames": "too_few"})
    # PostgreSQL cannot even compare a NUL; no username has one.
    searchable = [name for name in wanted if "\x00" not in name]
    found = {
        found_user.username: found_user
        for found_user in get_user_model().objects.filter(
            username__in=searchable, is_active=True
        ).only("id", "username", "display_name")
    }
    unknown = [name for name in wanted if name not in found]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:MAX_DM_PEOPLE])
        raise NotFound(f"No such user: {shown}.", fields={"usernames": "unknown"})
    return do_open_dm(user, [found[name] for name in wanted])


def do_open_dm(creator, others):
    """Return (the DM of creator and others, created): the existing one, else a new one.

    Race-safe without a lock: the insert runs in its own transaction (a
    savepoint inside an outer one), and when another request made the same
    member set first, the unique dm_key refuses it and the winner's row is read.
    """
    people = [creator, *[user for user in others if user.pk != creator.pk]]
    key = dm_key(user.pk for user in people)
    existing = Project.objects.filter(dm_key=key).first()
    if existing is None:
        try:
            return _create_dm(creator, people, key), True
        except IntegrityError:
            existing = Project.objects.filter(dm_key=key).first()
            if existing is None:  # the insert failed for another reason
                raise
    if not existing.is_active:
        # The unique key keeps a deactivated conversation's place: reopening
        # it is an administrator's decision (Django admin), not a new DM.
        raise Conflict("This conversation was closed by an administrator.",
                       code="dm_closed")
    return existing, False


@transaction.atomic
def _create_dm(creator, people, key):
    names = sorted(user.username for user in people)
    project = Project.objects.create(
        name=", ".join(names)[:STORED_NAME_MAX],
        owner=creator,
        is_private=True,
        kind=Project.Kind.DM,
        dm_key=key,
    )
    # One insert a member (at most MAX_DM_PEOPLE): through save(), so the
    # membership signals bump each member's list version as for any join.
    for user in people:
        Membership.objects.create(user=user, project=project, role=Membership.Role.MEMBER)
    return project


def describe_dm(project, viewer):
    """Return (the DM's name for this viewer, its member count), in one query.

    The name is built from the other members (display name, else username).
    """
    users = list(
        get_user_model().objects.filter(memberships__project_id=project.pk)
        .only("username", "display_name")
    )
    names = [shown_name(user) for user in users if user.pk != viewer.pk]
    return (join_names(names) if names else project.name), len(users)


def get_dm_name(project, viewer):
    """The DM's name for this viewer: its other members' names (one query)."""
    return describe_dm(project, viewer)[0]


def get_project_title(project, viewer):
    """What a page or payload calls a project for this viewer (a DM: its other members)."""
    if project.kind == Project.Kind.DM:
        return get_dm_name(project, viewer)
    return project.name


def forget_dm_names_of(user_id):
    """Retire the cached project lists that name this user in a DM.

    Call after a user's display name (or username) changes: the lists of
    the user's DM partners show it, and they are cached per project version.
    """
    from chatsite.cache import bump_version

    dm_ids = list(
        Membership.objects.filter(user_id=user_id, project__kind=Project.Kind.DM)
        .values_list("project_id", flat=True)
    )

    def bump():
        for project_id in dm_ids:
            bump_version("project", project_id)

    bump()
    transaction.on_commit(bump)
    return len(dm_ids)
