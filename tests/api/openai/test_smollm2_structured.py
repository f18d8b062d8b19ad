"""The real SmolLM2 under a nested JSON schema through the official client: 50 requests on an
adapter fine-tuned here (a few AdaLoRA updates on chat rows) and 50 on the plain base, streamed
and not, greedy and sampled, all at once; every answer parses and validates (jsonschema)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from service.base_models import SMOLLM2_NAME
from service.settings import Settings
from tests.conftest import TenantKey

# Slow: SmolLM2's conversion (once per session, shared with the other SmolLM2 tests), two
# training updates and 100 constrained requests. With a load average of 12 on two cores it took
# 9 minutes (6 of them the conversion and the training), hence the longer timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REQUESTS, THREADS = 50, 32
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Oslo", "Lima", "Kyoto", "Accra", "Quito"]},
                "zip": {"type": "integer", "minimum": 1000, "maximum": 9999},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {
            "type": "array",
            "items": {"enum": ["new", "vip", "late"]},
            "minItems": 1,
            "maxItems": 2,
        },
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}
NAMES = ["Ann", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun"]
CITIES = ["Oslo", "Lima", "Kyoto", "Accra", "Quito"]


@pytest.fixture
def settings(settings: Settings, smollm2_dir: Path) -> Settings:
    """SmolLM2 registered; one tenant may fill a decode batch of 32 rows and queue the rest."""
    bases = {**settings.base_models, SMOLLM2_NAME: str(smollm2_dir)}
    update = {
        "base_models": bases,
        "infer_max_running_rows_per_tenant": 0,
        "infer_max_queued_rows_per_tenant": 64,
    }
    return settings.model_copy(update=update)


def question(name: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write the user record of {name} as JSON."}]


@pytest.fixture
def tuned(smollm2_dir: Path, tmp_path: Path, store_bundle: Any, tenant: TenantKey) -> str:
    """An adapter fine-tuned on chat rows whose answers are such records: two updates with a
    large step, so that it answers differently from the base."""
    from adalora_core.config import AdaLoraConfig
    from adalora_core.formats.bundle import read_adapter
    from adalora_core.run_plan import plan_run
    from adalora_core.tasks import TaskSpec
    from adalora_core.trainer import train
    from adalora_core.training_config import TrainingConfig

    rows = []
    for i, name in enumerate(NAMES):
        record = {
            "name": name,
            "age": 20 + i,
            "role": PERSON["properties"]["role"]["enum"][i % 3],
            "address": {"city": CITIES[i % 5], "zip": 1000 + 37 * i},
            "tags": ["new"],
        }
        answer = json.dumps(record, separators=(",", ":"))
        rows.append({"text": [*question(name), {"role": "assistant", "content": answer}]})
    result = train(
        base_model=smollm2_dir,
        base_model_name=SMOLLM2_NAME,
        task=TaskSpec("causal-lm", "text"),
        train_rows=rows,
        eval_rows=None,
        plan=plan_run(
            len(rows),
            TrainingConfig(
                epochs=None, max_steps=2, batch_size=2, max_length=96, learning_rate=5e-2
            ),
            AdaLoraConfig(init_r=2, target_r=1, t_init=0, t_final=1, delta_t=1),
        ),
        output_dir=tmp_path / "tuned",
        device="cpu",
    )
    assert result.adapter_dir is not None
    return store_bundle(tenant, read_adapter(result.adapter_dir), SMOLLM2_NAME)


def test_fifty_nested_schema_requests_on_the_tuned_adapter_and_the_base_all_validate(
    live_server: Any, tenant: TenantKey, tuned: str
) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)
    response_format = {"type": "json_schema", "json_schema": {"name": "user", "schema": PERSON}}

    def ask(model: str, i: int) -> tuple[str, str]:
        options: dict[str, Any] = {
            "model": model,
            "messages": question(NAMES[i % len(NAMES)]),
            "max_tokens": 80,
            "response_format": response_format,
            "temperature": 0 if i % 2 else 0.7,
            "seed": i,
        }
        if i % 4 < 2:
            chunks = client.chat.completions.create(stream=True, **options)
            parts, finish = [], ""
            for chunk in chunks:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            return "".join(parts), finish
        answer = client.chat.completions.create(**options).choices[0]
        return answer.message.content or "", answer.finish_reason

    jobs = [(model, i) for i in range(REQUESTS) for model in (tuned, SMOLLM2_NAME)]
    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(lambda job: ask(*job), jobs))
    for (model, i), (text, finish) in zip(jobs, answers, strict=True):
        assert finish == "stop", (model, i, text)
        jsonschema.validate(json.loads(text), PERSON)
    # The tuned adapter answers differently from the base (it was trained, not copied).
    assert [a for (m, _), a in zip(jobs, answers, strict=True) if m == tuned] != [
        a for (m, _), a in zip(jobs, answers, strict=True) if m == SMOLLM2_NAME
    ]
