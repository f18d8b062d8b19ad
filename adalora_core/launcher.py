"""Starts one training job on several processes and collects rank 0's result.

``train_data_parallel(devices=N, ...)`` runs rank 0 in the calling process (so the caller's
callbacks, which may hold database connections, stay where they are) and starts ranks 1..N-1
as child processes (``python -m adalora_core.launcher``); the group meets through a file in a
private temporary directory. Each rank trains on one GPU (NCCL) or, without GPUs, on the CPU
(gloo). A micro-batch of ``batch_size`` rows is split across the ranks
(``adalora_core.distributed.shard``), so the job's plan, its update count and its budget
schedule mean the same as on one device. At the end every rank's rank history must equal rank
0's.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from adalora_core import trainer
from adalora_core.distributed import ReplicaMismatch
from adalora_core.errors import ConfigError
from adalora_core.trainer import TrainResult

# Rendezvous and collective timeout: a rank that never arrives (or dies without closing its
# connections) fails the job after this long instead of hanging it.
GROUP_TIMEOUT = timedelta(minutes=10)
CHILD_EXIT_GRACE_S = 30.0
REPORT_FILE = "rank-{rank}.json"


def assert_same_allocation(histories: list[list[dict[str, Any]]]) -> None:
    """Every rank's rank history (ranks per module at every masking step) must be rank 0's."""
    reference = histories[0]
    for rank, history in enumerate(histories[1:], start=1):
        for ours, theirs in zip(reference, history, strict=False):
            if ours != theirs:
                raise ReplicaMismatch(
                    f"rank {rank} allocated differently from rank 0 at update {theirs.get('step')}"
                )
        if len(history) != len(reference):
            raise ReplicaMismatch(
                f"rank {rank} recorded {len(history)} masking steps, rank 0 {len(reference)}"
            )


def rank_device(rank: int, device: str) -> str:
    """Rank r trains on GPU r when the job runs on GPUs, on the CPU otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{rank}" if device.startswith("cuda") else "cpu"


def check_devices(devices: int, device: str) -> None:
    if devices < 1:
        raise ConfigError("resources.devices", f"must be >= 1, got {devices}")
    if rank_device(0, device).startswith("cuda"):
        found = torch.cuda.device_count()
        if devices > found:
            raise ConfigError(
                "resources.devices", f"{devices} GPUs were requested; this machine has {found}"
            )


@dataclass(frozen=True)
class _ChildSpec:
    train_kwargs: dict[str, Any]
    world_size: int
    backend: str
    init_method: str
    device: str
    threads: int
    report_dir: str
    parent_pid: int


def train_data_parallel(devices: int, *, callbacks: Any = None, **train_kwargs: Any) -> TrainResult:
    """``adalora_core.trainer.train`` on ``devices`` processes; returns rank 0's TrainResult.

    ``train_kwargs`` are ``train``'s arguments; a custom ``loss_fn`` or ``adapt`` is not
    supported across processes (they would have to be pickled into the children)."""
    device = str(train_kwargs.pop("device", "auto"))
    check_devices(devices, device)
    if devices == 1:
        return trainer.train(callbacks=callbacks, device=device, **train_kwargs)
    for name in ("loss_fn", "adapt"):
        if train_kwargs.get(name) is not None:
            raise ConfigError(name, "is not supported in a multi-process run")
    backend = "nccl" if rank_device(0, device).startswith("cuda") else "gloo"
    threads = max(1, (os.cpu_count() or 1) // devices)
    with tempfile.TemporaryDirectory(prefix="adalora-ddp-") as tmp_name:
        tmp = Path(tmp_name)
        spec = _ChildSpec(
            train_kwargs={**train_kwargs, "output_dir": tmp / "unused-output"},
            world_size=devices,
            backend=backend,
            init_method=f"file://{tmp / 'rendezvous'}",
            device=device,
            threads=threads,
            report_dir=str(tmp),
            parent_pid=os.getpid(),
        )
        spec_path = tmp / "spec.pickle"
        spec_path.write_bytes(pickle.dumps(spec))
        children = [_start_child(spec_path, rank, tmp) for rank in range(1, devices)]
        previous_threads = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            _select_gpu(backend, 0)
            dist.init_process_group(
                backend,
                init_method=spec.init_method,
                rank=0,
                world_size=devices,
                timeout=GROUP_TIMEOUT,
            )
            try:
                result = trainer.train(
                    callbacks=callbacks, device=rank_device(0, device), **train_kwargs
                )
            finally:
                dist.destroy_process_group()
            _wait_for(children, tmp)
        finally:
            torch.set_num_threads(previous_threads)
            _stop(children)
        reports = [result.history] + [
            json.loads((tmp / REPORT_FILE.format(rank=rank)).read_text())["history"]
            for rank in range(1, devices)
        ]
        assert_same_allocation(reports)
        return result


def _select_gpu(backend: str, rank: int) -> None:
    """NCCL binds each rank's communicator to the current device: make it GPU ``rank``."""
    if backend == "nccl":
        torch.cuda.set_device(rank)


def _start_child(spec_path: Path, rank: int, tmp: Path) -> subprocess.Popen[bytes]:
    log = (tmp / f"rank-{rank}.log").open("wb")
    command = [sys.executable, "-m", "adalora_core.launcher", str(spec_path), str(rank)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _wait_for(children: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    """Every child must have finished: exited cleanly, or at least written its report (which
    it does only after training returned and it left the group)."""
    for rank, child in enumerate(children, start=1):
        try:
            code = child.wait(timeout=CHILD_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            code = None
        reported = (tmp / REPORT_FILE.format(rank=rank)).is_file()
        if code != 0 and not reported:
            tail = (tmp / f"rank-{rank}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"training rank {rank} failed (exit {code}):\n{tail}")


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _exit_with_parent(parent_pid: int) -> None:
    """A child whose rank 0 died (the worker was killed) must not train on alone."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="adalora-parent-watch").start()


def _child_main(spec_path: str, rank: int) -> None:
    spec: _ChildSpec = pickle.loads(Path(spec_path).read_bytes())
    _exit_with_parent(spec.parent_pid)
    torch.set_num_threads(spec.threads)
    _select_gpu(spec.backend, rank)
    dist.init_process_group(
        spec.backend,
        init_method=spec.init_method,
        rank=rank,
        world_size=spec.world_size,
        timeout=GROUP_TIMEOUT,
    )
    try:
        result = trainer.train(
            callbacks=None, device=rank_device(rank, spec.device), **spec.train_kwargs
        )
    finally:
        dist.destroy_process_group()
    report = Path(spec.report_dir) / REPORT_FILE.format(rank=rank)
    report.write_text(json.dumps({"history": result.history, "cancelled": result.cancelled}))


if __name__ == "__main__":
    _child_main(sys.argv[1], int(sys.argv[2]))
    # The work is done and reported: leave without interpreter teardown, where the collective
    # library's threads were seen to abort the process ("terminate called without an active
    # exception") after a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
