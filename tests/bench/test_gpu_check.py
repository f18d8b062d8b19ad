"""bench/gpu_check.sh cannot run here (no GPU); what runs without one is checked: it parses,
its arguments are handled, and --dry-run prints every check's command and writes the summary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
CHECKS = [
    "gpu_info",
    "train_bf16_resume",
    "train_fp16_resume",
    "serve_bf16_engine",
    "serve_http_cuda",
    "ddp_nccl",
    "bench_train_overhead",
    "bench_infer",
    "bench_decode",
]


def run(*args: str, out: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = "/nonexistent/python"  # a dry run needs no venv
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_a_dry_run_prints_every_command_and_writes_the_summary_under_out(tmp_path: Path) -> None:
    done = run("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and summary["passed"] is False
    assert [c["name"] for c in summary["checks"]] == CHECKS
    assert {c["status"] for c in summary["checks"]} == {"not_run"}
    for check in summary["checks"]:
        assert f"[dry-run] {check['name']} " in done.stdout
        on_the_gpu = "--device cuda" in check["command"] or "INFER_DEVICE=cuda" in check["command"]
        assert on_the_gpu or check["name"] == "gpu_info", check
    assert not (tmp_path / "gpu_check_logs").exists()  # nothing ran


def test_a_path_argument_wins_over_out(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "summary.json"
    done = run("--dry-run", str(target), out=tmp_path / "ignored")
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text())["script"] == "bench/gpu_check.sh"
    assert not (tmp_path / "ignored" / "gpu_check.json").exists()


@pytest.mark.parametrize(
    "args",
    [["--nope"], ["--dry-run", "a.json", "b.json"], ["--budget"], ["--budget", "soon"]],
)
def test_bad_arguments_are_refused(args: list[str], tmp_path: Path) -> None:
    done = run(*args, out=tmp_path)
    assert done.returncode == 2 and "gpu_check" in done.stderr + done.stdout
    assert not (tmp_path / "gpu_check.json").exists()


def test_without_a_python_it_stops_before_running_anything(tmp_path: Path) -> None:
    done = run(out=tmp_path)
    assert done.returncode == 2 and "no Python" in done.stderr
