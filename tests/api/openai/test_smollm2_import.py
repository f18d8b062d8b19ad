"""A LoRA adapter PEFT made on the real SmolLM2-135M-Instruct, imported over HTTP by name and
asked through /v1/chat/completions with the official `openai` client: greedy answers equal
PEFT's own generation token for token."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import openai
import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adalora_core.chat_template import chat_prompt_ids
from service.base_models import SMOLLM2_NAME
from service.settings import Settings
from tests.peft_adapters import zip_dir

pytestmark = pytest.mark.slow

NEW_TOKENS = 12
QUESTIONS = ["What is a river?", "Name a colour."]


@pytest.fixture
def settings(settings: Settings, smollm2_dir: Path) -> Settings:
    bases = {**settings.base_models, SMOLLM2_NAME: str(smollm2_dir)}
    return settings.model_copy(update={"base_models": bases})


def test_imported_smollm2_lora_answers_as_peft_through_the_openai_client(
    live_server: Any, tenant: Any, smollm2_dir: Path, tmp_path: Path
) -> None:
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    config = peft.LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]
    )
    model = peft.get_peft_model(copy.deepcopy(base), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter something to say
                param.copy_(torch.randn(param.shape, generator=generator) * 0.08)
    model.save_pretrained(tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

    response = httpx.post(
        f"{live_server.url}/adapters/import",
        headers={"Authorization": f"Bearer {tenant.secret}"},
        files={"file": ("smollm2-lora.zip", zip_dir(tmp_path / "peft"), "application/zip")},
        data={"base_model": SMOLLM2_NAME, "name": "smol-lora"},
        timeout=120,
    )
    assert response.status_code == 201, response.text
    assert response.json()["task"] == "causal-lm"

    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)
    changed = False
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        ids = torch.tensor([chat_prompt_ids(tokenizer, messages, "messages")])
        with torch.no_grad():
            out = theirs.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
            with theirs.disable_adapter():
                plain = theirs.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                )
        want = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        changed = changed or out[0].tolist() != plain[0].tolist()
        answer = client.chat.completions.create(
            model="smol-lora", messages=messages, max_tokens=NEW_TOKENS, temperature=0
        )
        assert answer.choices[0].message.content == want
    assert changed  # the adapter changes what SmolLM2 says
