"""chatsite.runtime: the server processes' garbage-collector settings."""

import gc

import pytest

from chatsite.runtime import tune_gc


@pytest.fixture
def restore_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_thresholds_are_set_and_start_up_objects_frozen(settings, restore_gc):
    settings.GC_THRESHOLD = [12345, 11, 101]
    gc.unfreeze()
    tune_gc()
    assert gc.get_threshold() == (12345, 11, 101)
    assert gc.get_freeze_count() > 1000  # Django, the URL configuration, the models


def test_off_leaves_the_collector_alone(settings, restore_gc):
    settings.GC_THRESHOLD = []
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
