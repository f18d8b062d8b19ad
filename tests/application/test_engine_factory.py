"""Every serving setting reaches the part that uses it: a new ``infer_*`` setting left unwired
fails here."""

from __future__ import annotations

from dataclasses import fields

from adalora_core.serving.engine import EngineSettings
from application.admission import AdmissionLimits
from application.engine_factory import SERVING_SETTINGS, admission_limits, engine_settings
from service.settings import Settings

OTHER_CONSUMERS = {"device", "dtype", "rate_limit"}


def test_every_infer_setting_is_wired() -> None:
    infer_settings = {name for name in Settings.model_fields if name.startswith("infer_")}
    unwired = infer_settings - set(SERVING_SETTINGS)
    assert not unwired, f"Settings fields not wired into serving: {sorted(unwired)}"


def test_every_destination_exists() -> None:
    engine_fields = {f.name for f in fields(EngineSettings)}
    admission_fields = {f.name for f in fields(AdmissionLimits)}
    for name, destination in SERVING_SETTINGS.items():
        assert name in Settings.model_fields, name
        part, _, target = destination.partition(".")
        if part == "engine":
            assert target in engine_fields, destination
        elif part == "admission":
            assert target in admission_fields, destination
        else:
            assert destination in OTHER_CONSUMERS, destination


def test_each_engine_and_admission_setting_arrives_with_its_value() -> None:
    """A value other than the default, for each wired setting, shows up where it is wired."""
    changed = {
        "max_batch_size": 7,
        "max_wait_ms": 3.5,
        "max_batch_tokens": 999,
        "device_cache_bytes": 12345,
        "host_cache_bytes": 67890,
        "pinned_adapters": ["ad_x"],
        "infer_batching": False,
        "infer_max_length": 77,
        "infer_encoder_forward": "thread",
        "infer_max_inputs": 5,
        "infer_max_new_tokens": 9,
    }
    settings = Settings(**changed)
    engine, limits = engine_settings(settings), admission_limits(settings)
    for name, value in changed.items():
        part, _, target = SERVING_SETTINGS[name].partition(".")
        got = getattr(engine if part == "engine" else limits, target)
        assert got == (tuple(value) if isinstance(value, list) else value), name
    assert engine.encoder_forward == "thread"  # the setting that used to be dropped
    assert limits.max_batch_tokens == engine.max_batch_tokens == 999
