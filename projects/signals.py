"""Membership and project changes: cached reads retired and sockets told, after commit.

Every way project access ends — a member leaves or is removed, a project is
deactivated, made private or otherwise edited — passes through these receivers,
whatever wrote it (the API, the admin, the shell): the access entries are
retired (chatsite.retired), the versions of the lists bumped, and the sockets
concerned checked again in every process (chat.realtime.notify.notify_access_ended).
"""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from chatsite.cache import bump_version
from projects.access import forget_access
from projects.models import Membership, Project


@receiver(post_save, sender=Membership)
@receiver(post_delete, sender=Membership)
def membership_changed(sender, instance, **kwargs):
    user_id, project_id = instance.user_id, instance.project_id
    # A new membership ends nothing: its entry is dropped, not retired, so the
    # member's next reads are cached at once. A changed role or a removal is
    # retired against stale refills (chatsite.retired).
    revoked = not kwargs.get("created", False)

    def invalidate():
        forget_access([(user_id, project_id)], revoked=revoked)
        bump_version("user", user_id)

    # Now, for readers inside this transaction, and again after commit, for
    # readers that rebuilt from the old rows in between.
    invalidate()
    transaction.on_commit(invalidate)
    from chat.realtime.me import notify_membership

    if kwargs.get("signal") is post_delete:
        from chat.realtime.notify import notify_access_ended

        notify_access_ended(project_id=project_id, user_ids=[user_id])
        notify_membership(user_id, project_id, "removed")
    elif kwargs.get("created", False):
        # The member's /ws/me/ sockets add the project and listen to it.
        notify_membership(user_id, project_id, "joined")


@receiver(post_save, sender=Project)
def project_changed(sender, instance, created, **kwargs):
    if created:
        return
    project_changes_committed([instance.pk])


def project_changes_committed(project_ids):
    """Retire the projects' cached reads and check their sockets again.

    Call inside the transaction that changed them (projects.actions does).
    """
    from chat.realtime.notify import notify_access_ended

    project_ids = list(project_ids)

    def invalidate():
        members = list(
            Membership.objects.filter(project_id__in=project_ids).values_list(
                "user_id", "project_id")
        )
        forget_access(members)
        for user_id in {user_id for user_id, _ in members}:
            bump_version("user", user_id)
        for project_id in project_ids:
            bump_version("project", project_id)

    invalidate()
    transaction.on_commit(invalidate)
    for project_id in project_ids:
        notify_access_ended(project_id=project_id)
