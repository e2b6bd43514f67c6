from django.db import migrations


def create_fulltext_index(apps, schema_editor):
    # PostgreSQL only: serves /api/search (to_tsvector @@ plainto_tsquery).
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS idx_message_content_fulltext ON chat_message "
        "USING GIN (to_tsvector('english', content))"
    )


def drop_fulltext_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS idx_message_content_fulltext")


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial_messages")]

    operations = [migrations.RunPython(create_fulltext_index, drop_fulltext_index)]
