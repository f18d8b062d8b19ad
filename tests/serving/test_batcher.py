"""Dynamic batching: concurrent requests share forwards and each gets its own adapter's answer."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from adalora_core.serving.batcher import DynamicBatcher
from tests.serving.test_cache import add_adapters
from tests.serving.tiny_serving import WORDS


def requests(ids: list[str | None], count: int, seed: int) -> list[tuple[str | None, list[str]]]:
    rng = random.Random(seed)
    return [
        (
            rng.choice(ids),
            [" ".join(rng.choices(WORDS, k=rng.randint(1, 9))) for _ in range(rng.randint(1, 3))],
        )
        for _ in range(count)
    ]


def test_threads_get_their_own_adapters_answers(make_engine, source, tmp_path) -> None:
    ids: list[str | None] = [*add_adapters(source, tmp_path, 4), None]
    engine = make_engine(max_batch_size=16, max_wait_ms=30)
    work = requests(ids, 24, seed=5)
    expected = [engine.infer(a, texts, base_model="tiny-bert") for a, texts in work]
    batcher = DynamicBatcher(engine)
    try:
        with ThreadPoolExecutor(12) as pool:
            got = list(
                pool.map(
                    lambda r: batcher.submit_blocking(
                        engine.prepare(r[0], r[1], base_model="tiny-bert")
                    ),
                    work,
                )
            )
    finally:
        batcher.close()
    for want, have in zip(expected, got, strict=True):
        assert len(want) == len(have)
        for w, h in zip(want, have, strict=True):
            assert w.keys() == h.keys()
            if "label" in w:
                assert w["label"] == h["label"]
                assert w["scores"] == pytest.approx(h["scores"], abs=1e-5)
            else:
                assert w["embedding"] == pytest.approx(h["embedding"], abs=1e-5)
    assert batcher.stats.rows == sum(len(t) for _, t in work)
    assert batcher.stats.batches < len(work)  # requests really shared forwards
    assert batcher.stats.largest_batch_rows <= 16


def test_asyncio_requests_are_batched_and_answered_in_order(make_engine, source, tmp_path) -> None:
    ids: list[str | None] = list(add_adapters(source, tmp_path, 3))
    engine = make_engine(max_batch_size=32, max_wait_ms=50)
    work = requests(ids, 10, seed=9)
    expected = [engine.infer(a, texts) for a, texts in work]
    batcher = DynamicBatcher(engine)

    async def main() -> list[list[dict]]:
        prepared = [engine.prepare(a, texts) for a, texts in work]
        return await asyncio.gather(*(batcher.submit(p) for p in prepared))

    try:
        got = asyncio.run(main())
    finally:
        batcher.close()
    assert [[r["label"] for r in rows] for rows in got] == [
        [r["label"] for r in rows] for rows in expected
    ]
    assert batcher.stats.batches == 1


def test_token_budget_splits_large_requests(make_engine, source, tmp_path) -> None:
    (adapter_id,) = add_adapters(source, tmp_path, 1)
    engine = make_engine(max_batch_tokens=40, max_batch_size=32)
    texts = [" ".join(["w3"] * 8) for _ in range(12)]  # 10 tokens each with [CLS]/[SEP]
    batcher = DynamicBatcher(engine)
    try:
        got = batcher.submit_blocking(engine.prepare(adapter_id, texts))
    finally:
        batcher.close()
    assert got == engine.infer(adapter_id, texts)
    assert batcher.stats.largest_batch_tokens <= 40
    assert batcher.stats.batches == 3


def test_batching_off_runs_each_request_alone(make_engine, source, tmp_path) -> None:
    ids: list[str | None] = list(add_adapters(source, tmp_path, 2))
    engine = make_engine(batching=False, max_wait_ms=50)
    work = requests(ids, 6, seed=3)
    batcher = DynamicBatcher(engine)
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda r: batcher.submit_blocking(engine.prepare(*r)), work))
    finally:
        batcher.close()
    assert batcher.stats.batches == len(work)


def test_an_adapters_rows_count_from_queued_until_answered(make_engine, source, tmp_path) -> None:
    """What /v1/unload_lora_adapter asks before deleting: rows of the adapter queued or in a
    forward count until their answer is out, then no longer."""
    import threading

    first, second = add_adapters(source, tmp_path, 2)
    engine = make_engine()
    gate, entered = threading.Event(), threading.Event()
    run = engine.run

    def held_run(batch):  # the forward waits until the test lets it go
        entered.set()
        gate.wait()
        return run(batch)

    engine.run = held_run  # type: ignore[method-assign]
    batcher = DynamicBatcher(engine)
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                batcher.submit_blocking, engine.prepare(first, ["w1 w2", "w3"], base_model=None)
            )
            assert entered.wait(60)
            assert (batcher.rows_of(first), batcher.rows_of(second)) == (2, 0)
            gate.set()
            assert len(answer.result(60)) == 2
    finally:
        gate.set()
        batcher.close()
    assert batcher.rows_of(first) == 0
