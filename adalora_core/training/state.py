"""The state of a run in progress, and its checkpoint save and resume.

Everything a resumed run needs to end bit for bit where an uninterrupted one does (on CPU):
the trainable weights, optimizer and scheduler, the rank allocator, every RNG, the fp16 loss
scale, the data position and the last evaluation. The file format is
``adalora_core.checkpoint``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from adalora_core import checkpoint as ckpt
from adalora_core.errors import ConfigError
from adalora_core.precision import MixedPrecision
from adalora_core.training.adaptation import Adaptation, rank_history


@dataclass
class RunState:
    adapted: Adaptation
    trainable: list[tuple[str, nn.Parameter]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    mixed: MixedPrecision
    # ``batch`` micro-batches of ``epoch`` done, ``step`` updates made.
    position: ckpt.DataPosition = field(default_factory=lambda: ckpt.DataPosition(0, 0, 0))
    last_eval: dict[str, float] = field(default_factory=dict)

    def save(self, checkpoint_dir: Path) -> Path:
        """Write a checkpoint of this moment; its directory."""
        allocator_state = getattr(self.adapted, "allocator_state", None)
        position = self.position
        state = ckpt.TrainingState(
            position=ckpt.DataPosition(position.epoch, position.batch, position.step),
            trainable=dict(self.trainable),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            allocator=allocator_state() if allocator_state else None,
            history=rank_history(self.adapted),
            rng=ckpt.capture_rng(),
            last_eval=dict(self.last_eval),
            scaler=self.mixed.state_dict(),
        )
        return ckpt.save_checkpoint(checkpoint_dir, state)

    @torch.no_grad()
    def resume(self, checkpoint_dir: Path | None) -> None:
        """Continue from the newest checkpoint in ``checkpoint_dir``, if there is one."""
        path = ckpt.latest_checkpoint(checkpoint_dir)
        if path is None:
            return
        state = ckpt.load_checkpoint(path)
        self._load_weights(path, state.trainable)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        load_allocator_state = getattr(self.adapted, "load_allocator_state", None)
        if load_allocator_state is not None and state.allocator is not None:
            load_allocator_state(state.allocator)
        ckpt.restore_rng(state.rng)
        self.mixed.load_state_dict(state.scaler)
        self.position = state.position
        self.last_eval = dict(state.last_eval)

    def _load_weights(self, path: Path, saved: dict[str, torch.Tensor]) -> None:
        params = dict(self.trainable)
        if set(saved) != set(params):
            raise ConfigError(
                "checkpoint", f"{path} was written for a different set of trainable weights"
            )
        for name, value in saved.items():
            if value.shape != params[name].shape:
                raise ConfigError("checkpoint", f"{path}: {name} has shape {tuple(value.shape)}")
            params[name].copy_(value)
