"""Structured outputs, log-probabilities, penalties, logit bias, echo and best_of through the
official `openai` client on a live server, streamed and not.

The base is a tiny random Llama over SmolLM2's byte-level vocabulary with SmolLM2's chat
template (JSON grammars need real byte-level tokens); the adapter is AdaLoRA-shaped and PEFT
loads the same bundle, so the reported log-probabilities are checked against PEFT's.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import openai
import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

from adalora_core.formats.bundle import write_bundle
from service.settings import Settings
from tests.conftest import TenantKey
from tests.serving.test_constraints import ORDER
from tests.serving.tiny_serving import byte_level_llama, llama_adapter_for

BASE = "byte-llama"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    path = tmp_path_factory.mktemp("bases") / BASE
    byte_level_llama(smollm2_tokenizer).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def settings(settings: Settings, base_dir: Path) -> Settings:
    bases = {**settings.base_models, BASE: str(base_dir)}
    return settings.model_copy(update={"base_models": bases})


@pytest.fixture
def adapter(store_bundle: Any, tenant: TenantKey, base_dir: Path) -> tuple[str, Any]:
    weights = llama_adapter_for(AutoModelForCausalLM.from_pretrained(base_dir), BASE, seed=7)
    return store_bundle(tenant, weights, BASE), weights


@pytest.fixture
def client(live_server: Any, tenant: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}


def test_json_schema_answers_validate_on_chat_and_completions_streamed_and_not(
    client: openai.OpenAI, adapter: tuple[str, Any], smollm2_tokenizer: Any
) -> None:
    adapter_id, _ = adapter
    messages = [{"role": "user", "content": "An order, please."}]
    for model in (adapter_id, BASE):
        whole = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_tokens=200,
            response_format=schema_format(ORDER),
        )
        text = whole.choices[0].message.content
        jsonschema.validate(json.loads(text), ORDER)
        assert whole.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_tokens=200,
            response_format=schema_format(ORDER),
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
        # json_object on completions: a random model fills strings without end, so the tokens
        # '":"' and '"}' are favoured; the grammar still decides where each may go.
        close = {str(smollm2_tokenizer.convert_tokens_to_ids(t)): 100 for t in ('":"', '"}')}
        completion = client.completions.create(
            model=model,
            prompt="An order:",
            max_tokens=50,
            temperature=0.8,
            seed=3,
            logit_bias=close,
            extra_body={"response_format": {"type": "json_object"}},
        )
        assert isinstance(json.loads(completion.choices[0].text), dict)
        assert completion.choices[0].finish_reason == "stop"


def test_a_schema_that_cannot_compile_is_a_400_naming_it(
    client: openai.OpenAI, adapter: tuple[str, Any]
) -> None:
    adapter_id, _ = adapter
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=adapter_id,
            messages=[{"role": "user", "content": "hi"}],
            response_format=schema_format(bad),
        )
    assert caught.value.body["param"] == "response_format.json_schema.schema"
    with pytest.raises(openai.BadRequestError) as missing:
        client.completions.create(
            model=adapter_id, prompt="hi", extra_body={"response_format": {"type": "json_schema"}}
        )
    assert missing.value.body["param"] == "response_format.json_schema"


def peft_logprobs(base_dir: Path, weights: Any, tmp_path: Path, ids: list[int]) -> torch.Tensor:
    """PEFT's log-softmax of the adapter's next-token logits after ``ids``."""
    bundle = write_bundle(weights, tmp_path / "peft-bundle")
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), bundle)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def test_logprobs_equal_peft_log_softmax_on_the_same_prefix(
    client: openai.OpenAI,
    adapter: tuple[str, Any],
    base_dir: Path,
    smollm2_tokenizer: Any,
    tmp_path: Path,
) -> None:
    adapter_id, weights = adapter
    prompt_ids = smollm2_tokenizer("The weather today")["input_ids"]
    completion = client.completions.create(
        model=adapter_id, prompt=prompt_ids, max_tokens=6, temperature=0, logprobs=3
    )
    generated = smollm2_tokenizer(completion.choices[0].text)["input_ids"]
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.token_logprobs) == completion.usage.completion_tokens == 6
    # One forward of prompt + answer gives every position's distribution.
    reference = peft_logprobs(base_dir, weights, tmp_path, prompt_ids + generated[:5])
    for step, value in enumerate(logprobs.token_logprobs):
        expected = reference[len(prompt_ids) - 1 + step]
        assert abs(value - float(expected.max())) < 1e-4  # greedy: the most likely token
        top_values = sorted(logprobs.top_logprobs[step].values(), reverse=True)
        assert torch.allclose(torch.tensor(top_values), expected.topk(3).values, atol=1e-4)
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert logprobs.text_offset[0] == 0
    # echo with logprobs lists the prompt's tokens first: the first has none, each other its
    # log-probability after the tokens before it (the same PEFT forward).
    echoed = client.completions.create(
        model=adapter_id, prompt=prompt_ids, max_tokens=6, temperature=0, logprobs=3, echo=True
    ).choices[0]
    listed = echoed.logprobs
    assert "".join(listed.tokens) == echoed.text
    assert echoed.text == smollm2_tokenizer.decode(prompt_ids) + completion.choices[0].text
    assert listed.token_logprobs[0] is None and listed.top_logprobs[0] is None
    assert listed.text_offset == [
        len("".join(listed.tokens[:i])) for i in range(len(listed.tokens))
    ]
    for position, token in enumerate(prompt_ids[1:] + generated[:6]):
        expected = reference[position] if position < len(reference) else None
        if expected is None:
            break
        assert abs(listed.token_logprobs[position + 1] - float(expected[token])) < 1e-4
    streamed = client.completions.create(
        model=adapter_id,
        prompt=prompt_ids,
        max_tokens=6,
        temperature=0,
        logprobs=3,
        echo=True,
        stream=True,
    )
    chunks = [c.choices[0] for c in streamed if c.choices]
    assert "".join(c.text for c in chunks) == echoed.text
    assert [t for c in chunks if c.logprobs for t in c.logprobs.tokens] == listed.tokens

    chat = client.chat.completions.create(
        model=adapter_id,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == t.logprob for t in content)
    assert bytes(b for t in content for b in t.bytes).decode() == chat.choices[0].message.content
    streamed = client.chat.completions.create(
        model=adapter_id,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    in_chunks = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, t.logprob) for t in in_chunks] == [(t.token, t.logprob) for t in content]


def test_penalties_and_logit_bias_change_the_answer_as_defined(
    client: openai.OpenAI, adapter: tuple[str, Any], smollm2_tokenizer: Any
) -> None:
    adapter_id, _ = adapter

    def tokens(**options: Any) -> list[str]:
        answer = client.completions.create(
            model=adapter_id,
            prompt="Once upon",
            max_tokens=16,
            temperature=0,
            logprobs=0,
            **options,
        )
        return answer.choices[0].logprobs.tokens

    free = tokens()
    for frequency, presence in ((1.5, 0.5), (-1.5, -0.5)):
        answer = (
            client.completions.create(
                model=adapter_id,
                prompt="Once upon",
                max_tokens=16,
                temperature=0,
                logprobs=20,
                frequency_penalty=frequency,
                presence_penalty=presence,
            )
            .choices[0]
            .logprobs
        )
        # Each greedy pick is the most likely token after OpenAI's definition: its logit
        # less frequency × its count so far, less presence once it was generated.
        seen: Counter[str] = Counter()
        steps = zip(answer.tokens, answer.token_logprobs, answer.top_logprobs, strict=True)
        for token, logprob, alternatives in steps:
            adjusted = {
                t: v - frequency * seen[t] - presence * (seen[t] > 0)
                for t, v in {**alternatives, token: logprob}.items()
            }
            assert token == max(adjusted, key=adjusted.__getitem__)
            seen[token] += 1
    # The negative penalties reward repeating: the answer repeats where the free one did not.
    assert max(Counter(answer.tokens).values()) > max(Counter(free).values())
    wanted = smollm2_tokenizer.convert_tokens_to_ids("Ġhello")
    assert tokens(logit_bias={str(wanted): 100})[:3] == [" hello"] * 3
    banned = smollm2_tokenizer.encode(free[0])[0]
    assert free[0] not in tokens(logit_bias={str(banned): -100})
    for bias, param in (({"abc": 1}, "logit_bias.abc"), ({"5": 101}, "logit_bias.5")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=adapter_id, prompt="x", logit_bias=bias)
        assert caught.value.body["param"] == param


def test_echo_best_of_and_what_is_refused(client: openai.OpenAI, adapter: tuple[str, Any]) -> None:
    adapter_id, _ = adapter
    plain = client.completions.create(
        model=adapter_id, prompt="Tell me", max_tokens=5, temperature=0
    )
    echoed = client.completions.create(
        model=adapter_id, prompt="Tell me", max_tokens=5, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Tell me" + plain.choices[0].text
    streamed = client.completions.create(
        model=adapter_id, prompt="Tell me", max_tokens=5, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text
    # best_of=4, n=2: of the four candidates (seeds 1..4, as n=4 returns them all), the two
    # with the highest log-probability per token.
    sampled = {"prompt": "Tell me", "max_tokens": 6, "temperature": 1.0, "seed": 1}
    every = client.completions.create(model=adapter_id, n=4, logprobs=0, **sampled).choices

    def per_token(choice: Any) -> float:
        values = choice.logprobs.token_logprobs
        return sum(values) / len(values)

    best = client.completions.create(model=adapter_id, n=2, best_of=4, **sampled)
    ranked = sorted(every, key=per_token, reverse=True)
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1]
    assert all(c.logprobs is None for c in best.choices)
    assert best.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in every)
    for options, param in (
        ({"suffix": "end"}, "suffix"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=adapter_id, prompt="x", **options)
        assert caught.value.body["param"] == param


def test_eight_mixed_streams_each_get_what_they_get_alone(
    client: openai.OpenAI,
    adapter: tuple[str, Any],
    store_bundle: Any,
    tenant: TenantKey,
    base_dir: Path,
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight concurrent streams in one decode batch: two adapters and the base, some under a
    JSON schema, some reporting log-probabilities, some penalized or biased, some free; each
    stream's text and log-probabilities equal the same request made alone."""
    from adalora_core.serving.decoding import ContinuousDecoder
    from tests.serving.test_constraints import WEATHER_ARGUMENTS

    first, _ = adapter
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    second = store_bundle(tenant, llama_adapter_for(model, BASE, seed=8), BASE)
    chat = [{"role": "user", "content": "Weather?"}]
    weather = schema_format(WEATHER_ARGUMENTS)
    requests: list[dict[str, Any]] = [
        {"model": first, "response_format": schema_format(ORDER)},
        {"model": BASE, "response_format": weather, "logprobs": True, "top_logprobs": 2},
        {"model": second, "logprobs": True, "top_logprobs": 3, "max_tokens": 12},
        {"model": first, "max_tokens": 12},
        {"model": BASE, "max_tokens": 12, "frequency_penalty": 1.0, "presence_penalty": 0.5},
        {"model": second, "response_format": weather, "temperature": 0.9, "seed": 4},
        {"model": first, "max_tokens": 12, "logit_bias": {"28": 5.0}, "logprobs": True},
        {"model": second, "max_tokens": 12, "temperature": 1.0, "seed": 9},
    ]

    def ask(options: dict[str, Any]) -> tuple[str, list[tuple[str, float]]]:
        options = {"messages": chat, "temperature": 0, "max_tokens": 200, **options}
        chunks = client.chat.completions.create(stream=True, **options)
        text, logprobs = "", []
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].logprobs:
                    logprobs += [(t.token, t.logprob) for t in chunk.choices[0].logprobs.content]
        return text, logprobs

    step = ContinuousDecoder._step

    def slowed(self: ContinuousDecoder) -> None:
        time.sleep(0.01)  # so that all eight join before the first ones finish
        step(self)

    monkeypatch.setattr(ContinuousDecoder, "_step", slowed)
    start = threading.Barrier(len(requests))
    together: list[Any] = [None] * len(requests)

    def run(index: int) -> None:
        start.wait()
        together[index] = ask(requests[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    decoder = app.state.serving.engine.decoders.all()[0]
    assert decoder.largest_batch == len(requests)
    alone = [ask(options) for options in requests]
    for index, ((text, logprobs), (text_alone, logprobs_alone)) in enumerate(
        zip(together, alone, strict=True)
    ):
        assert text == text_alone, index
        assert [t for t, _ in logprobs] == [t for t, _ in logprobs_alone], index
        pairs = zip(logprobs, logprobs_alone, strict=True)
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in pairs), index
    for index in (0, 1, 5):
        schema = ORDER if index == 0 else WEATHER_ARGUMENTS
        jsonschema.validate(json.loads(together[index][0]), schema)
    assert together[1][1] and together[2][1] and together[6][1]


def test_chat_fields_this_service_does_not_serve_are_refused_with_their_reason(
    client: openai.OpenAI, adapter: tuple[str, Any]
) -> None:
    adapter_id, _ = adapter
    chat = {"model": adapter_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for options, reason in (
        ({"store": True}, "not stored"),
        ({"reasoning_effort": "low"}, "no reasoning model"),
        ({"modalities": ["text", "audio"]}, "text only"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "use tools"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**chat, **options)
        (name,) = options
        assert caught.value.body["param"] == name and reason in caught.value.body["message"]
    # Their neutral values ask for nothing and pass.
    assert client.chat.completions.create(**chat, store=False, modalities=["text"]).choices
