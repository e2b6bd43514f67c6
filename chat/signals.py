"""Rows removed outright (a project or user deleted in the admin cascades to
its messages and uploads; a message delete in the product is a tombstone):

- An Upload deleted by any path loses its files. A message delete marks its
  uploads and removes their files itself (chat.uploads.release_message_uploads);
  this covers the cascades, so no file is left in storage without a row that
  purge_uploads could find.
- A Message removed from the table marks its project's list cards for a whole
  read (projects.list_cache.mark_reset): their tails follow changed_seq, which
  a removed row no longer has.
"""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from chat.models import Message, Upload


@receiver(post_delete, sender=Upload, dispatch_uid="chat_upload_files")
def remove_upload_files(sender, instance, **kwargs):
    from chat.uploads import remove_files

    names = [instance.file.name, instance.thumbnail.name]
    transaction.on_commit(lambda: remove_files(names))


@receiver(post_delete, sender=Message, dispatch_uid="chat_message_rows")
def reset_list_cards(sender, instance, **kwargs):
    from projects.list_cache import mark_reset

    project_id = instance.project_id
    transaction.on_commit(lambda: mark_reset(project_id))
