"""What experiment tracking costs a job: the same job untracked, reporting to an MLflow URI that
refuses connections, and reporting to all three trackers (TensorBoard, MLflow on a SQLite store,
W&B offline).

Each job runs whole through the worker in-process (`worker.runner.run_job`: lease, train,
publish) on all-MiniLM-L6-v2 (classification, a synthetic sentiment CSV), SQLite and a local
store; the figure is the job's wall time from lease to succeeded. One untimed warm-up job, then
`--rounds` rounds in which the three variants take turns (the order rotates each round), so
machine noise hits them alike; medians over rounds and their ratios to the untracked job.
The last line is one JSON object.

    .venv/bin/python -m bench.tracking --rounds 5

``--screenshot PATH`` then opens the last tracked job's stored event files in TensorBoard and
saves a screenshot of its loss and allocation charts, taken in headless Chromium (Debian's
chromium and chromium-driver), for docs/api.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from application.job_request import JobCreate
from application.jobs import submit_job
from service.datasets import create_dataset
from service.datasets_io import scan
from service.db import make_engine, make_sessionmaker, upgrade_to_head
from service.ids import new_id
from service.settings import DEFAULT_MINILM_NAME, Settings
from service.store import LocalStore, dataset_key
from service.tables import Job, JobEvent
from service.tenants import create_tenant
from worker.runner import run_job

WORDS = {"good": 1, "great": 1, "fine": 1, "bad": 0, "awful": 0, "poor": 0}
FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "was",
    "is",
    "very",
    "quite",
]


def write_rows(path: Path, count: int) -> Path:
    rng = random.Random(0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(count):
            word, label = rng.choice(list(WORDS.items()))
            words = [*rng.sample(FILLER, 6), word]
            rng.shuffle(words)
            writer.writerow([" ".join(words), ["negative", "positive"][label]])
    return path


def refused_uri() -> str:
    with socket.socket() as sock:  # bound and closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def screenshot(logdir: Path, out: Path) -> None:
    """TensorBoard on ``logdir``, its time series filtered to the loss and the allocation by
    kind, saved as a PNG by headless Chromium."""
    import httpx
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1150"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{url}/data/runs", timeout=2).json():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        driver.get(f"{url}/#timeseries")
        time.sleep(10)  # the page loads its data after itself
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label*='lose']"):
            if button.is_displayed():
                button.click()  # the settings pane
        tags = driver.find_element(By.CSS_SELECTOR, "input[placeholder*='Filter tags']")
        tags.send_keys("train/loss|allocation/kind/(query|value|intermediate)", Keys.ESCAPE)
        time.sleep(10)  # the charts redraw
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--screenshot", type=Path, help="save TensorBoard's charts here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    home = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    os.environ["WANDB_DIR"] = str(home)
    os.environ.pop("WANDB_API_KEY", None)
    settings = Settings(home=home / "home")
    upgrade_to_head(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    store = LocalStore(settings.store_dir)

    from mlflow import MlflowClient

    mlflow_uri = f"sqlite:///{home / 'mlflow.db'}"
    MlflowClient(mlflow_uri).create_experiment("bench", artifact_location=str(home / "mlruns"))

    rows = write_rows(home / "train.csv", 400)
    with sessions() as session:
        tenant_id = create_tenant(session, "bench").id
        dataset_id = new_id("ds")
        key = dataset_key(tenant_id, dataset_id, "csv")
        sha256, size = store.put_file(key, rows)
        create_dataset(
            session,
            dataset_id=dataset_id,
            tenant_id=tenant_id,
            name="train.csv",
            summary=scan(rows, "csv"),
            sha256=sha256,
            size_bytes=size,
            storage_key=key,
        )
        session.commit()

    variants: dict[str, dict[str, Any]] = {
        "untracked": {},
        "refused_mlflow": {"report_to": ["mlflow"], "mlflow": {"tracking_uri": refused_uri()}},
        "three_trackers": {
            "report_to": ["tensorboard", "mlflow", "wandb"],
            "mlflow": {"tracking_uri": mlflow_uri, "experiment": "bench"},
            "wandb": {"project": "bench", "mode": "offline"},
        },
    }

    last_tracked: list[str] = []

    def one_job(extra: dict[str, Any]) -> tuple[float, float, list[str]]:
        body = JobCreate.model_validate(
            {
                "base_model": DEFAULT_MINILM_NAME,
                "task": "classification",
                "dataset_id": dataset_id,
                "columns": {"text": "text", "label": "label"},
                "adalora": {"init_r": 8, "target_r": 4, "t_init": 4, "t_final": 8, "delta_t": 2},
                "training": {"max_steps": args.steps, "batch_size": 16, "max_length": 32},
                **extra,
            }
        )
        with sessions() as session:
            job = submit_job(session, settings, tenant_id, body, None, lambda _: None).job
        start, cpu_start = time.perf_counter(), time.process_time()
        outcome = run_job(job.id, settings, sessions, store)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        assert outcome.status == "succeeded", outcome
        if "tensorboard" in extra.get("report_to", []):
            last_tracked[:] = [job.id]
        with sessions() as session:
            warnings = session.scalars(
                select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.kind == "warning")
            ).all()
        return seconds, cpu, [w["message"][:120] for w in warnings]

    one_job({})  # warm-up: the base loaded once, caches filled
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    warnings: dict[str, list[str]] = {}
    names = list(variants)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            seconds, cpu, said = one_job(variants[name])
            times[name].append(round(seconds, 2))
            cpu_times[name].append(round(cpu, 2))
            warnings[name] = said
            print(f"round {round_index + 1} {name}: {seconds:.2f} s, cpu {cpu:.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    base, cpu_base = medians["untracked"], cpu_medians["untracked"]
    print(
        json.dumps(
            {
                "median_s": medians,
                "ratio_to_untracked": {n: round(m / base, 3) for n, m in medians.items()},
                "per_round_s": times,
                # this process's CPU time, every thread (W&B's wandb-core process not included)
                "cpu_median_s": cpu_medians,
                "cpu_ratio_to_untracked": {
                    n: round(m / cpu_base, 3) for n, m in cpu_medians.items()
                },
                "cpu_per_round_s": cpu_times,
                "warnings": warnings,
                "rounds": args.rounds,
                "steps": args.steps,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )
    if args.screenshot and last_tracked:
        with sessions() as session:
            stored = session.get(Job, last_tracked[0]).tracking["tensorboard"]
        logdir = home / "tensorboard" / "minilm-sentiment"
        zipfile.ZipFile(io.BytesIO(store.open_read(stored["key"], stored["sha256"]))).extractall(
            logdir
        )
        screenshot(logdir.parent, args.screenshot)


if __name__ == "__main__":
    main()
