"""Files follow their rows: an Upload deleted by any path loses its files.

A message delete marks its uploads and removes their files itself
(chat.uploads.release_message_uploads); this covers rows removed outright --
a project or user deleted in the admin cascades to its uploads -- so no file
is left in storage without a row that purge_uploads could find.
"""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from chat.models import Upload


@receiver(post_delete, sender=Upload, dispatch_uid="chat_upload_files")
def remove_upload_files(sender, instance, **kwargs):
    from chat.uploads import remove_files

    names = [instance.file.name, instance.thumbnail.name]
    transaction.on_commit(lambda: remove_files(names))
