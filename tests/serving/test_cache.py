"""Adapter cache: byte budgets, LRU tiers, single-flight loads, corrupt artifacts, eviction."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adalora_core.serving.cache import AdapterState, check_adapter_transition
from adalora_core.serving.sources import AdapterCorrupt, AdapterNotFound
from adalora_core.state_machine import IllegalTransition
from tests.serving.tiny_serving import MemorySource, bert_layer_paths, make_adapter


def add_adapters(source: MemorySource, tmp_path: Path, count: int) -> list[str]:
    l0, l1 = bert_layer_paths(0), bert_layer_paths(1)
    ids = []
    for i in range(count):
        ranks = {l0["q"]: 1 + i % 4, l1["v"]: 2, l1["up"]: i % 3}
        adapter_id = f"ad{i}"
        source.add(
            adapter_id,
            make_adapter("tiny-bert", "classification", ranks, seed=100 + i, labels=["a", "b"]),
            tmp_path,
        )
        ids.append(adapter_id)
    return ids


def test_budgets_hold_and_reload_gives_same_outputs(make_engine, source, tmp_path) -> None:
    ids = add_adapters(source, tmp_path, 6)
    probe = make_engine()
    sizes = {i: probe.adapter(i).nbytes for i in ids}
    source.reads.clear()
    device_budget = max(sizes.values()) * 2
    host_budget = max(sizes.values()) * 2
    engine = make_engine(device_cache_bytes=device_budget, host_cache_bytes=host_budget)
    first = {i: engine.infer(i, ["w1 w2 w3", "w4 w5"]) for i in ids}
    assert engine.cache.stats.peak_device_bytes <= device_budget
    assert engine.cache.stats.peak_host_bytes <= host_budget
    assert engine.state(ids[0]) is AdapterState.EVICTED
    assert engine.state(ids[-1]) is AdapterState.READY_DEVICE
    assert engine.state(ids[-3]) is AdapterState.READY_HOST
    again = {i: engine.infer(i, ["w1 w2 w3", "w4 w5"]) for i in ids}
    assert again == first
    assert engine.cache.stats.peak_device_bytes <= device_budget
    assert engine.cache.stats.peak_host_bytes <= host_budget
    assert source.reads[ids[0]] == 2  # evicted, read again


def test_pinned_adapter_is_never_evicted(make_engine, source, tmp_path) -> None:
    ids = add_adapters(source, tmp_path, 5)
    probe = make_engine()
    size = max(probe.adapter(i).nbytes for i in ids)
    source.reads.clear()
    engine = make_engine(
        device_cache_bytes=size * 2, host_cache_bytes=size, pinned_adapters=(ids[0],)
    )
    for i in ids:
        engine.adapter(i)
    assert engine.state(ids[0]) is AdapterState.READY_DEVICE
    assert source.reads[ids[0]] == 1


def test_concurrent_cold_gets_load_once(make_engine, source, tmp_path) -> None:
    (adapter_id,) = add_adapters(source, tmp_path, 1)
    engine = make_engine()
    engine.base("tiny-bert", "sequence-classification")
    gate = threading.Event()
    source.delay = lambda: (gate.wait(5), time.sleep(0.05))
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(engine.adapter, adapter_id) for _ in range(8)]
        time.sleep(0.05)
        assert engine.state(adapter_id) is AdapterState.LOADING
        gate.set()
        loaded = {id(f.result()) for f in futures}
    assert source.reads[adapter_id] == 1
    assert engine.cache.stats.loads == 1
    assert len(loaded) == 1


def test_corrupt_artifact_is_marked_and_others_still_served(make_engine, source, tmp_path) -> None:
    good, bad = add_adapters(source, tmp_path, 2)
    source.corrupt(bad)
    engine = make_engine()
    with pytest.raises(AdapterCorrupt, match="sha256"):
        engine.infer(bad, ["w1"])
    assert engine.state(bad) is AdapterState.CORRUPT
    with pytest.raises(AdapterCorrupt):
        engine.infer(bad, ["w1"])
    assert source.reads[bad] == 1  # fails fast while marked corrupt
    assert engine.infer(good, ["w1 w2"])[0]["label"] in {"a", "b"}
    engine.evict(bad)
    assert engine.state(bad) is AdapterState.ABSENT


def test_unparseable_artifact_with_matching_checksum_is_corrupt(
    make_engine, source, tmp_path
) -> None:
    import hashlib

    from adalora_core.serving.sources import AdapterBlob

    source.blobs["junk"] = AdapterBlob(b"not a zip", hashlib.sha256(b"not a zip").hexdigest())
    with pytest.raises(AdapterCorrupt, match="zip"):
        make_engine().adapter("junk")


def test_a_blob_the_source_verified_is_not_hashed_again(
    make_engine, source, tmp_path, monkeypatch
) -> None:
    import dataclasses
    import hashlib

    from adalora_core.serving import loading as loading_module

    (adapter_id,) = add_adapters(source, tmp_path, 1)
    source.blobs[adapter_id] = dataclasses.replace(source.blobs[adapter_id], verified=True)
    hashed: list[int] = []

    def counting_sha256(data: bytes = b""):
        hashed.append(len(data))
        return hashlib.sha256(data)

    monkeypatch.setattr(loading_module.hashlib, "sha256", counting_sha256)
    assert make_engine().infer(adapter_id, ["w1 w2"])[0]["label"] in {"a", "b"}
    assert hashed == []


def test_unknown_adapter_is_not_found_and_not_remembered(make_engine) -> None:
    engine = make_engine()
    with pytest.raises(AdapterNotFound):
        engine.adapter("nope")
    assert engine.state("nope") is AdapterState.ABSENT


def test_evicted_adapter_is_reloaded(make_engine, source, tmp_path) -> None:
    (adapter_id,) = add_adapters(source, tmp_path, 1)
    engine = make_engine()
    before = engine.infer(adapter_id, ["w7 w8"])
    engine.evict(adapter_id)
    assert engine.state(adapter_id) is AdapterState.ABSENT
    assert engine.infer(adapter_id, ["w7 w8"]) == before
    assert source.reads[adapter_id] == 2


def test_state_machine_rejects_skipped_steps() -> None:
    check_adapter_transition(AdapterState.ABSENT, AdapterState.LOADING)
    check_adapter_transition(AdapterState.READY_HOST, AdapterState.READY_DEVICE)
    with pytest.raises(IllegalTransition):
        check_adapter_transition(AdapterState.ABSENT, AdapterState.READY_DEVICE)
    with pytest.raises(IllegalTransition):
        check_adapter_transition(AdapterState.CORRUPT, AdapterState.READY_DEVICE)


def test_adapter_for_modules_the_base_lacks_is_incompatible_not_corrupt(
    make_engine, source, tmp_path
) -> None:
    from adalora_core.serving.sources import AdapterIncompatible

    weights = make_adapter("tiny-bert", "regression", {bert_layer_paths(0)["q"]: 2}, seed=9)
    weights.modules["bert.encoder.layer.7.attention.self.query"] = weights.modules.pop(
        bert_layer_paths(0)["q"]
    )
    weights.meta.modules = [{"name": "bert.encoder.layer.7.attention.self.query", "rank": 2}]
    source.add("odd", weights, tmp_path)
    engine = make_engine()
    with pytest.raises(AdapterIncompatible, match="layer.7"):
        engine.adapter("odd")
    assert engine.state("odd") is AdapterState.ABSENT


def test_huge_inputs_are_cut_before_the_tokenizer_sees_them(make_engine, source, tmp_path) -> None:
    from adalora_core.errors import ConfigError
    from adalora_core.serving.requests import MAX_CHARS_PER_TOKEN

    (adapter_id,) = add_adapters(source, tmp_path, 1)
    engine = make_engine()
    adapter = engine.adapter(adapter_id)
    seen: list[int] = []
    tokenizer = adapter.base.tokenizer

    class Recording:
        def __getattr__(self, name: str):
            return getattr(tokenizer, name)

        def __call__(self, first, second=None, **kwargs):
            seen.append(len(first) + len(second or ""))
            return tokenizer(first, second, **kwargs)

    adapter.base.tokenizer = Recording()
    try:
        huge = "w1 " * 2_000_000  # 6 MB of text
        prepared = engine.prepare(adapter_id, [huge])
        assert len(prepared.encodings[0]["input_ids"]) == adapter.max_length
        assert seen and max(seen) <= adapter.max_length * MAX_CHARS_PER_TOKEN
        with pytest.raises(ConfigError, match="characters") as raised:
            engine.prepare(adapter_id, [huge], truncate=False)
        assert raised.value.field == "inputs[0]"
    finally:
        adapter.base.tokenizer = tokenizer


def test_moving_an_adapter_copies_it_and_leaves_the_one_in_use_alone(
    make_engine, source, tmp_path
) -> None:
    """The cache moves adapters between tiers while a batch may still be running on them:
    the moved copy is new, the original (tensors and head modules) stays where it was."""
    import torch

    (adapter_id,) = add_adapters(source, tmp_path, 1)
    adapter = make_engine().adapter(adapter_id)
    assert adapter.heads
    elsewhere = adapter.to(torch.device("meta"))  # any other device; meta exists on every host
    for name, head in adapter.heads.items():
        moved = elsewhere.heads[name]
        if head is adapter.base.head_templates.get(name):
            assert moved is head  # the base's own head is shared, never moved
            continue
        assert all(p.device.type == "cpu" for p in head.parameters()), name
        assert all(p.device.type == "meta" for p in moved.parameters()), name
    for before, after in zip(adapter.layers, elsewhere.layers, strict=True):
        if before is not None:
            assert before.q.device.type == "cpu" and after.q.device.type == "meta"
