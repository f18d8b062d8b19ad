"""Cross-check with the trainer: a trained bundle served by the engine equals the merged export."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from adalora_core.config import AdaLoraConfig
from adalora_core.formats.bundle import read_adapter, zip_bundle
from adalora_core.formats.merged import save_merged
from adalora_core.run_plan import plan_run
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.sources import AdapterBlob
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import train
from adalora_core.training_config import TrainingConfig
from tests.serving.tiny_serving import WORDS, MemorySource, make_model, make_tokenizer


def test_engine_matches_merged_export_of_a_trained_adapter(tmp_path: Path) -> None:
    base_dir = tmp_path / "tiny-base"
    make_model("bert").save_pretrained(base_dir)
    make_tokenizer(with_cls=True).save_pretrained(base_dir)
    rng = random.Random(0)
    rows = [
        {"text": " ".join(rng.choices(WORDS, k=rng.randint(2, 8))), "label": rng.choice("ab")}
        for _ in range(32)
    ]
    task = TaskSpec(
        kind="classification", text_column="text", label_column="label", labels=["a", "b"]
    )
    result = train(
        base_model=base_dir,
        task=task,
        train_rows=rows,
        eval_rows=None,
        plan=plan_run(
            len(rows),
            TrainingConfig(
                epochs=None, max_steps=8, batch_size=8, learning_rate=5e-3, max_length=32
            ),
            AdaLoraConfig(init_r=4, target_r=2, t_init=2, t_final=2, delta_t=1),
        ),
        output_dir=tmp_path / "out",
        device="cpu",
    )
    assert result.adapter_dir is not None
    weights = read_adapter(result.adapter_dir)
    assert weights.total_rank > 0

    source = MemorySource()
    data = zip_bundle(result.adapter_dir)
    assert isinstance(data, bytes)
    source.blobs["trained"] = AdapterBlob(data, hashlib.sha256(data).hexdigest())
    engine = InferenceEngine(source, base_paths={weights.meta.base_model: str(base_dir)})
    texts = [" ".join(rng.choices(WORDS, k=n)) for n in (3, 7, 1)]
    mixed = engine.run(
        [
            engine.prepare(None, texts[:1], base_model=weights.meta.base_model),
            engine.prepare("trained", texts),
        ]
    )[1]

    merged_dir = save_merged(base_dir, result.adapter_dir, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    tokenizer = make_tokenizer(with_cls=True)
    for text, row in zip(texts, mixed, strict=True):
        with torch.no_grad():
            logits = merged(**tokenizer(text, return_tensors="pt")).logits[0]
        want = torch.softmax(logits, -1)
        got = torch.tensor([row["scores"]["a"], row["scores"]["b"]])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
