from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.backends import forget_user
from accounts.models import User


@receiver(post_save, sender=User)
@receiver(post_delete, sender=User)
def drop_cached_user(sender, instance, **kwargs):
    forget_user(instance.pk)
    transaction.on_commit(lambda: forget_user(instance.pk))
