"""A job's checkpoints over HTTP: listed with their metrics, downloaded in each format (each
loads in PEFT or transformers with the outputs /infer gives for the checkpoint's id), served by
id, isolated per tenant; and the job's metrics file."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from sqlalchemy import select
from transformers import AutoModelForSequenceClassification

from adalora_core.formats.bundle import read_adapter
from adalora_core.hf_loading import load_model, load_tokenizer
from adalora_core.tasks import TaskSpec
from service.tables import JobEvent
from tests.api.conftest import job_body
from tests.conftest import TEST_BASE_MODEL
from tests.serving.tiny_serving import make_model, make_tokenizer
from worker.runner import run_job

TEXT = "sample sentence number 3"


@pytest.fixture
def tiny_base(settings: Any) -> Path:
    path = Path(settings.base_models[TEST_BASE_MODEL])
    make_model("bert").save_pretrained(path)
    make_tokenizer(with_cls=True).save_pretrained(path)
    return path


@pytest.fixture
def trained_job(client, tenant, dataset, tiny_base, settings, sessions, store) -> dict[str, Any]:
    body = job_body(
        dataset["id"],
        validation_dataset_id=dataset["id"],
        training__epochs=...,
        training__max_steps=6,
        training__checkpoint_every=2,
        training__eval_every=2,
    )
    response = client.post("/jobs", headers=tenant.headers, json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert run_job(job["id"], settings, sessions, store).status == "succeeded"
    return job


def _unzip(data: bytes, dest: Path) -> Path:
    zipfile.ZipFile(io.BytesIO(data)).extractall(dest)
    return dest


def _probabilities(model: Any, base: Path) -> list[float]:
    inputs = load_tokenizer(base)(TEXT, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**inputs).logits[0].float(), -1).tolist()


def test_checkpoints_are_listed_downloaded_and_served_by_id(
    client, tenant, other_tenant, trained_job, tiny_base: Path, tmp_path: Path
) -> None:
    job_id = trained_job["id"]
    listed = client.get(f"/jobs/{job_id}/checkpoints", headers=tenant.headers)
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [c["step"] for c in items] == [2, 4]  # every 2 updates, not after the last (6)
    for item in items:
        assert item["job_id"] == job_id and item["base_model"] == TEST_BASE_MODEL
        assert {"train_loss", "eval_loss", "eval_accuracy"} <= set(item["metrics"])
        assert item["budget"]["current"] <= item["budget"]["initial"] and item["size_bytes"] > 0
    first = items[0]

    served = client.post(
        "/infer", headers=tenant.headers, json={"adapter_id": first["id"], "inputs": [TEXT]}
    )
    assert served.status_code == 200, served.text
    scores = served.json()["outputs"][0]["scores"]
    got = [scores[label] for label in sorted(scores)]

    peft_zip = client.get(f"/jobs/{job_id}/checkpoints/2/download", headers=tenant.headers)
    assert peft_zip.status_code == 200 and peft_zip.headers["content-type"] == "application/zip"
    bundle = _unzip(peft_zip.content, tmp_path / "peft")
    weights = read_adapter(bundle)
    task = TaskSpec.from_json(weights.meta.task)
    base = load_model(tiny_base, task, load_tokenizer(tiny_base))
    in_peft = peft.PeftModel.from_pretrained(base, str(bundle)).eval()
    assert got == pytest.approx(_probabilities(in_peft, tiny_base), abs=1e-5)

    lora_zip = client.get(
        f"/jobs/{job_id}/checkpoints/2/download?format=lora", headers=tenant.headers
    )
    assert lora_zip.status_code == 200, lora_zip.text
    lora_dir = _unzip(lora_zip.content, tmp_path / "lora")
    base = load_model(tiny_base, task, load_tokenizer(tiny_base))
    as_lora = peft.PeftModel.from_pretrained(base, str(lora_dir)).eval()
    assert type(as_lora.base_model).__name__ == "LoraModel"
    assert got == pytest.approx(_probabilities(as_lora, tiny_base), abs=1e-5)

    merged_zip = client.get(
        f"/jobs/{job_id}/checkpoints/2/download?format=merged", headers=tenant.headers
    )
    assert merged_zip.status_code == 200, merged_zip.text
    merged = AutoModelForSequenceClassification.from_pretrained(
        _unzip(merged_zip.content, tmp_path / "merged")
    ).eval()
    assert got == pytest.approx(_probabilities(merged, tiny_base), abs=1e-5)

    missing = client.get(f"/jobs/{job_id}/checkpoints/3/download", headers=tenant.headers)
    assert missing.status_code == 404 and "steps: 2, 4" in missing.json()["error"]["message"]
    # Another tenant sees neither the job's checkpoints nor the checkpoint by id.
    assert (
        client.get(f"/jobs/{job_id}/checkpoints", headers=other_tenant.headers).status_code == 404
    )
    foreign = client.post(
        "/infer", headers=other_tenant.headers, json={"adapter_id": first["id"], "inputs": [TEXT]}
    )
    assert foreign.status_code == 404


def test_the_metrics_file_has_a_row_per_progress_and_eval_event(
    client, tenant, other_tenant, trained_job, sessions
) -> None:
    job_id = trained_job["id"]
    response = client.get(f"/jobs/{job_id}/metrics.csv", headers=tenant.headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.text))
    header = reader.fieldnames or []
    assert header[:4] == ["step", "epoch", "train_loss", "eval_loss"]
    assert header[-3:] == ["learning_rate", "budget", "elapsed_s"]
    assert "eval_accuracy" in header
    rows = list(reader)
    with sessions() as session:
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind.in_(("progress", "eval")))
            .order_by(JobEvent.id)
        ).all()
    assert len(rows) == len(events) > 0
    for row, event in zip(rows, events, strict=True):
        assert int(row["step"]) == event.data["step"]
        assert float(row["elapsed_s"]) >= 0 and row["budget"] != ""
        if event.kind == "progress":
            assert float(row["train_loss"]) == pytest.approx(event.data["loss"])
            assert float(row["learning_rate"]) == pytest.approx(event.data["learning_rate"])
            assert row["eval_loss"] == ""
        else:
            assert float(row["eval_loss"]) == pytest.approx(event.data["metrics"]["eval_loss"])
            assert row["train_loss"] == ""
    # every 2 updates, at the end of the first epoch (5 batches of 8 rows) and at the last
    assert [int(r["step"]) for r in rows if r["eval_loss"]] == [2, 4, 5, 6]
    other = client.get(f"/jobs/{job_id}/metrics.csv", headers=other_tenant.headers)
    assert other.status_code == 404
