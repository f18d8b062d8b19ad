"""Encoder forwards in their own process: same answers as in a thread, and a child that dies or
fails one batch costs that batch only."""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import pytest
import torch

from adalora_core.errors import ConfigError
from adalora_core.serving.forward_process import ForwardProcessDied, uses_process
from adalora_core.serving.grouped import RowGroup
from tests.serving.test_mixed_batch import three_adapters
from tests.serving.tiny_serving import MemorySource


def mixed_requests(engine):
    return [
        engine.prepare("b-all", ["w1 w2 w3", ["w4 w5", "w6"]], base_model="tiny-bert"),
        engine.prepare(None, ["w7 w8"], base_model="tiny-bert"),
        engine.prepare("c-rank0", ["w2 w3 w4 w5 w6"], base_model="tiny-bert"),
    ]


@pytest.fixture
def stored(source: MemorySource, tmp_path: Path) -> MemorySource:
    for adapter_id, weights in three_adapters().items():
        source.add(adapter_id, weights, tmp_path)
    return source


def test_the_process_answers_as_the_thread_does(make_engine, stored) -> None:
    in_thread = make_engine(encoder_forward="thread")
    in_process = make_engine(encoder_forward="process")
    assert in_thread.encoder is None and in_process.encoder is not None
    assert in_process.run(mixed_requests(in_process)) == in_thread.run(mixed_requests(in_thread))


def test_a_gpt2_base_in_the_process(make_engine) -> None:
    """The child rebuilds other families from their config too (GPT-2 reads its pad id there)."""
    answers = {}
    for placement in ("thread", "process"):
        engine = make_engine(encoder_forward=placement)
        rows = engine.prepare(None, ["w1 w2", "w3 w4 w5 w6"], base_model="tiny-gpt2")
        answers[placement] = engine.run([rows])
    assert answers["process"] == answers["thread"]


def test_a_killed_child_fails_its_batch_and_the_next_batch_starts_a_new_one(
    make_engine, stored
) -> None:
    engine = make_engine(encoder_forward="process")
    want = engine.run(mixed_requests(engine))
    os.kill(engine.encoder._child.pid, signal.SIGKILL)
    engine.encoder._child.join()
    with pytest.raises(ForwardProcessDied):
        engine.run(mixed_requests(engine))
    assert engine.run(mixed_requests(engine)) == want  # base and adapters sent again


def test_a_failing_batch_leaves_the_child_serving(make_engine, stored) -> None:
    engine = make_engine(encoder_forward="process")
    good = mixed_requests(engine)
    want = engine.run(good)
    base = good[0].base
    vocab = base.model.config.vocab_size
    padded = {"input_ids": torch.tensor([[vocab + 5]]), "attention_mask": torch.tensor([[1]])}
    with pytest.raises(RuntimeError, match="IndexError"):
        engine.encoder(base, padded, [RowGroup(0, 1, None)])
    child = engine.encoder._child
    assert engine.run(good) == want and engine.encoder._child is child


def test_an_evicted_adapter_leaves_the_child_with_the_next_batch(make_engine, stored) -> None:
    engine = make_engine(encoder_forward="process")
    engine.run(mixed_requests(engine))
    held = len(engine.encoder._adapters)
    assert held == 2
    engine.evict("c-rank0")
    gc.collect()
    assert len(engine.encoder._dropped) == 1
    engine.run([engine.prepare("b-all", ["w1"], base_model="tiny-bert")])
    assert len(engine.encoder._adapters) == 1 and not engine.encoder._dropped


def test_close_stops_the_child(make_engine, stored) -> None:
    engine = make_engine(encoder_forward="process")
    engine.run(mixed_requests(engine))
    child = engine.encoder._child
    engine.close()
    assert not child.is_alive()


def test_auto_is_the_process_on_cpu_only() -> None:
    assert uses_process("auto", torch.device("cpu"))
    assert not uses_process("auto", torch.device("cuda"))
    assert not uses_process("thread", torch.device("cpu"))
    with pytest.raises(ConfigError) as info:
        uses_process("process", torch.device("cuda"))
    assert info.value.field == "encoder_forward"
