"""Full training state on disk, so a killed run resumes to the same adapter, bit for bit.

A checkpoint is a directory ``step-<n>`` holding one ``state.pt``: the trainable weights
(adapter triplets and head), optimizer and scheduler state, the rank allocator's state, every
RNG the loop draws from, the data position and the budget history. It is written to a
temporary directory first and renamed, so a reader never sees half a checkpoint. The trainer
then writes the adapter of that moment into its ``adapter/`` directory (an ordinary bundle),
so a caller can keep, serve or continue from the checkpoint without the training state.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adalora_core.atomic import atomic_directory

STATE_FILE = "state.pt"
ADAPTER_DIR = "adapter"  # the bundle of the checkpoint's step, beside the state
_PREFIX = "step-"


@dataclass
class DataPosition:
    """Where the loop stands: ``batch`` micro-batches of ``epoch`` done, ``step`` updates made."""

    epoch: int
    batch: int
    step: int


@dataclass
class TrainingState:
    position: DataPosition
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    allocator: Any
    history: list[dict[str, Any]]
    rng: dict[str, Any]
    last_eval: dict[str, float]
    scaler: dict[str, Any] | None = None  # the fp16 loss scale, when the run uses one


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what applies here: a checkpoint from a host with more (or no) GPUs resumes on
    this one with the GPU generators it has. Bitwise-equal resume holds on CPU; on a GPU it is
    approximate (index_add_ and friends are not deterministic) unless deterministic mode is on."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, generator_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator_state, index)


def save_checkpoint(checkpoint_dir: Path, state: TrainingState, keep: int = 2) -> Path:
    """Write ``step-<n>`` atomically, then drop all but the newest ``keep`` checkpoints."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{_PREFIX}{state.position.step:08d}"
    with atomic_directory(final) as tmp:
        payload = {
            "position": vars(state.position),
            "trainable": {k: v.detach().cpu().clone() for k, v in state.trainable.items()},
            "optimizer": state.optimizer,
            "scheduler": state.scheduler,
            "allocator": state.allocator,
            "history": state.history,
            "rng": state.rng,
            "last_eval": state.last_eval,
            "scaler": state.scaler,
        }
        torch.save(payload, tmp / STATE_FILE)
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [
        p
        for p in checkpoint_dir.iterdir()
        if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    if checkpoint_dir is None:
        return None
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> TrainingState:
    payload = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    return TrainingState(
        position=DataPosition(**payload["position"]),
        trainable=payload["trainable"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        allocator=payload["allocator"],
        history=payload["history"],
        rng=payload["rng"],
        last_eval=payload["last_eval"],
        scaler=payload.get("scaler"),
    )
