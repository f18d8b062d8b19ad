"""A chat job on the real SmolLM2 through the worker: the settings the service chose are
stored, the generative metrics are reported, and the adapter published is the evaluation with
the lowest validation loss, not the last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from adalora_core.chat_template import chat_prompt_ids
from adalora_core.encoding import encode_rows, make_collator
from adalora_core.formats.bundle import read_adapter
from adalora_core.formats.peft import apply_adapter
from adalora_core.hf_loading import load_model, load_tokenizer
from adalora_core.tasks import TaskSpec
from adalora_core.training.evaluation import EvalAccumulator
from application.job_request import JobCreate
from application.submission import resolve_hyperparameters
from bench.generative_sets import facts
from service.base_models import SMOLLM2_NAME
from service.datasets import create_dataset
from service.datasets_io import scan
from service.ids import new_id
from service.jobs import create_job
from service.settings import Settings
from service.tables import Adapter, Dataset, Job, JobEvent
from service.tenants import create_tenant
from worker.runner import run_job

pytestmark = pytest.mark.slow

TASK = TaskSpec("causal-lm", "messages")
FACTS = facts(1)
TRAIN = FACTS.train[:8]
QUESTIONS = [row["messages"][0] for row in TRAIN[:4]]
STEPS = 8


@pytest.fixture
def settings(settings: Settings, smollm2_dir: Path) -> Settings:
    return settings.model_copy(update={"base_models": {SMOLLM2_NAME: str(smollm2_dir)}})


def upload(sessions, store, tmp: Path, tenant_id: str, name: str, rows: list[dict]) -> str:
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset_id = new_id("ds")
    key = f"datasets/{tenant_id}/{dataset_id}/data.jsonl"
    sha256, size = store.put_file(key, path)
    with sessions() as session:
        create_dataset(
            session,
            dataset_id=dataset_id,
            tenant_id=tenant_id,
            name=path.name,
            summary=scan(path, "jsonl"),
            sha256=sha256,
            size_bytes=size,
            storage_key=key,
        )
        session.commit()
    return dataset_id


def base_answers(base: Path) -> list[dict]:
    """The training questions with the base model's own greedy answers: the more the run learns
    its made-up facts, the less likely these become, so the lowest validation loss comes before
    the last update."""
    tokenizer = load_tokenizer(base)
    model = load_model(base, TASK, tokenizer).eval()
    rows = []
    for question in QUESTIONS:
        prompt = chat_prompt_ids(tokenizer, [question], "test")
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([prompt]), max_new_tokens=24, do_sample=False, num_beams=1
            )
        answer = tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()
        rows.append({"messages": [question, {"role": "assistant", "content": answer}]})
    return rows


def validation_loss(base: Path, bundle: bytes, rows: list[dict]) -> float:
    tokenizer = load_tokenizer(base)
    model = apply_adapter(load_model(base, TASK, tokenizer), read_adapter(bundle)).eval()
    batch = make_collator(TASK, tokenizer)(encode_rows(TASK, rows, tokenizer, 512))
    accumulator = EvalAccumulator(TASK)
    with torch.no_grad():
        accumulator.add(model(**batch), batch)
    return accumulator.result()["eval_loss"]


def test_a_chat_job_publishes_its_best_evaluation(
    settings: Settings, sessions, store, tmp_path: Path, smollm2_dir: Path
) -> None:
    with sessions() as session:
        tenant_id = create_tenant(session, "t").id
        session.commit()
    train_id = upload(sessions, store, tmp_path, tenant_id, "train", TRAIN)
    validation = base_answers(smollm2_dir)
    valid_id = upload(sessions, store, tmp_path, tenant_id, "valid", validation)
    body = JobCreate.model_validate(
        {
            "base_model": SMOLLM2_NAME,
            "task": "causal-lm",
            "dataset_id": train_id,
            "validation_dataset_id": valid_id,
            "training": {"max_steps": STEPS},  # CI-short; everything else is the service's
        }
    )
    with sessions() as session:
        train, valid = session.get(Dataset, train_id), session.get(Dataset, valid_id)
        assert train.learned_chars["messages"] == sum(
            len(row["messages"][1]["content"]) for row in TRAIN
        )
        job = create_job(
            session,
            tenant_id=tenant_id,
            base_model=SMOLLM2_NAME,
            task="causal-lm",
            dataset_id=train_id,
            validation_dataset_id=valid_id,
            request=body.model_dump(mode="json"),
            hyperparameters=resolve_hyperparameters(body, train, valid, settings),
            request_hash=new_id("h"),
        )
        session.commit()
        job_id = job.id

    assert run_job(job_id, settings, sessions, store).status == "succeeded"
    with sessions() as session:
        job = session.get(Job, job_id)
        adapter = session.get(Adapter, job.adapter_id)
        evals = {
            e.data["step"]: e.data["metrics"]
            for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "eval")
            )
        }
    hp = job.hyperparameters
    # what the service chose is stored with the job
    training = hp["training"]
    assert training["keep_best"] is True and "training.keep_best" in hp["chosen_by_service"]
    assert training["early_stop_patience"] is None
    assert training["batch_size"] == 4 and training["learning_rate"] == 2e-3
    assert hp["adalora"]["lora_alpha"] == 128
    # the generative metrics, each evaluation and the job's own
    assert sorted(evals) == [2, 4, 6, 8]  # 8 rows at batch 4: every epoch's end
    for metrics in evals.values():
        assert {"eval_loss", "mean_token_accuracy", "exact_match"} <= set(metrics)
    assert 0 <= job.metrics["train_mean_token_accuracy"] <= 1
    # the best evaluation is the one published, and its step is on the job and the adapter
    best = min(evals, key=lambda step: evals[step]["eval_loss"])
    assert best < STEPS, "the base's own answers must grow less likely as the facts are learned"
    assert job.metrics["best_step"] == adapter.metrics["best_step"] == best
    assert adapter.metrics["eval_loss"] == pytest.approx(evals[best]["eval_loss"])
    assert job.metrics["eval_loss"] == pytest.approx(evals[best]["eval_loss"])
    published = store.open_read(adapter.formats["peft"]["storage_key"])
    assert validation_loss(smollm2_dir, published, validation) == pytest.approx(
        evals[best]["eval_loss"], rel=1e-3
    )
