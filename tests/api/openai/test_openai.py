"""The OpenAI-compatible routes, driven by the official `openai` client against a live server."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.openai.conftest import LLAMA, chat_ids, greedy
from tests.conftest import TEST_BASE_MODEL
from tests.serving.tiny_serving import make_tokenizer


def test_models_lists_the_tenants_adapters_and_the_bases(client, llama_adapter, settings) -> None:
    adapter_id, _ = llama_adapter
    listed = {m.id: m for m in client.models.list().data}
    assert set(settings.base_models) <= set(listed)
    assert listed[adapter_id].owned_by != listed[LLAMA].owned_by
    assert listed[adapter_id].model_dump()["base_model"] == LLAMA


def test_models_never_lists_another_tenants_adapters(
    client, llama_adapter, live_server, other_tenant, store_bundle
) -> None:
    """Each tenant's `client.models.list()` shows its own adapters and the bases, never the
    other tenant's adapters (nor that tenant's id as an owner)."""
    mine, weights = llama_adapter
    theirs = store_bundle(other_tenant, weights, LLAMA)
    stranger = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=other_tenant.secret, max_retries=0
    )
    seen_by_me = {m.id: m.owned_by for m in client.models.list().data}
    seen_by_them = {m.id: m.owned_by for m in stranger.models.list().data}
    assert mine in seen_by_me and theirs not in seen_by_me
    assert theirs in seen_by_them and mine not in seen_by_them
    assert other_tenant.id not in seen_by_me.values()
    assert set(seen_by_me) - {mine} == set(seen_by_them) - {theirs}  # the shared bases


def test_completion_is_the_adapters_greedy_decode(client, llama_adapter) -> None:
    adapter_id, weights = llama_adapter
    expected, generated = greedy(weights, make_tokenizer(False)("w1 w2 w3")["input_ids"], 8)
    answer = client.completions.create(
        model=adapter_id, prompt="w1 w2 w3", max_tokens=8, temperature=0
    )
    assert answer.object == "text_completion"
    assert answer.choices[0].text == expected
    assert answer.usage.prompt_tokens == 3
    assert answer.usage.completion_tokens == generated
    assert answer.usage.total_tokens == 3 + generated
    base = client.completions.create(model=LLAMA, prompt="w1 w2 w3", max_tokens=8, temperature=0)
    assert base.choices[0].text != expected  # the adapter changes the answer


def test_the_decoder_shows_in_the_metrics(client, llama_adapter, live_server) -> None:
    adapter_id, _ = llama_adapter
    answer = client.completions.create(model=adapter_id, prompt="w1", max_tokens=5, temperature=0)
    metrics = httpx.get(f"{live_server.url}/metrics", timeout=30).text
    line = next(m for m in metrics.splitlines() if m.startswith("adalora_generated_tokens_total"))
    assert f'base="{LLAMA}"' in line
    assert float(line.rsplit(" ", 1)[1]) >= answer.usage.completion_tokens
    assert f'adalora_decode_running_rows{{base="{LLAMA}"}} 0.0' in metrics


def test_streamed_completion_adds_up_and_ends_with_done(
    client, llama_adapter, live_server, tenant
) -> None:
    adapter_id, weights = llama_adapter
    whole = client.completions.create(
        model=adapter_id, prompt="w4 w5", max_tokens=10, temperature=0
    )
    chunks = list(
        client.completions.create(
            model=adapter_id,
            prompt="w4 w5",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    raw = httpx.post(
        f"{live_server.url}/v1/completions",
        headers=tenant.headers,
        json={"model": adapter_id, "prompt": "w4 w5", "max_tokens": 3, "stream": True},
        timeout=60,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_chat_completion_renders_the_template_and_streams(client, llama_adapter) -> None:
    adapter_id, weights = llama_adapter
    messages = [
        {"role": "system", "content": "w9"},
        {"role": "user", "content": "w10 w11"},
    ]
    expected, generated = greedy(weights, chat_ids(messages), 7)
    answer = client.chat.completions.create(
        model=adapter_id, messages=messages, max_tokens=7, temperature=0
    )
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected
    assert answer.usage.completion_tokens == generated
    chunks = list(
        client.chat.completions.create(
            model=adapter_id, messages=messages, max_tokens=7, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_token_id_prompts_equal_their_text(client, llama_adapter) -> None:
    adapter_id, _ = llama_adapter
    ids = make_tokenizer(False)("w1 w2 w3")["input_ids"]
    as_text = client.completions.create(model=adapter_id, prompt="w1 w2 w3", max_tokens=6,
                                        temperature=0)  # fmt: skip
    as_ids = client.completions.create(model=adapter_id, prompt=ids, max_tokens=6, temperature=0)
    several = client.completions.create(
        model=adapter_id, prompt=[ids, ids[:1]], max_tokens=6, temperature=0
    )
    assert as_ids.choices[0].text == as_text.choices[0].text == several.choices[0].text
    assert len(several.choices) == 2
    with pytest.raises(openai.BadRequestError) as outside:
        client.completions.create(model=adapter_id, prompt=[[1, 2], [3, 10**6]], max_tokens=2)
    assert outside.value.body["param"] == "prompt.1.1"


def test_n_choices_with_a_seed_repeat(client, llama_adapter) -> None:
    adapter_id, _ = llama_adapter
    ask = {"model": adapter_id, "prompt": "w1", "max_tokens": 8, "temperature": 1.5, "seed": 3}
    first = client.completions.create(n=3, **ask)
    again = client.completions.create(n=3, **ask)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # each choice draws its own stream
    two_prompts = client.completions.create(
        model=adapter_id, prompt=["w1", "w2 w3"], n=2, max_tokens=4, temperature=0
    )
    assert [c.index for c in two_prompts.choices] == [0, 1, 2, 3]
    assert two_prompts.choices[0].text == two_prompts.choices[1].text  # greedy: equal copies
    assert two_prompts.usage.prompt_tokens == 3


def test_a_stop_sequence_ends_the_choice(client, llama_adapter) -> None:
    adapter_id, weights = llama_adapter
    full = client.completions.create(
        model=adapter_id, prompt="w6 w7", max_tokens=12, temperature=0
    ).choices[0]
    words = full.text.split()
    assert len(words) >= 3, "the test needs a longer answer"
    cut = client.completions.create(
        model=adapter_id, prompt="w6 w7", max_tokens=12, temperature=0, stop=[words[1]]
    ).choices[0]
    assert cut.text.strip() == words[0]
    assert cut.finish_reason == "stop"


def test_errors_have_openais_shape_and_name_the_parameter(
    client, llama_adapter, live_server, tenant, other_tenant, make_tenant
) -> None:
    adapter_id, _ = llama_adapter
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="ad_nope", prompt="w1")
    assert missing.value.code == "model_not_found"
    assert missing.value.body["param"] == "model"
    stranger = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=other_tenant.secret, max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        stranger.completions.create(model=adapter_id, prompt="w1")
    with pytest.raises(openai.BadRequestError) as hot:
        client.completions.create(model=adapter_id, prompt="w1", temperature=5)
    assert hot.value.body["param"] == "temperature"
    assert hot.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as penalty:
        client.completions.create(model=adapter_id, prompt="w1", presence_penalty=3)
    assert penalty.value.body["param"] == "presence_penalty"
    with pytest.raises(openai.BadRequestError) as encoder:
        client.completions.create(model=TEST_BASE_MODEL, prompt="w1")
    assert encoder.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=adapter_id, prompt="w1 " * 60, max_tokens=10)
    assert long_prompt.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": ""}])
    assert empty.value.body["param"] == "messages.0.content"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0
        ).models.list()


def test_adalora_chat_streams_the_answer(llama_adapter, live_server, tenant) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    adapter_id, weights = llama_adapter
    messages = [{"role": "user", "content": "w10 w11"}]
    expected, _ = greedy(weights, chat_ids(messages), 6)
    args = ["chat", adapter_id, "w10 w11", "--max-tokens", "6"]
    args += ["--url", live_server.url, "--key", tenant.secret]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"
    failed = CliRunner().invoke(app, ["chat", "ad_nope", "hi", "--url", live_server.url,
                                      "--key", tenant.secret])  # fmt: skip
    assert failed.exit_code == 1
    assert "model_not_found" in failed.output and "field model" in failed.output
