"""Where /infer runs: the configured device and dtype, with a clean fall-back to the CPU."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from application.engine_factory import serving_device, serving_dtype

GPU = torch.cuda.is_available()


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("auto", "cuda" if GPU else "cpu"),
        ("cpu", "cpu"),
        ("cuda", "cuda" if GPU else "cpu"),
        ("cuda:7", "cuda:7" if torch.cuda.device_count() > 7 else "cpu"),
    ],
)
def test_the_device_or_a_clean_cpu_fallback(requested: str, expected: str) -> None:
    assert str(serving_device(requested)) == expected


def test_a_device_that_is_not_one_is_refused() -> None:
    for bad in ("tpu", "gpu0", "mps:x"):
        with pytest.raises(ValueError, match="ADALORA_INFER_DEVICE"):
            serving_device(bad)


def test_bf16_on_the_cpu_and_fp16_only_on_a_gpu(caplog: pytest.LogCaptureFixture) -> None:
    """bf16 runs on the CPU (slowly on many CPUs; to test and to save memory: what it serves is
    checked against float32 in tests/serving/test_bf16_cpu.py); fp16 there falls back."""
    cpu = torch.device("cpu")
    assert serving_dtype("float32", cpu) is torch.float32
    assert serving_dtype("bfloat16", cpu) is torch.bfloat16
    with caplog.at_level(logging.WARNING):
        assert serving_dtype("float16", cpu) is torch.float32
    assert "ADALORA_INFER_DTYPE=float16 is not served on cpu" in caplog.text


def test_readyz_reports_where_inference_runs(settings: Any) -> None:
    app = create_app(
        settings.model_copy(update={"infer_device": "cuda", "infer_dtype": "bfloat16"})
    )
    with TestClient(app) as client:
        ready = client.get("/readyz").json()
    if GPU:
        assert ready["device"].startswith("cuda")
    else:  # no GPU here: the service still starts, on the CPU, in bf16 as asked
        assert ready["device"] == "cpu" and ready["dtype"] == "bfloat16"


def test_a_cpu_service_in_fp16_falls_back_to_float32(settings: Any) -> None:
    app = create_app(settings.model_copy(update={"infer_device": "cpu", "infer_dtype": "float16"}))
    with TestClient(app) as client:
        ready = client.get("/readyz").json()
    assert ready["device"] == "cpu" and ready["dtype"] == "float32"
