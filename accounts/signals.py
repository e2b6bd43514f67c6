"""A saved, deleted or signed-out user: cached entries retired, sockets told."""

from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.backends import forget_user
from accounts.models import User

# Fields whose change says nothing about access: Django's sign-in saves
# last_login alone, /settings saves display_name alone.
NOT_ACCESS_FIELDS = {"last_login", "display_name"}


def _signs_in_only(update_fields):
    return update_fields is not None and set(update_fields) <= NOT_ACCESS_FIELDS


@receiver(post_save, sender=User)
@receiver(post_delete, sender=User)
def drop_cached_user(sender, instance, update_fields=None, created=False, **kwargs):
    from chat.realtime.notify import notify_access_ended

    user_id = instance.pk
    if created:
        forget_user(user_id, revoked=False)
        return
    revoked = not _signs_in_only(update_fields)
    forget_user(user_id, revoked=revoked)
    transaction.on_commit(lambda: forget_user(user_id, revoked=revoked))
    if revoked:
        # Deactivated, a new password, deleted — or any other edit: the user's
        # sockets check their sessions again (a harmless check when nothing
        # about access changed).
        notify_access_ended(user_id=user_id)


@receiver(user_logged_out)
def close_signed_out_sockets(sender, request, user, **kwargs):
    from chat.realtime.notify import notify_access_ended

    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and session_key:
        notify_access_ended(user_id=user.pk, session_key=session_key)
