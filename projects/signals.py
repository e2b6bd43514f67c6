"""Cache invalidation for membership and project changes, after commit."""

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

    def invalidate():
        forget_access(user_id, project_id)
        bump_version("user", user_id)

    # Now, for readers inside this transaction, and again after commit, for
    # readers that rebuilt from the old rows in between.
    invalidate()
    transaction.on_commit(invalidate)


@receiver(post_save, sender=Project)
def project_changed(sender, instance, created, **kwargs):
    if created:
        return
    project_id = instance.pk

    def invalidate():
        member_ids = list(
            Membership.objects.filter(project_id=project_id).values_list("user_id", flat=True)
        )
        for user_id in member_ids:
            forget_access(user_id, project_id)
            bump_version("user", user_id)
        bump_version("project", project_id)

    invalidate()
    transaction.on_commit(invalidate)
