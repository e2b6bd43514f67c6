"""The project package as an app, for the observability hooks that need ready()."""

import atexit

from django.apps import AppConfig
from django.core.signals import request_finished, request_started
from django.db.backends.signals import connection_created
from django.db.models.signals import post_delete, post_save


class ChatsiteConfig(AppConfig):
    name = "chatsite"
    verbose_name = "Chat site"

    def ready(self):
        from chatsite.db import install_query_observer
        from chatsite.logging import unbind_request_id
        from chatsite.metrics import mark_this_process_dead

        connection_created.connect(install_query_observer, dispatch_uid="chatsite.db")
        from django.conf import settings

        if settings.DATABASE_REPLICA_URLS:
            # Writes on the primary raise the replicas' read fence (chatsite/dbrouter.py).
            from chatsite.dbrouter import install_write_observer

            connection_created.connect(install_write_observer, dispatch_uid="chatsite.dbrouter")
        request_started.connect(unbind_request_id, dispatch_uid="chatsite.unbind_started")
        request_finished.connect(unbind_request_id, dispatch_uid="chatsite.unbind_finished")
        # django-prometheus's model counters, fed by signals instead of its
        # model mixin so no model class has to change.
        post_save.connect(count_model_save, dispatch_uid="chatsite.model_saves")
        post_delete.connect(count_model_delete, dispatch_uid="chatsite.model_deletes")
        atexit.register(mark_this_process_dead)


_MODEL_COUNTERS = {}


def _model_counters(model):
    counters = _MODEL_COUNTERS.get(model)
    if counters is None:
        from django_prometheus.models import model_deletes, model_inserts, model_updates

        name = model._meta.label_lower
        counters = _MODEL_COUNTERS[model] = (
            model_inserts.labels(name), model_updates.labels(name), model_deletes.labels(name)
        )
    return counters


def count_model_save(sender, created, raw=False, **kwargs):
    """Count an insert or an update of one model instance."""
    inserts, updates, _ = _model_counters(sender)
    (inserts if created else updates).inc()


def count_model_delete(sender, **kwargs):
    """Count the deletion of one model instance."""
    _model_counters(sender)[2].inc()
