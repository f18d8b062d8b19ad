"""OpenAI's files and fine-tuning APIs, driven by the official ``openai`` client against a live
server (the worker runs the job in-process): files, jobs with paging, events, checkpoints, the
fine-tuned names on /v1/chat/completions, /v1/completions and /v1/models, and the errors the
client raises."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
import openai
import pytest

from tests.api.openai.conftest import LLAMA
from tests.conftest import TenantKey
from worker.runner import run_job

CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"w{i} w{i + 1}"},
            {"role": "assistant", "content": f"w{i + 2} w{i + 3}"},
        ]
    }
    for i in range(5, 37)
]
QUESTION = [{"role": "user", "content": "w9 w10"}]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def other_client(live_server: Any, key: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key.secret, max_retries=0)


def test_files_are_data_sets_under_the_same_validation(
    client: openai.OpenAI, live_server: Any, other_tenant: TenantKey
) -> None:
    data = jsonl(CHATS)
    created = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (
        len(data),
        "train.jsonl",
        "fine-tune",
    )
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == data

    more = [client.files.create(file=(f"f{i}.jsonl", data), purpose="fine-tune") for i in range(2)]
    # Iterating a page is the client's auto-paging: it follows ``after`` to the end.
    assert len(list(client.files.list(limit=2).iter_pages())) == 2
    listed = [f.id for f in client.files.list(limit=2)]
    assert listed == [more[1].id, more[0].id, created.id]  # newest first, over two pages

    bad = jsonl(CHATS[:1]) + b'{"messages": [{"role": "robot", "content": "w1"}]}\n'
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    error = refused.value.body
    assert error["param"] == "file" and "line 2" in error["message"] and "role" in error["message"]
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("train.jsonl", data), purpose="batch")
    assert wrong_purpose.value.body["param"] == "purpose"

    stranger = other_client(live_server, other_tenant)
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.delete(created.id)
    assert [f.id for f in stranger.files.list()] == []
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0).files.list()

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


@pytest.mark.parametrize("method", ["dpo", "reinforcement"])
def test_methods_other_than_supervised_are_refused_naming_method_type(
    client: openai.OpenAI, method: str
) -> None:
    file = client.files.create(file=("train.jsonl", jsonl(CHATS)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=LLAMA, training_file=file.id, method={"type": method})
    assert refused.value.body["param"] == "method.type"
    assert client.fine_tuning.jobs.list().data == []  # nothing stored on refusal


def test_create_refusals_name_the_parameter(client: openai.OpenAI, live_server: Any) -> None:
    file = client.files.create(file=("train.jsonl", jsonl(CHATS)), purpose="fine-tune")
    cases = [
        ({"model": "gpt-4o-mini", "training_file": file.id}, "model"),
        ({"model": LLAMA, "training_file": "file-0000"}, "training_file"),
        ({"model": LLAMA, "training_file": file.id, "validation_file": "nope"}, "validation_file"),
        (
            {"model": LLAMA, "training_file": file.id, "integrations": [{"type": "slack"}]},
            "integrations[0].type",
        ),
        (
            {"model": LLAMA, "training_file": file.id, "integrations": [{"type": "wandb"}]},
            "integrations[0].wandb.project",
        ),
    ]
    for params, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(**params)
        assert refused.value.body["param"] == param, params
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-000000000000000000000000000")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0
        ).fine_tuning.jobs.list()


def test_a_wandb_integration_is_the_jobs_report_to(
    client: openai.OpenAI, live_server: Any, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    file = client.files.create(file=("train.jsonl", jsonl(CHATS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=LLAMA,
        training_file=file.id,
        integrations=[{"type": "wandb", "wandb": {"project": "ft-runs", "tags": ["nightly"]}}],
    )
    ours = job.id.replace("ftjob-", "job_")
    response = httpx.get(f"{live_server.url}/jobs/{ours}", headers=tenant.headers)
    tracking = response.json()["hyperparameters"]["tracking"]
    assert tracking["report_to"] == ["wandb"]
    assert tracking["wandb"]["project"] == "ft-runs" and tracking["wandb"]["tags"] == ["nightly"]
    assert tracking["wandb"]["mode"] == "offline"
    (integration,) = job.integrations  # and the job shows it as OpenAI does
    assert integration.type == "wandb" and integration.wandb.project == "ft-runs"
    assert integration.wandb.tags == ["nightly"]


def _file_tokens(settings: Any, rows: list[dict[str, Any]], max_length: int) -> int:
    """The tokens of the chat rows as the base's tokenizer encodes them for training."""
    from adalora_core.encoding import encode_rows
    from adalora_core.hf_loading import load_tokenizer
    from adalora_core.tasks import CAUSAL_LM, TaskSpec

    tokenizer = load_tokenizer(settings.base_models[LLAMA])
    encoded = encode_rows(
        TaskSpec(kind=CAUSAL_LM, text_column="messages"), rows, tokenizer, max_length
    )
    return sum(len(row["input_ids"]) for row in encoded)


def _learning_rate(live_server: Any, tenant: TenantKey, job_id: str) -> float:
    response = httpx.get(f"{live_server.url}/jobs/{job_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()["hyperparameters"]["training"]["learning_rate"]


def test_a_fine_tuning_job_from_file_to_served_model(
    client: openai.OpenAI,
    live_server: Any,
    tenant: TenantKey,
    other_tenant: TenantKey,
    settings: Any,
    sessions: Any,
    store: Any,
) -> None:
    file = client.files.create(file=("train.jsonl", jsonl(CHATS)), purpose="fine-tune")
    auto = client.fine_tuning.jobs.create(model=LLAMA, training_file=file.id)
    job = client.fine_tuning.jobs.create(
        model=LLAMA,
        training_file=file.id,
        validation_file=file.id,
        suffix="tiny",
        seed=7,
        metadata={"team": "search"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2}
            },
        },
        extra_body={
            "adalora": {
                "adalora": {"init_r": 4, "target_r": 2},
                "checkpoints": {"keep": 2},
                "max_length": 32,
            }
        },
    )
    assert job.id.startswith("ftjob-") and job.status == "queued" and job.fine_tuned_model is None
    assert (job.model, job.training_file, job.validation_file) == (LLAMA, file.id, file.id)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == 2
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.model_dump() == job.hyperparameters.model_dump()
    assert (job.seed, job.organization_id, job.metadata) == (7, tenant.id, {"team": "search"})
    assert job.result_files == []
    ours = job.model_extra["adalora_job_id"]
    # learning_rate_multiplier scales the automatic learning rate.
    auto_ours = auto.model_extra["adalora_job_id"]
    assert _learning_rate(live_server, tenant, ours) == pytest.approx(
        2 * _learning_rate(live_server, tenant, auto_ours)
    )
    assert client.fine_tuning.jobs.cancel(auto.id).status == "cancelled"
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # one a page
    assert listed == [job.id, auto.id]
    with pytest.raises(openai.ConflictError):  # a running job's file stays
        client.files.delete(file.id)

    assert run_job(ours, settings, sessions, store).status == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.finished_at is not None
    assert done.fine_tuned_model == f"ft:{LLAMA}:acme:tiny:{job.id}"
    assert job.trained_tokens is None  # null until it succeeds, as on OpenAI
    assert done.trained_tokens == 2 * _file_tokens(settings, CHATS, 32)  # 2 whole passes

    (result,) = done.result_files
    assert client.files.retrieve(result).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
    assert rows and {"step", "train_loss", "eval_loss", "budget"} <= set(rows[0])

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))
    numbers = [int(e.id.removeprefix("ftevent-")) for e in events]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) > 5  # newest first, paged
    assert events[0].type == "message" and events[0].message == "Job status: succeeded"
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all(
        {"step", "train_loss", "valid_loss", "budget"} <= set(e.data) for e in metrics
    )
    assert metrics[0].data["valid_loss"] is not None  # the last evaluation before it

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    steps = [c.step_number for c in checkpoints]
    assert steps == sorted(steps, reverse=True) and 2 <= len(steps) <= 3  # keep 2 + the best
    for checkpoint in checkpoints:
        assert checkpoint.id.startswith("ftckpt-") and checkpoint.fine_tuning_job_id == job.id
        assert checkpoint.fine_tuned_model_checkpoint == (
            f"{done.fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
        )
        assert checkpoint.metrics.valid_loss is not None
    newest = checkpoints[0]

    model_ids = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in model_ids and newest.fine_tuned_model_checkpoint in model_ids

    def chat(model: str) -> str:
        answer = client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=4, temperature=0
        )
        return answer.choices[0].message.content

    adapter_id = httpx.get(f"{live_server.url}/jobs/{ours}", headers=tenant.headers).json()[
        "adapter_id"
    ]
    assert chat(done.fine_tuned_model) == chat(adapter_id)
    ckpt_id = "ckpt_" + newest.id.removeprefix("ftckpt-")
    assert chat(newest.fine_tuned_model_checkpoint) == chat(ckpt_id)
    completion = client.completions.create(
        model=done.fine_tuned_model, prompt="w9 w10", max_tokens=3, temperature=0
    )
    again = client.completions.create(
        model=adapter_id, prompt="w9 w10", max_tokens=3, temperature=0
    )
    assert completion.choices[0].text == again.choices[0].text

    stranger = other_client(live_server, other_tenant)
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(model=done.fine_tuned_model, messages=QUESTION)
    assert done.fine_tuned_model not in {m.id for m in stranger.models.list()}
    # A name with another tenant's name in it finds nothing.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=done.fine_tuned_model.replace(":acme:", ":globex:"), messages=QUESTION
        )

    # A fine-tuned model is a model to fine-tune further: the job continues from it.
    continued = client.fine_tuning.jobs.create(
        model=done.fine_tuned_model,
        training_file=file.id,
        hyperparameters={"n_epochs": 1},
        extra_body={"adalora": {"max_length": 32}},
    )
    assert continued.model == done.fine_tuned_model
    continued_ours = continued.model_extra["adalora_job_id"]
    shown = httpx.get(f"{live_server.url}/jobs/{continued_ours}", headers=tenant.headers).json()
    assert shown["base_model"] == LLAMA
    assert shown["hyperparameters"]["init_from"]["adapter_id"] == adapter_id
    assert shown["hyperparameters"]["adalora"]["init_r"] == 4  # the source's, not the default
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model=done.fine_tuned_model,
            training_file=file.id,
            extra_body={"adalora": {"adalora": {"init_r": 8}}},
        )
    assert refused.value.body["param"] == "adalora.init_r"
    client.fine_tuning.jobs.cancel(continued.id)
    from_checkpoint = client.fine_tuning.jobs.create(
        model=newest.fine_tuned_model_checkpoint, training_file=file.id
    )
    assert from_checkpoint.model == newest.fine_tuned_model_checkpoint
    ours = from_checkpoint.model_extra["adalora_job_id"]
    shown = httpx.get(f"{live_server.url}/jobs/{ours}", headers=tenant.headers).json()
    assert shown["hyperparameters"]["init_from"]["checkpoint_id"] == ckpt_id
    client.fine_tuning.jobs.cancel(from_checkpoint.id)
    client.files.delete(file.id)  # its jobs finished: the file may go


def test_a_job_on_an_encoder_base_is_served_on_infer_by_its_name(
    client: openai.OpenAI,
    live_server: Any,
    tenant: TenantKey,
    settings: Any,
    sessions: Any,
    store: Any,
) -> None:
    from pathlib import Path

    from tests.conftest import TEST_BASE_MODEL
    from tests.serving.tiny_serving import make_model, make_tokenizer

    base = Path(settings.base_models[TEST_BASE_MODEL])
    make_model("bert").save_pretrained(base)
    make_tokenizer(with_cls=True).save_pretrained(base)
    rows = [{"text": f"w{i} w{i + 1}", "label": ["neg", "pos"][i % 2]} for i in range(5, 45)]
    file = client.files.create(file=("labels.jsonl", jsonl(rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TEST_BASE_MODEL,
        training_file=file.id,
        suffix="sentiment",
        hyperparameters={"n_epochs": 1, "batch_size": 8},
    )
    assert run_job(job.model_extra["adalora_job_id"], settings, sessions, store).status == (
        "succeeded"
    )
    name = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert name == f"ft:{TEST_BASE_MODEL}:acme:sentiment:{job.id}"
    answer = httpx.post(
        f"{live_server.url}/infer",
        headers=tenant.headers,
        json={"adapter_id": name, "inputs": ["w7 w8"]},
        timeout=120,  # the first request starts the encoder's forward process
    )
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["outputs"][0]["scores"]) == {"neg", "pos"}
    unlabelled = client.files.create(file=("chat.jsonl", jsonl(CHATS)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TEST_BASE_MODEL, training_file=unlabelled.id)
    assert refused.value.body["param"] == "training_file"
