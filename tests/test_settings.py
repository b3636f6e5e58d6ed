"""The settings object: every way of writing a value, and errors that say how to fix them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.platform.settings import Settings, SettingsError, get_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_serve_the_committed_store():
    settings = Settings()
    assert str(settings.model_store) == "model_store" and settings.models == []
    assert settings.batching and settings.batch.max_batch_size == 64
    assert settings.worker_count >= 1 and settings.threads_per_session >= 1


@pytest.mark.parametrize(
    "value", ["classifier,forecaster", " classifier , forecaster ", '["classifier", "forecaster"]']
)
def test_model_names_as_a_comma_list_or_json(monkeypatch, value):
    monkeypatch.setenv("MODELSERVE_MODELS", value)
    assert get_settings().models == ["classifier", "forecaster"]


def test_nested_and_per_model_batch_settings(monkeypatch):
    monkeypatch.setenv("MODELSERVE_BATCH__MAX_WAIT_MS", "0")
    monkeypatch.setenv("MODELSERVE_BATCH_OVERRIDES", '{"forecaster": {"max_batch_size": 16}}')
    settings = get_settings()
    assert settings.batch_policy("classifier").max_wait_ms == 0
    assert settings.batch_policy("forecaster").max_batch_size == 16


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("MODELSERVE_WORKERS", "many", "MODELSERVE_WORKERS"),
        ("MODELSERVE_PROVIDER", "tpu", "MODELSERVE_PROVIDER"),
        ("MODELSERVE_MODEL_VERSIONS", "classifier=1", "model_versions"),
        ("MODELSERVE_MAX_ITEMS_PER_REQUEST", "20000", "raise the queue size or lower the item limit"),
        ("MODELSERVE_MODEL_POLL_S", "-1", "MODELSERVE_MODEL_POLL_S"),
        ("MODELSERVE_MODEL_RELEASE_GRACE_S", "1", "GRACE_S .* raise the grace period"),
    ],
)
def test_a_bad_value_stops_start_up_with_a_message_naming_it(monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=says):
        get_settings()


def test_model_updates_poll_every_10_s_and_release_a_replaced_version_after_5_s():
    settings = Settings()
    assert settings.model_poll_s == 10 and settings.model_release_grace_s == 5


def test_the_release_grace_must_outlast_the_longest_queue_timeout(monkeypatch):
    # A replaced version must not be closed under a request still queued for it.
    monkeypatch.setenv("MODELSERVE_BATCH_OVERRIDES", '{"forecaster": {"queue_timeout_s": 8}}')
    with pytest.raises(SettingsError, match=r"\(8 s: the longest batch queue timeout"):
        get_settings()
    get_settings.cache_clear()
    monkeypatch.setenv("MODELSERVE_MODEL_RELEASE_GRACE_S", "8")
    monkeypatch.setenv("MODELSERVE_MODEL_POLL_S", "0")  # 0: no polling at all
    settings = get_settings()
    assert settings.model_release_grace_s == 8 and settings.model_poll_s == 0


def test_gc_thresholds_default_to_the_measured_ones_and_read_json(monkeypatch):
    assert Settings().gc_thresholds == (700, 100, 100)
    monkeypatch.setenv("MODELSERVE_GC_THRESHOLDS", "[700, 10, 10]")
    assert Settings().gc_thresholds == (700, 10, 10)
    monkeypatch.setenv("MODELSERVE_GC_THRESHOLDS", "[700, -1, 10]")
    with pytest.raises(ValidationError):
        Settings()
