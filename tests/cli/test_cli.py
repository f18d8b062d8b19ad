"""The `adalora` client commands against a live embedded service (typer's CliRunner)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

pytestmark = pytest.mark.slow

runner = CliRunner()


def run(live, *args: str, key: str | None = None, ok: bool = True):
    env = {"ADALORA_URL": live.url, "ADALORA_KEY": key or live.key, "COLUMNS": "200"}
    result = runner.invoke(app, list(args), env=env)
    if ok:
        assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def submit(live, dataset_id: str, *extra: str) -> str:
    result = run(
        live,
        "jobs",
        "submit",
        "--dataset",
        dataset_id,
        "--base-model",
        "tiny",
        "--task",
        "classification",
        "--text-column",
        "text",
        "--label-column",
        "label",
        "--init-r",
        "4",
        "--target-r",
        "2",
        "--batch-size",
        "8",
        "--learning-rate",
        "0.005",
        *extra,
    )
    return result.stdout.strip().splitlines()[-1]


def test_quickstart_through_the_cli(live, tmp_path: Path) -> None:
    dataset_id = run(live, "datasets", "upload", str(live.data)).stdout.strip()
    assert dataset_id.startswith("ds_")
    assert dataset_id in run(live, "datasets", "list").stdout

    config = tmp_path / "job.json"
    config.write_text(json.dumps({"adalora": {"t_init": 2, "t_final": 2, "delta_t": 1}}))
    job_id = submit(
        live, dataset_id, "--max-steps", "12", "--output", "merged", "--config", str(config)
    )
    followed = run(live, "jobs", "follow", job_id, "--interval", "0.2", "--timeout", "240")
    adapter_id = followed.stdout.strip().splitlines()[-1]
    assert adapter_id.startswith("ad_")
    assert "succeeded" in followed.output
    assert "following live events" in followed.output and "polling" not in followed.output

    saved = tmp_path / "metrics.csv"
    assert run(live, "jobs", "metrics", job_id, "--out", str(saved)).stdout.strip() == str(saved)
    served = live.client.http.get(f"/jobs/{job_id}/metrics.csv").content
    assert saved.read_bytes() == served and served.startswith(b"step,epoch,train_loss,eval_loss")

    shown = json.loads(run(live, "jobs", "show", job_id).stdout)
    assert shown["status"] == "succeeded" and shown["hyperparameters"]["adalora"]["t_init"] == 2
    assert "warning: the budget is reduced" in followed.output  # 12 updates are too few

    # The resolved settings repeat the run exactly: nothing is left for the service to choose.
    request = tmp_path / "repeat.json"
    request.write_text(run(live, "jobs", "show", job_id, "--request").stdout)
    again = json.loads(run(live, "jobs", "submit", "--config", str(request), "--json").stdout)
    assert again["hyperparameters"]["chosen_by_service"] == []
    for section in ("adalora", "training", "schedule", "total_steps", "columns", "labels"):
        assert again["hyperparameters"][section] == shown["hyperparameters"][section], section
    run(live, "jobs", "cancel", again["id"])
    assert job_id in run(live, "jobs", "list").stdout
    assert adapter_id in run(live, "adapters", "list").stdout

    ranks = json.loads(run(live, "adapters", "ranks", adapter_id, "--json").stdout)
    drawn = run(live, "adapters", "ranks", adapter_id).stdout
    for module in ranks["modules"]:
        assert module["name"] in drawn
    assert "rank heatmap (layers × kinds)" in drawn
    assert f"final {sum(m['rank'] for m in ranks['modules'])}" in drawn

    answer = json.loads(run(live, "infer", adapter_id, "a good film", "bad plot").stdout)
    assert [row["label"] in ("negative", "positive") for row in answer["outputs"]] == [True, True]

    for fmt in ("peft", "lora", "merged"):
        out = tmp_path / f"{fmt}.zip"
        run(live, "adapters", "download", adapter_id, "--format", fmt, "--out", str(out))
        assert zipfile.ZipFile(out).testzip() is None
        served = live.client.http.get(f"/adapters/{adapter_id}/download", params={"format": fmt})
        assert hashlib.sha256(out.read_bytes()).hexdigest() == served.headers["x-checksum-sha256"]


def test_cancel_through_the_cli(live) -> None:
    dataset_id = run(live, "datasets", "upload", str(live.data), "--name", "again").stdout.strip()
    job_id = submit(live, dataset_id, "--max-steps", "3000")
    import time

    deadline = time.monotonic() + 120
    while live.client.job(job_id)["progress"]["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job_id in run(live, "jobs", "cancel", job_id).stdout
    followed = run(
        live, "jobs", "follow", job_id, "--interval", "0.2", "--timeout", "120", "--poll", ok=False
    )
    assert followed.exit_code == 1 and "cancelled" in followed.output
    assert "polling every 0.2s" in followed.output


def test_keys_create_list_revoke(live) -> None:
    created = json.loads(run(live, "keys", "create", "--name", "ci", "--json").stdout)
    secret, key_id = created["key"], created["id"]
    assert created["scope"] == "train"
    assert run(live, "datasets", "list", key=secret).exit_code == 0
    assert key_id in run(live, "keys", "list").stdout  # the bootstrap key is admin
    no_keys = run(live, "keys", "list", key=secret, ok=False)
    assert no_keys.exit_code == 1 and "HTTP 403" in no_keys.output
    assert key_id in run(live, "keys", "revoke", key_id).stdout
    refused = run(live, "datasets", "list", key=secret, ok=False)
    assert refused.exit_code == 1 and "HTTP 401" in refused.output


def test_tenants_create_list_disable(live) -> None:
    new_secret = run(live, "tenants", "create", "initech").stdout.strip().splitlines()[-1]
    assert new_secret.startswith("ak_")
    listed = json.loads(run(live, "tenants", "list", "--json").stdout)["items"]
    tenant = next(t for t in listed if t["name"] == "initech")
    assert run(live, "datasets", "list", key=new_secret).exit_code == 0
    assert tenant["id"] in run(live, "tenants", "disable", tenant["id"]).stdout
    refused = run(live, "datasets", "list", key=new_secret, ok=False)
    assert refused.exit_code == 1 and "HTTP 401" in refused.output
    not_operator = run(live, "tenants", "list", key=new_secret, ok=False)
    assert not_operator.exit_code == 1


def test_errors_name_the_field(live) -> None:
    bad = run(
        live,
        "jobs",
        "submit",
        "--dataset",
        "ds_missing",
        "--base-model",
        "tiny",
        "--task",
        "classification",
        "--text-column",
        "text",
        "--label-column",
        "label",
        "--init-r",
        "4",
        "--target-r",
        "2",
        ok=False,
    )
    assert bad.exit_code == 1 and "HTTP 422" in bad.output and "dataset_id" in bad.output
    wrong_format = run(live, "adapters", "download", "ad_x", "--format", "onnx", ok=False)
    assert wrong_format.exit_code == 1 and "--format must be one of" in wrong_format.output


def test_list_commands_follow_every_page(live, monkeypatch) -> None:
    """Lists follow next_cursor (pages of one here), and --limit says when more exist."""
    monkeypatch.setattr("cli.client.PAGE_SIZE", 1)
    uploaded = [
        run(live, "datasets", "upload", str(live.data), "--name", f"page-{i}").stdout.strip()
        for i in range(3)
    ]
    listed = run(live, "datasets", "list", "--json").stdout
    assert all(dataset_id in listed for dataset_id in uploaded)
    assert json.loads(listed)["next_cursor"] is None
    limited = run(live, "datasets", "list", "--limit", "2", "--json")
    assert len(json.loads(limited.stdout)["items"]) == 2
    assert "more exist" in limited.stderr


def test_import_a_peft_adapter_directory_through_the_cli(live, tmp_path: Path) -> None:
    """`adalora adapters import DIR`: PEFT's adapter on the service's tiny base, served by its
    name as PEFT serves it; a refusal prints the field at fault."""
    import peft
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base_dir = live.data.parent / "tiny"
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2).eval()
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "peft")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with torch.no_grad():
        want = torch.softmax(model(**tokenizer("a good film", return_tensors="pt")).logits[0], -1)

    args = ["adapters", "import", str(tmp_path / "peft"), "--base", "tiny"]
    adapter_id = run(live, *args, "--labels", "neg,pos", "--name", "cli-lora").stdout.strip()
    assert adapter_id.startswith("ad_")
    assert "cli-lora" in run(live, "adapters", "list").stdout
    answer = json.loads(run(live, "infer", "cli-lora", "a good film").stdout)["outputs"][0]
    got = torch.tensor([answer["scores"]["neg"], answer["scores"]["pos"]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    refused = run(live, *args, "--labels", "a,b,c", ok=False)
    assert refused.exit_code != 0
    assert "labels" in refused.output and "3 labels for a head of 2 classes" in refused.output
