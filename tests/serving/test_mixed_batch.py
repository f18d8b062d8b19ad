"""A batch mixing adapters (different rank patterns, a rank-0 module) and base rows is exact."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from adalora_core.formats.bundle import AdapterWeights
from tests.serving.tiny_serving import (
    WORDS,
    MemorySource,
    bert_layer_paths,
    make_adapter,
    make_model,
    make_tokenizer,
    merged_reference,
)


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def three_adapters() -> dict[str, AdapterWeights]:
    l0, l1 = bert_layer_paths(0), bert_layer_paths(1)
    return {
        "a-qv": make_adapter(
            "tiny-bert",
            "classification",
            {l0["q"]: 4, l0["v"]: 2, l1["q"]: 1, l1["v"]: 3},
            seed=1,
            labels=["neg", "pos"],
        ),
        "b-all": make_adapter(
            "tiny-bert",
            "classification",
            {path: (i % 4) + 1 for i, path in enumerate([*l0.values(), *l1.values()])},
            seed=2,
            labels=["x", "y", "z"],
            pooler=True,
        ),
        "c-rank0": make_adapter(
            "tiny-bert",
            "regression",
            {l0["q"]: 0, l0["k"]: 3, l1["up"]: 2, l1["down"]: 0},
            seed=3,
        ),
    }


def reference_row(weights: AdapterWeights | None, text: str | list[str]) -> dict[str, object]:
    tokenizer = make_tokenizer(with_cls=True)
    enc = tokenizer(*([text] if isinstance(text, str) else text), return_tensors="pt")
    with torch.no_grad():
        if weights is None:
            model = make_model("bert")
            hidden = model.bert(**enc).last_hidden_state
            return {"embedding": hidden.mean(1)[0].tolist()}
        out = merged_reference(weights)(**enc).logits[0]
    if weights.meta.task["kind"] == "regression":
        return {"value": float(out[0])}
    return {"scores": dict(zip(weights.meta.labels, torch.softmax(out, -1).tolist(), strict=True))}


@pytest.mark.parametrize(
    ("strategy", "placement"),
    [("grouped", "process"), ("concat", "process"), ("grouped", "thread"), ("concat", "thread")],
)
def test_mixed_batch_matches_each_adapter_merged_alone(
    make_engine, source: MemorySource, tmp_path: Path, strategy: str, placement: str
) -> None:
    adapters = three_adapters()
    for adapter_id, weights in adapters.items():
        source.add(adapter_id, weights, tmp_path)
    engine = make_engine(strategy=strategy, encoder_forward=placement)
    rng = random.Random(0)
    plan = [("b-all", 2), (None, 2), ("a-qv", 3), ("c-rank0", 2), ("a-qv", 1)]
    requests = []
    for adapter_id, rows in plan:
        inputs: list[str | list[str]] = [sentence(rng, rng.randint(2, 12)) for _ in range(rows)]
        if adapter_id == "b-all":
            inputs[1] = [sentence(rng, 3), sentence(rng, 5)]  # a text pair
        requests.append((adapter_id, inputs))
    prepared = [
        engine.prepare(adapter_id, inputs, base_model="tiny-bert")
        for adapter_id, inputs in requests
    ]
    answers = engine.run(prepared)

    for (adapter_id, inputs), rows in zip(requests, answers, strict=True):
        weights = adapters[adapter_id] if adapter_id else None
        for text, got in zip(inputs, rows, strict=True):
            want = reference_row(weights, text)
            for key, value in want.items():
                if key == "scores":
                    assert got["scores"].keys() == value.keys()
                    assert got["label"] == max(value, key=value.__getitem__)
                    got_v = torch.tensor(list(got["scores"].values()))
                    want_v = torch.tensor(list(value.values()))
                else:
                    got_v, want_v = torch.tensor(got[key]), torch.tensor(value)
                torch.testing.assert_close(got_v, want_v, atol=1e-5, rtol=1e-5)


def test_adapter_rows_differ_from_base_rows(make_engine, source, tmp_path) -> None:
    """Guards the test above: the adapters really change the outputs."""
    adapters = three_adapters()
    source.add("c-rank0", adapters["c-rank0"], tmp_path)
    engine = make_engine()
    text = "w1 w2 w3 w4"
    got = engine.infer("c-rank0", [text])[0]["value"]
    plain = adapters["c-rank0"]
    plain_head_only = AdapterWeights(plain.meta, plain.peft_config, {}, plain.head)
    assert abs(got - reference_row(plain_head_only, text)["value"]) > 1e-3
