"""Fixtures for the serving tests (helpers live in tiny_serving.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from adalora_core.serving.engine import EngineSettings, InferenceEngine
from tests.serving.tiny_serving import MemorySource, base_factory


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


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
