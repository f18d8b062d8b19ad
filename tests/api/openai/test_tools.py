"""Tool calls through the official `openai` client on a live server: definitions rendered by the
base's own chat template, forced calls decoded under their arguments' schema, streamed as
OpenAI's tool-call deltas, and a round trip (call → tool result → answer) on an adapter.

The base is the tiny random Llama over SmolLM2's byte-level vocabulary, once with a
Hermes-style template that renders tools and once with SmolLM2's own, which has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from transformers import AutoModelForCausalLM

from application.tool_calls import ToolPlan
from service.settings import Settings
from tests.conftest import TenantKey
from tests.serving.test_constraints import WEATHER_ARGUMENTS
from tests.serving.tiny_serving import byte_level_llama, llama_adapter_for

TOOLS_BASE, PLAIN_BASE = "byte-llama-tools", "byte-llama"
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions: {{ tools | tojson }}"
    "<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    '{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}'
    "</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TIME_ARGUMENTS = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "JST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER_ARGUMENTS,
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_ARGUMENTS}},
]
SCHEMAS = {"get_weather": WEATHER_ARGUMENTS, "get_time": TIME_ARGUMENTS}
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tool-bases")
    dirs = {}
    for name, template in ((TOOLS_BASE, TOOL_TEMPLATE), (PLAIN_BASE, None)):
        byte_level_llama(smollm2_tokenizer).save_pretrained(root / name)
        if template is not None:
            smollm2_tokenizer.chat_template, saved = template, smollm2_tokenizer.chat_template
            smollm2_tokenizer.save_pretrained(root / name)
            smollm2_tokenizer.chat_template = saved
        else:
            smollm2_tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture
def settings(settings: Settings, base_dirs: dict[str, Path]) -> Settings:
    bases = {**settings.base_models, **{n: str(p) for n, p in base_dirs.items()}}
    return settings.model_copy(update={"base_models": bases})


@pytest.fixture
def adapter_id(store_bundle: Any, tenant: TenantKey, base_dirs: dict[str, Path]) -> str:
    model = AutoModelForCausalLM.from_pretrained(base_dirs[TOOLS_BASE])
    return store_bundle(tenant, llama_adapter_for(model, TOOLS_BASE, seed=11), TOOLS_BASE)


@pytest.fixture
def client(live_server: Any, tenant: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)


def test_a_round_trip_call_result_answer_on_an_adapter(
    client: openai.OpenAI, adapter_id: str, smollm2_tokenizer: Any
) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = client.chat.completions.create(
        model=adapter_id, messages=QUESTION, tools=TOOLS, tool_choice=named, temperature=0
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_ARGUMENTS)
    # The template rendered the definitions: the prompt is the one transformers renders.
    smollm2_tokenizer.chat_template, saved = TOOL_TEMPLATE, smollm2_tokenizer.chat_template
    try:
        rendered = smollm2_tokenizer.apply_chat_template(
            QUESTION, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    finally:
        smollm2_tokenizer.chat_template = saved
    assert first.usage.prompt_tokens == len(rendered)

    history = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 4}'},
    ]
    final = client.chat.completions.create(
        model=adapter_id, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result rendered


def test_required_calls_one_of_the_tools_and_streams_as_openai_does(
    client: openai.OpenAI, adapter_id: str
) -> None:
    for seed in range(3):
        answer = client.chat.completions.create(
            model=adapter_id,
            messages=QUESTION,
            tools=TOOLS,
            tool_choice="required",
            temperature=1.0,
            seed=seed,
        ).choices[0]
        (call,) = answer.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        assert answer.finish_reason == "tool_calls"

    for tool_choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        whole = client.chat.completions.create(
            model=adapter_id, messages=QUESTION, tools=TOOLS, tool_choice=tool_choice, temperature=0
        ).choices[0]
        chunks = list(
            client.chat.completions.create(
                model=adapter_id,
                messages=QUESTION,
                tools=TOOLS,
                tool_choice=tool_choice,
                temperature=0,
                stream=True,
            )
        )
        pieces = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert pieces[0].id and pieces[0].function.name == whole.message.tool_calls[0].function.name
        assert "".join(p.function.arguments or "" for p in pieces) == (
            whole.message.tool_calls[0].function.arguments
        )
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tools_on_a_template_without_tool_support_and_bad_choices_are_400s(
    client: openai.OpenAI,
) -> None:
    cases = [
        ({"model": PLAIN_BASE, "tools": TOOLS}, "tools"),
        (
            {
                "model": PLAIN_BASE,
                "messages": [*QUESTION, {"role": "tool", "tool_call_id": "c1", "content": "4"}],
            },
            "messages.1",
        ),
        ({"model": TOOLS_BASE, "tool_choice": "required"}, "tool_choice"),
        (
            {
                "model": TOOLS_BASE,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice.function.name",
        ),
        (
            {
                "model": TOOLS_BASE,
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {"model": TOOLS_BASE, "messages": [{"role": "tool", "content": "4"}]},
            "messages.0.tool_call_id",
        ),
    ]
    for options, param in cases:
        options = {"messages": QUESTION, **options}
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**options)
        assert caught.value.body["param"] == param, options


def test_auto_reads_a_call_only_when_the_answer_is_one() -> None:
    plan = ToolPlan(tuple(TOOLS), "auto")
    wrapped = '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
    (call,) = plan.calls(wrapped)
    assert (call.name, json.loads(call.arguments)) == ("get_time", {"zone": "UTC"})
    assert [c.name for c in plan.calls('[{"name":"get_time","arguments":{}},'
                                       '{"name":"get_weather","arguments":{}}]')] == [
        "get_time",
        "get_weather",
    ]  # fmt: skip
    assert plan.calls('{"name": "unknown", "arguments": {}}') == []
    assert plan.calls("It is sunny.") == []
    assert plan.may_call("  <tool") and plan.may_call("{") and not plan.may_call("It is")
    assert ToolPlan(tuple(TOOLS), "none").calls(wrapped) == []


def test_a_training_row_with_a_tool_call_learns_the_call_as_the_template_renders_it(
    smollm2_tokenizer: Any,
) -> None:
    """Chat rows train on tool calls too: the assistant turn that calls a tool is supervised,
    the tool's result (like the user's turn) is not."""
    from adalora_core.chat_template import template_message
    from adalora_core.encoding import encode_rows
    from adalora_core.tasks import TaskSpec

    smollm2_tokenizer.chat_template, saved = TOOL_TEMPLATE, smollm2_tokenizer.chat_template
    try:
        call = {"name": "get_time", "arguments": '{"zone":"UTC"}'}
        chat = [
            {"role": "user", "content": "Time?"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
            {"role": "assistant", "content": "Noon."},
        ]
        task = TaskSpec("causal-lm", "messages")
        [row] = encode_rows(task, [{"messages": chat}], smollm2_tokenizer, 512)
        # A row's tool definitions (OpenAI's fine-tuning format) are rendered with it, untaught.
        [with_tools] = encode_rows(
            task, [{"messages": chat, "tools": TOOLS}], smollm2_tokenizer, 512
        )
        as_template_reads = [template_message(m) for m in chat]  # arguments as an object
        rendered = smollm2_tokenizer.apply_chat_template(
            as_template_reads, tools=TOOLS, tokenize=True, return_dict=True
        )["input_ids"]
    finally:
        smollm2_tokenizer.chat_template = saved
    assert with_tools["input_ids"] == rendered
    assert len(with_tools["input_ids"]) > len(row["input_ids"])
    taught = [t for t, label in zip(rendered, with_tools["labels"], strict=True) if label != -100]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert smollm2_tokenizer.decode(learned) == (
        '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call><|im_end|>\n'
        "Noon.<|im_end|>\n"
    )
    assert taught == learned
