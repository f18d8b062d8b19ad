"""A real job reporting to TensorBoard, MLflow and W&B, read back with each library's own reader:
TensorBoard's EventAccumulator on the zip the API serves, MlflowClient on a SQLite store, and
W&B's offline run directory through `wandb leet inspect`. Each is checked against the job's own
events; a killed and resumed job has one run per tracker; a tracker that refuses connections
costs one warning and nothing else."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service import tenants
from service.consistency import check_store
from service.tables import Adapter, Job, JobEvent, utcnow
from worker.reconciler import reconcile_once
from worker.runner import run_job

WANDB = [str(Path(sys.executable).with_name("wandb"))]


@pytest.fixture
def trackers_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline into tmp; an MLflow SQLite store whose experiment keeps artifacts in tmp."""
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("tiny", artifact_location=str(tmp_path / "mlartifacts"))
    return tmp_path


def mlflow_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def job_events(world: Any, job_id: str, kind: str) -> list[dict[str, Any]]:
    with world.sessions() as session:
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            .order_by(JobEvent.id)
        ).all()
        return [r.data for r in rows]


def last_per_step(points: list[tuple[int, float]]) -> dict[int, float]:
    """A resumed job logs the steps after its checkpoint again: the last value counts."""
    return dict(points)


def loss_series(world: Any, job_id: str) -> dict[int, float]:
    return last_per_step([(e["step"], e["loss"]) for e in job_events(world, job_id, "progress")])


def allocation_totals(world: Any, job: Job) -> dict[int, int]:
    """Total rank after every masking step, from the adapter's rank history."""
    with world.sessions() as session:
        adapter = session.get(Adapter, job.adapter_id)
        history = adapter.rank_info["history"]
    return {h["step"]: sum(h["ranks"].values()) for h in history}


def tracked_body(world: Any, home: Path, **extra: Any) -> dict[str, Any]:
    return {
        "report_to": ["tensorboard", "mlflow", "wandb"],
        "mlflow": {"tracking_uri": mlflow_uri(home), "experiment": "tiny"},
        "wandb": {"project": "tiny-project", "tags": ["ci"]},
        **extra,
    }


def download_tensorboard(server: Any, world: Any, job_id: str, dest: Path) -> Any:
    """GET /jobs/{id}/tensorboard from a live API, unzipped and loaded by EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with world.sessions() as session:
        _, secret = tenants.create_api_key(session, world.tenant_id, "reader")
        session.commit()
    response = httpx.get(
        f"{server.url}/jobs/{job_id}/tensorboard",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(dest)
    accumulator = EventAccumulator(str(dest), size_guidance={"images": 0, "scalars": 0})
    return accumulator.Reload()


def tb_hparams(accumulator: Any) -> dict[str, Any]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's transaction log as W&B's own reader prints it."""
    result = subprocess.run(
        [*WANDB, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wandb_runs(home: Path) -> list[Path]:
    return sorted((home / "wandb").glob("offline-run-*"))


def test_a_job_reports_to_all_three_trackers(
    world, settings, sessions, store, trackers_home, live_server, tmp_path
) -> None:
    from mlflow import MlflowClient

    job_id = world.submit(validate=True, body=tracked_body(world, trackers_home))
    outcome = run_job(job_id, settings, sessions, store)
    assert outcome.status == "succeeded"
    job = world.job(job_id)
    warnings = [w["message"] for w in job_events(world, job_id, "warning")]
    assert not [w for w in warnings if w.startswith(("tensorboard", "mlflow", "wandb"))]
    losses = loss_series(world, job_id)
    assert sorted(losses) == list(range(1, 13))
    evals = {e["step"]: e["metrics"] for e in job_events(world, job_id, "eval")}
    totals = allocation_totals(world, job)
    assert len(totals) >= 3
    hyper = job.hyperparameters

    # TensorBoard, from the zip the API serves.
    tb = download_tensorboard(live_server, world, job_id, tmp_path / "tb")
    tb_loss = {e.step: e.value for e in tb.Scalars("train/loss")}
    assert tb_loss == pytest.approx(losses, rel=1e-6)
    assert {e.step for e in tb.Scalars("train/grad_norm")} == set(losses)
    assert {e.step for e in tb.Scalars("train/learning_rate")} == set(losses)
    budget = {e.step: e.value for e in tb.Scalars("train/budget")}
    assert budget[12] == sum(m["rank"] for m in _modules(world, job))
    assert {e.step: e.value for e in tb.Scalars("allocation/total_rank")} == totals
    modules, last = _modules(world, job), max(totals)
    for group in ("kind", "layer"):
        final: dict[str, int] = {}
        for module in modules:
            name = f"allocation/{group}/{module[group]}"
            final[name] = final.get(name, 0) + module["rank"]
        tags = {t for t in tb.Tags()["scalars"] if t.startswith(f"allocation/{group}/")}
        assert tags == set(final) and len(tags) > 1
        for tag, rank in final.items():  # no masking after the last: its ranks are final
            assert {e.step: e.value for e in tb.Scalars(tag)}[last] == rank
    for step, value in evals.items():
        scalars = {e.step: e.value for e in tb.Scalars("eval/accuracy")}
        assert scalars[step] == pytest.approx(value["accuracy"])
    assert [i.step for i in tb.Images("allocation/ranks")] == sorted(totals)
    params = tb_hparams(tb)
    assert params["adalora.init_r"] == hyper["adalora"]["init_r"] == 4
    assert params["training.learning_rate"] == pytest.approx(5e-3)
    assert params["chosen_by_service"] == ",".join(hyper["chosen_by_service"])
    assert "adalora.lora_alpha" in params["chosen_by_service"]

    # MLflow, through its own client on the SQLite store.
    client = MlflowClient(mlflow_uri(trackers_home))
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["adalora.job_id"] == job_id
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    totals_ml = client.get_metric_history(run.info.run_id, "allocation/total_rank")
    assert {m.step: m.value for m in totals_ml} == totals
    for name in ("eval_loss", "accuracy", "f1"):
        key = f"eval/{name.removeprefix('eval_')}"
        eval_ml = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert eval_ml == pytest.approx({step: m[name] for step, m in evals.items()})
    assert run.data.params["adalora.init_r"] == "4"
    assert run.data.params["chosen_by_service"] == ",".join(hyper["chosen_by_service"])
    assert run.data.tags["adapter.id"] == job.adapter_id
    assert run.data.tags["adapter.formats"] == "peft,lora,merged"
    with sessions() as session:
        adapter = session.get(Adapter, job.adapter_id)
        assert run.data.tags["adapter.sha256.peft"] == adapter.formats["peft"]["sha256"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert artifacts == {"adapter/peft.zip"}
    ranks_path = client.download_artifacts(
        run.info.run_id, "allocation/final_ranks.json", str(tmp_path / "ml")
    )
    assert json.loads(Path(ranks_path).read_text())["modules"] == _modules(world, job)
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len(images) >= len(totals)

    # W&B, offline, from its run directory.
    (run_dir,) = wandb_runs(trackers_home)
    records = wandb_records(run_dir)
    run_records = [r["run"] for r in records if r["type"] == "run"]
    assert {r["run_id"] for r in run_records} == {job.tracking["wandb"]["run_id"]}
    assert run_records[0]["project"] == "tiny-project"
    assert set(run_records[-1]["tags"]) == {"ci", f"adapter:{job.adapter_id}"}
    config = run_records[0]["config"]["update"]
    assert config["adalora.init_r"] == 4
    assert config["chosen_by_service"] == ",".join(hyper["chosen_by_service"])
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    wb_loss = {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}
    assert wb_loss == pytest.approx(losses)
    wb_totals = {
        r["_step"]: r["allocation/total_rank"] for r in rows if "allocation/total_rank" in r
    }
    assert wb_totals == totals
    summary: dict[str, Any] = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"].get("update") or {})
    assert summary["adapter.id"] == job.adapter_id
    # The stored event files are the job's: not an orphan to the store's garbage collection.
    with sessions() as session:
        assert check_store(session, store).consistent


def _modules(world: Any, job: Job) -> list[dict[str, Any]]:
    with world.sessions() as session:
        return session.get(Adapter, job.adapter_id).rank_info["modules"]


def test_a_killed_and_resumed_job_has_one_run_per_tracker(
    world, settings, sessions, store, trackers_home, live_server, tmp_path
) -> None:
    from mlflow import MlflowClient

    # Long enough that the first run is still training when it is taken away; masking every
    # 25 updates keeps the heatmaps few.
    adalora = {"init_r": 4, "target_r": 2, "t_init": 5, "t_final": 25, "delta_t": 25}
    body = tracked_body(world, trackers_home, adalora=adalora)
    job_id = world.submit(max_steps=300, checkpoint_every=10, body=body)
    first: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: first.update(o=run_job(job_id, settings, sessions, store, owner="w1"))
    )
    thread.start()
    _wait(lambda: (world.job(job_id).tracking or {}).keys() >= {"mlflow", "wandb", "tensorboard"})
    with sessions() as session:  # the worker looks dead: the reconciler takes the job back
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
        assert reconcile_once(session, settings, lambda _: None).requeued == [job_id]
    thread.join(120)
    assert first["o"].status == "lost"
    remembered = world.job(job_id).tracking
    assert run_job(job_id, settings, sessions, store, owner="w2").status == "succeeded"
    job = world.job(job_id)
    assert job.tracking["mlflow"] == remembered["mlflow"]
    assert job.tracking["wandb"] == remembered["wandb"]
    assert [e for e in job_events(world, job_id, "log") if e.get("message") == "resumed"]
    losses = loss_series(world, job_id)

    client = MlflowClient(mlflow_uri(trackers_home))
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert {m.step for m in history} == set(range(1, 301))

    ids = {
        r["run"]["run_id"]
        for run_dir in wandb_runs(trackers_home)
        for r in wandb_records(run_dir)
        if r["type"] == "run"
    }
    assert ids == {job.tracking["wandb"]["run_id"]}

    snapshots = [o.key for o in store.list_objects(f"tensorboard/{job_id}/")]
    assert snapshots == [job.tracking["tensorboard"]["key"]]  # the earlier ones are dropped
    tb = download_tensorboard(live_server, world, job_id, tmp_path / "tb")
    points = [(e.step, e.value) for e in tb.Scalars("train/loss")]
    assert [step for step, _ in points] == list(range(1, 301))  # one run: no step twice
    assert dict(points) == pytest.approx(losses, rel=1e-6)


def test_a_tracker_that_refuses_connections_costs_one_warning(
    world, settings, sessions, store, free_port_uri
) -> None:
    job_id = world.submit(body={"report_to": ["mlflow"], "mlflow": {"tracking_uri": free_port_uri}})
    assert run_job(job_id, settings, sessions, store).status == "succeeded"
    warnings = job_events(world, job_id, "warning")
    assert len(warnings) == 1, warnings
    assert warnings[0]["message"].startswith("mlflow: ")
    assert "the job goes on without reporting to mlflow" in warnings[0]["message"]
    assert len(loss_series(world, job_id)) == 12


@pytest.fixture
def free_port_uri() -> str:
    import socket

    with socket.socket() as sock:  # bound and closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://user@127.0.0.1:{port}"


def _wait(predicate: Any, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
