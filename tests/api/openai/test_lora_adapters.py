"""vLLM's runtime adapter calls: /v1/load_lora_adapter imports a PEFT directory from under
ADALORA_ADAPTER_IMPORT_DIR by name, served at once through the `openai` client as PEFT generates;
/v1/unload_lora_adapter deletes it, refusing while a generation holds it. Admin keys only, off
unless the root is set, never out of the root."""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import peft
import pytest
import torch

from service.settings import Settings
from tests.api.openai.conftest import LLAMA, chat_ids
from tests.conftest import TenantKey
from tests.peft_adapters import perturb
from tests.serving.tiny_serving import make_model, make_tokenizer


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    root.mkdir()
    return root


@pytest.fixture
def settings(settings: Settings, import_root: Path) -> Settings:
    return settings.model_copy(update={"adapter_import_dir": import_root})


def save_llama_lora(directory: Path) -> Any:
    """PEFT's LoRA on the tiny Llama base; the PEFT model, to generate with."""
    config = peft.LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]
    )
    model = peft.get_peft_model(copy.deepcopy(make_model("llama")), config)
    perturb(model, seed=3)
    model.save_pretrained(directory)
    return model.eval()


UNLOAD = "/v1/unload_lora_adapter"


def listed(live_server: Any, tenant: TenantKey) -> list[dict[str, Any]]:
    response = httpx.get(f"{live_server.url}/adapters", headers=tenant.headers, timeout=30)
    return list(response.json()["items"])


def post(live_server: Any, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{live_server.url}{path}",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=60,
    )


def test_load_serve_and_unload_by_name(
    live_server: Any, tenant: TenantKey, import_root: Path, app: Any
) -> None:
    model = save_llama_lora(import_root / "team" / "llama-lora")
    body = {"lora_name": "llama-lora", "lora_path": "team/llama-lora", "base_model": LLAMA}
    loaded = post(live_server, tenant.secret, "/v1/load_lora_adapter", body)
    assert loaded.status_code == 200, loaded.text
    assert "llama-lora" in loaded.text

    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)
    messages = [{"role": "user", "content": "w3 w7 w9"}]
    ids = torch.tensor([chat_ids(messages)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    want = make_tokenizer(with_cls=False).decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    answer = client.chat.completions.create(
        model="llama-lora", messages=messages, max_tokens=6, temperature=0
    )
    assert answer.choices[0].message.content == want
    again = post(live_server, tenant.secret, "/v1/load_lora_adapter", body)
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"

    # While a generation of it waits (the decoder is held before its next step), unload refuses.
    engine = app.state.serving.engine
    adapter_id = next(a["id"] for a in listed(live_server, tenant) if a["name"] == "llama-lora")
    answers: list[str] = []

    def ask() -> None:
        reply = client.chat.completions.create(
            model="llama-lora", messages=messages, max_tokens=6, temperature=0
        )
        answers.append(reply.choices[0].message.content or "")

    with engine.bases.get(LLAMA, "causal-lm").lock:
        asking = threading.Thread(target=ask)
        asking.start()
        deadline = time.monotonic() + 120  # a guard against hanging, not a speed check
        while not engine.generations_using(adapter_id):
            assert asking.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        refused = post(live_server, tenant.secret, UNLOAD, {"lora_name": "llama-lora"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "adapter_in_use"
    asking.join(60)
    assert answers == [want]

    unloaded = post(live_server, tenant.secret, UNLOAD, {"lora_name": "llama-lora"})
    assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="llama-lora", messages=messages, max_tokens=2)
    gone = post(live_server, tenant.secret, UNLOAD, {"lora_name": "llama-lora"})
    assert gone.status_code == 404


def test_paths_out_of_the_root_links_and_other_keys_are_refused(
    live_server: Any, tenant: TenantKey, import_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    save_llama_lora(outside)
    os.symlink(outside, import_root / "linked")
    for path in ("../outside", str(outside), "linked", "missing"):
        body = {"lora_name": "x", "lora_path": path, "base_model": LLAMA}
        response = post(live_server, tenant.secret, "/v1/load_lora_adapter", body)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["param"] == "lora_path", path
    trainer = post(live_server, tenant.secret, "/keys", {"scope": "train"}).json()["key"]
    body = {"lora_name": "x", "lora_path": "linked", "base_model": LLAMA}
    assert post(live_server, trainer, "/v1/load_lora_adapter", body).status_code == 403
    assert post(live_server, trainer, UNLOAD, {"lora_name": "x"}).status_code == 403
    assert listed(live_server, tenant) == []


def test_off_unless_the_import_root_is_set(
    live_server: Any, tenant: TenantKey, settings: Settings
) -> None:
    settings.adapter_import_dir = None
    body = {"lora_name": "x", "lora_path": "a", "base_model": LLAMA}
    response = post(live_server, tenant.secret, "/v1/load_lora_adapter", body)
    assert response.status_code == 404 and "ADALORA_ADAPTER_IMPORT_DIR" in response.text
    response = post(live_server, tenant.secret, UNLOAD, {"lora_name": "x"})
    assert response.status_code == 404
