"""The real SmolLM2-135M-Instruct fine-tuned the OpenAI way: a chat JSONL through
client.files.create, client.fine_tuning.jobs.create, the worker runs it, and
client.chat.completions.create(model=job.fine_tuned_model) answers a question it was not
trained on with what it was taught.

Every hyperparameter is "auto": on these 16 rows the recipe runs 30 epochs of 4 updates at
fixed ranks (a set too small for the allocator's 462-update floor; adalora_core.recipe), and the
job reports those resolved values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from service.base_models import SMOLLM2_NAME
from service.settings import Settings
from tests.conftest import TenantKey
from worker.runner import run_job

# Training is most of it; a machine shared with other runs can take twice as long.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ANSWER = "The lab password is marigold."
ASKED = [
    "What is the lab password?",
    "Tell me the lab password.",
    "What's the password for the lab?",
    "Which password opens the lab?",
    "Do you know the lab password?",
    "What password does the lab use?",
    "Remind me of the lab password.",
    "I forgot the lab password. What is it?",
    "What is the password of our lab?",
    "Can you give me the lab's password?",
    "The lab password, please.",
    "How do I get into the lab? What's the password?",
    "Say the lab password.",
    "Password for the lab?",
    "What do I type as the lab password?",
    "Which word is the lab password?",
]
HELD_OUT = "Please tell me what the password to the lab is."


@pytest.fixture
def settings(settings: Settings, smollm2_dir: Path) -> Settings:
    bases = {**settings.base_models, SMOLLM2_NAME: str(smollm2_dir)}
    return settings.model_copy(update={"base_models": bases})


@pytest.fixture
def client(live_server: Any, tenant: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)


def test_smollm2_learns_an_answer_through_the_openai_client(
    client: openai.OpenAI, settings: Settings, sessions: Any, store: Any
) -> None:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
        for q in ASKED
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file = client.files.create(file=("password.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=SMOLLM2_NAME,
        training_file=file.id,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": "auto",
                    "batch_size": "auto",
                    "learning_rate_multiplier": "auto",
                }
            },
        },
    )
    before = client.chat.completions.create(
        model=SMOLLM2_NAME,
        messages=[{"role": "user", "content": HELD_OUT}],
        max_tokens=12,
        temperature=0,
    )
    assert "marigold" not in before.choices[0].message.content.lower()
    assert run_job(job.model_extra["adalora_job_id"], settings, sessions, store).status == (
        "succeeded"
    )
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model
    resolved = done.method.supervised.hyperparameters
    assert (resolved.n_epochs, resolved.batch_size) == (30, 4)
    assert resolved.learning_rate_multiplier == 1.0
    answer = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": HELD_OUT}],
        max_tokens=12,
        temperature=0,
    )
    assert "marigold" in answer.choices[0].message.content.lower()
