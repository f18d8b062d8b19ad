"""Continuous batching: rows join and leave between decode steps, and each decodes as if alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adalora_core.serving.decoding import ContinuousDecoder
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.handles import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, Generation
from adalora_core.serving.text_stream import _publishable as publishable
from tests.serving.tiny_serving import MemorySource, greedy_alone, make_adapter, make_tokenizer

LLAMA_RANKS = {
    "a1": {"model.layers.0.self_attn.q_proj": 4, "model.layers.1.mlp.down_proj": 3},
    "a2": {"model.layers.0.mlp.gate_proj": 4, "model.layers.1.self_attn.v_proj": 2},
}
GPT2_RANKS = {
    "a1": {"transformer.h.0.attn.c_attn": 4, "transformer.h.1.mlp.c_fc": 2},
    "a2": {"transformer.h.0.attn.c_proj": 3, "transformer.h.1.mlp.c_proj": 4},
}
SEED = {"a1": 31, "a2": 32}


def add_adapters(source: MemorySource, tmp_path: Path, base: str) -> dict:
    ranks = LLAMA_RANKS if base == "tiny-llama" else GPT2_RANKS
    weights = {a: make_adapter(base, "causal-lm", r, seed=SEED[a]) for a, r in ranks.items()}
    for adapter_id, w in weights.items():
        source.add(adapter_id, w, tmp_path)
    return weights


def alone(base: str, weights, prompt: str, max_new: int) -> str:
    """The oracle: HF generate, greedy, on the adapter merged into its own copy of the base."""
    return make_tokenizer(with_cls=False).decode(
        alone_tokens(base, weights, prompt, max_new), skip_special_tokens=True
    )


def alone_tokens(base: str, weights, prompt: str, max_new: int) -> list[int]:
    ids = make_tokenizer(with_cls=False)(prompt)["input_ids"]
    return greedy_alone(base, weights, ids, max_new)


def submit(
    engine: InferenceEngine, base: str, adapter: str | None, prompt: str, **params
) -> Generation:
    generation = GenerationParams(**{**params, "stop": tuple(params.get("stop", ()))})
    prepared = engine.prepare(adapter, [prompt], generation, base_model=base, base_kind="causal-lm")
    return engine.generate(prepared)[0]


def wait_for(condition, what: str, limit_s: float = 60.0) -> None:
    """Liveness guard only: the check is the condition, not the time."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


@pytest.mark.parametrize(
    ("base", "strategy"),
    [("tiny-llama", "auto"), ("tiny-gpt2", "grouped"), ("tiny-llama", "concat")],
)
def test_rows_that_join_a_running_batch_decode_as_if_alone(
    make_engine, source: MemorySource, tmp_path: Path, base: str, strategy: str
) -> None:
    weights = add_adapters(source, tmp_path, base)
    engine = make_engine(decode_strategy=strategy)
    long_prompt = "w1 w2 w3 w4 w5 w6 w7"
    long_row = submit(engine, base, "a1", long_prompt, max_new_tokens=40)
    decoder = engine.decoders.get(engine.adapter("a1").base)
    wait_for(lambda: decoder.steps >= 3, "the first row to be decoding")
    joined_at = decoder.steps
    later = [
        ("a2", "w9 w8", 6),
        (None, "w20 w21 w22", 5),
        ("a1", "w30", 4),
        ("a2", "w40 w41 w42 w43 w44 w45 w46 w47 w48 w49", 7),
    ]
    handles = [submit(engine, base, a, p, max_new_tokens=n) for a, p, n in later]
    short_done = [h.wait(timeout=60) for h in handles]
    steps_when_short_done = decoder.steps
    long_done = long_row.wait(timeout=60)

    assert long_done.text == alone(base, weights["a1"], long_prompt, 40)
    for (adapter, prompt, n), got in zip(later, short_done, strict=True):
        reference = alone(base, None if adapter is None else weights[adapter], prompt, n)
        assert got.text == reference, (adapter, prompt)
    # The short rows joined while the long row ran and left before it ended.
    assert long_done.completion_tokens > steps_when_short_done - joined_at
    assert decoder.largest_batch == 5
    # The adapters change what is generated, or the comparison would prove nothing.
    plain = alone(base, None, long_prompt, 40)
    assert long_done.text != plain
    assert decoder.running == 0


def test_a_finished_row_reports_its_reason_and_counts(
    make_engine, source: MemorySource, tmp_path: Path
) -> None:
    weights = add_adapters(source, tmp_path, "tiny-llama")
    engine = make_engine()
    done = submit(engine, "tiny-llama", "a2", "w3 w4", max_new_tokens=5).wait(timeout=60)
    reference = alone_tokens("tiny-llama", weights["a2"], "w3 w4", 5)
    assert done.text == make_tokenizer(with_cls=False).decode(reference, skip_special_tokens=True)
    assert done.prompt_tokens == 2
    assert done.completion_tokens == len(reference)
    assert done.finish == (FINISH_LENGTH if done.completion_tokens == 5 else FINISH_STOP)


def test_a_stop_string_ends_the_row_and_is_left_out(
    make_engine, source: MemorySource, tmp_path: Path
) -> None:
    weights = add_adapters(source, tmp_path, "tiny-llama")
    engine = make_engine()
    full = alone("tiny-llama", weights["a1"], "w5 w6", 12).split()
    assert len(full) >= 4, "the test needs a longer reference"
    stop = full[2]
    cut = " ".join(full[: full.index(stop)])
    row = submit(engine, "tiny-llama", "a1", "w5 w6", max_new_tokens=12, stop=[stop])
    done = row.wait(timeout=60)
    assert done.text.rstrip() == cut
    assert stop not in done.text
    assert done.finish == FINISH_STOP


def test_streamed_deltas_add_up_to_the_text(
    make_engine, source: MemorySource, tmp_path: Path
) -> None:
    import asyncio

    weights = add_adapters(source, tmp_path, "tiny-gpt2")
    engine = make_engine()

    async def stream() -> tuple[list[str], str]:
        row = submit(engine, "tiny-gpt2", "a2", "w7 w8", max_new_tokens=9)
        deltas = [e.delta async for e in row.events()]
        return deltas, alone("tiny-gpt2", weights["a2"], "w7 w8", 9)

    deltas, reference = asyncio.run(stream())
    assert "".join(deltas) == reference
    assert len([d for d in deltas if d]) > 1  # it streamed, not one final blob


def test_seeded_sampling_is_repeatable_whatever_runs_beside_it(
    make_engine, source: MemorySource, tmp_path: Path
) -> None:
    add_adapters(source, tmp_path, "tiny-llama")
    engine = make_engine()
    params = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 0.9}
    first = submit(engine, "tiny-llama", "a1", "w1", seed=7, **params).wait(timeout=60)
    neighbours = [submit(engine, "tiny-llama", "a2", "w2 w3", **params) for _ in range(3)]
    again = submit(engine, "tiny-llama", "a1", "w1", seed=7, **params).wait(timeout=60)
    other = submit(engine, "tiny-llama", "a1", "w1", seed=8, **params).wait(timeout=60)
    for n in neighbours:
        n.wait(timeout=60)
    assert first.text == again.text
    assert other.text != first.text  # another seed draws other tokens
    greedy = submit(engine, "tiny-llama", "a1", "w1", max_new_tokens=12).wait(timeout=60)
    assert greedy.text != first.text


def test_a_cancelled_row_leaves_the_batch_at_the_next_step(
    make_engine, source: MemorySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = ContinuousDecoder._step

    def slowed(self: ContinuousDecoder) -> None:  # long enough to cancel in the middle
        time.sleep(0.01)
        step(self)

    monkeypatch.setattr(ContinuousDecoder, "_step", slowed)
    add_adapters(source, tmp_path, "tiny-llama")
    engine = make_engine()
    # Greedy on the plain base, this prompt runs all 50 tokens when nobody cancels it.
    assert len(greedy_alone("tiny-llama", None, [5, 6], 50)) == 50
    slow = submit(engine, "tiny-llama", None, "w0 w1", max_new_tokens=50)
    decoder = engine.decoders.get(engine.base("tiny-llama", "causal-lm"))
    wait_for(lambda: decoder.steps >= 3, "decoding to start")
    slow.cancel()
    cancelled_at = decoder.steps
    done = slow.wait(timeout=60)
    assert done.finish == FINISH_CANCELLED
    assert done.completion_tokens < 50
    wait_for(lambda: decoder.running == 0, "the row to leave")
    assert decoder.steps - cancelled_at <= 1


def test_text_that_may_grow_into_a_stop_or_a_character_is_held_back() -> None:
    assert publishable("hello wor", ("world",)) == len("hello ")
    assert publishable("hello", ("xyz",)) == 5
    assert publishable("caf\ufffd", ()) == 3
    assert publishable("ab", ("b", "bc")) == 1


def test_generation_params_reach_the_row(make_engine) -> None:
    engine = make_engine()
    prepared = engine.prepare(
        None, ["w1"], GenerationParams(3), base_model="tiny-llama", base_kind="causal-lm"
    )
    handles = engine.generate(
        prepared.__class__(
            prepared.base,
            None,
            prepared.encodings,
            GenerationParams(3, temperature=1.0, seed=5),
        ),
        copies=3,
    )
    assert [h.sampling.seed for h in handles] == [5, 6, 7]
    assert all(isinstance(h, Generation) for h in handles)
    for h in handles:
        h.wait(timeout=60)


def test_auto_takes_the_concat_op_only_for_small_groups(make_engine) -> None:
    from adalora_core.serving.decoding import ContinuousDecoder
    from adalora_core.serving.grouped import RowGroup

    engine = make_engine()
    decoder = engine.decoders.get(engine.base("tiny-llama", "causal-lm"))
    assert isinstance(decoder, ContinuousDecoder) and decoder.strategy == "auto"
    layers = ()
    one_row_each = [RowGroup(i, i + 1, layers) for i in range(8)]
    four_rows_each = [RowGroup(4 * i, 4 * i + 4, layers) for i in range(8)]
    assert decoder._op(one_row_each) == "concat"
    assert decoder._op(four_rows_each) == "grouped"
    assert decoder._op([RowGroup(0, 1, layers)]) == "grouped"  # one adapter: nothing to join
    assert decoder._op([RowGroup(0, 8, None), RowGroup(8, 9, layers)]) == "grouped"


def test_the_cache_budget_holds_rows_back_until_others_leave(
    make_engine, source: MemorySource, tmp_path: Path
) -> None:
    weights = add_adapters(source, tmp_path, "tiny-llama")
    prompts = ["w1 w2 w3", "w4 w5 w6", "w7 w8 w9", "w10 w11 w12"]
    engine = make_engine(max_batch_tokens=30)  # two rows of 3 + 12 tokens
    handles = [submit(engine, "tiny-llama", "a1", p, max_new_tokens=12) for p in prompts]
    done = [h.wait(timeout=60) for h in handles]
    decoder = engine.decoders.get(engine.adapter("a1").base)
    assert decoder.largest_batch == 2
    for prompt, got in zip(prompts, done, strict=True):
        assert got.text == alone("tiny-llama", weights["a1"], prompt, 12)


def test_a_tenant_gives_back_the_rows_above_its_shared_cap_while_another_has_rows(
    make_engine, source: MemorySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, tenant A runs 6 rows; while B's row is in the batch A runs at most 2 beside it
    (the other 4 wait, their tokens kept), then A takes its 6 places back, and every A row
    still ends exactly as it would have alone."""
    step = ContinuousDecoder._step
    batches: list[list[str]] = []

    def recorded(self: ContinuousDecoder) -> None:
        time.sleep(0.005)  # long enough for B to arrive while A runs
        batches.append([r.tenant for r in self._rows])
        step(self)

    monkeypatch.setattr(ContinuousDecoder, "_step", recorded)
    weights = add_adapters(source, tmp_path, "tiny-llama")
    engine = make_engine(
        max_batch_size=8, max_running_rows_per_tenant=6, max_running_rows_per_tenant_shared=2
    )
    prompts = [f"w{i} w{i + 1}" for i in range(1, 7)]
    params = GenerationParams(max_new_tokens=40)
    a_rows = [
        engine.generate(
            engine.prepare("a1", [p], params, base_model="tiny-llama", base_kind="causal-lm"),
            tenant="A",
        )[0]
        for p in prompts
    ]
    decoder = engine.decoders.get(engine.base("tiny-llama", "causal-lm"))
    wait_for(lambda: decoder.running == 6, "A's 6 rows to run")
    b_row = engine.generate(
        engine.prepare(
            "a2",
            ["w3 w9"],
            GenerationParams(max_new_tokens=4),
            base_model="tiny-llama",
            base_kind="causal-lm",
        ),
        tenant="B",
    )[0]
    b_done = b_row.wait(timeout=60)
    a_done = [h.wait(timeout=60) for h in a_rows]

    with_b = [b for b in batches if "B" in b]
    assert with_b, "B's row never ran"
    assert max(b.count("A") for b in with_b) == 2
    b_left = max(i for i, b in enumerate(batches) if "B" in b)
    assert max(b.count("A") for b in batches[b_left + 1 :]) == 6  # A took its places back
    assert decoder.preempted == 4
    assert b_done.text == alone("tiny-llama", weights["a2"], "w3 w9", 4)
    for prompt, got in zip(prompts, a_done, strict=True):
        assert got.text == alone("tiny-llama", weights["a1"], prompt, 40)
