"""What a generative run reports beside its loss: mean token accuracy while training and on
validation rows, and the exact match of the adapter's greedy answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_trainer_model import FILLER, NEGATIVE, POSITIVE, save_tiny_gpt2

from adalora_core.config import AdaLoraConfig
from adalora_core.encoding import IGNORE_INDEX, encode_rows
from adalora_core.hf_loading import load_model, load_tokenizer
from adalora_core.precision import MixedPrecision
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import TrainCallbacks, train
from adalora_core.training.exact_match import answer_split, exact_match
from adalora_core.training.token_accuracy import token_hits
from adalora_core.training_config import TrainingConfig

TASK = TaskSpec("causal-lm", "prompt", target_column="answer")
# Four prompts, each with its own two-word answer: a tiny model can learn them by heart.
ROWS = [
    {"prompt": f"{POSITIVE[i]} {NEGATIVE[i]}", "answer": f"{FILLER[i]} {FILLER[i + 4]}"}
    for i in range(4)
]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def test_token_hits_count_only_learned_tokens_and_shift_for_a_causal_lm() -> None:
    logits = torch.full((1, 4, 5), -1.0)
    for position, token in enumerate([3, 1, 4, 0]):
        logits[0, position, token] = 1.0  # the model's most likely token at each position
    labels = torch.tensor([[IGNORE_INDEX, 3, 1, 0]])
    # causal: position t predicts label t+1: 3 = 3, 1 = 1, 4 != 0; label 0 is not counted
    right, counted = token_hits(logits, labels, causal=True)
    assert (int(right), int(counted)) == (2, 3)
    # seq2seq: position t is label t: 3 = 3, (1 not counted), 4 = 4, 0 != 4
    right, counted = token_hits(logits, torch.tensor([[3, IGNORE_INDEX, 4, 4]]), causal=False)
    assert (int(right), int(counted)) == (2, 3)


def test_the_reference_is_the_last_learned_run(gpt2_dir: Path) -> None:
    tokenizer = load_tokenizer(gpt2_dir)
    (row,) = encode_rows(TASK, ROWS[:1], tokenizer, 32)
    prompt, reference = answer_split(row, causal=True)
    assert tokenizer.decode(prompt) == ROWS[0]["prompt"]
    assert tokenizer.decode(reference, skip_special_tokens=True) == ROWS[0]["answer"]
    assert answer_split({"input_ids": [1, 2], "labels": [IGNORE_INDEX] * 2}, True) is None


class Progress(TrainCallbacks):
    def __init__(self) -> None:
        self.accuracies: list[float | None] = []

    def on_progress(self, event) -> None:
        self.accuracies.append(event.token_accuracy)


def test_a_run_that_learns_its_answers_reports_it(gpt2_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(gpt2_dir)
    untrained = load_model(gpt2_dir, TASK, tokenizer).eval()
    data = encode_rows(TASK, ROWS, tokenizer, 32)
    before, scored = exact_match(
        untrained, tokenizer, data, True, 4, MixedPrecision("fp32", torch.device("cpu")),
        torch.device("cpu"),
    )  # fmt: skip
    assert (before, scored) == (0.0, 4)  # the random model knows none of them
    progress = Progress()
    result = train(
        base_model=gpt2_dir,
        task=TASK,
        train_rows=ROWS,
        eval_rows=ROWS,
        plan=plan_run(
            len(ROWS),
            TrainingConfig(epochs=None, max_steps=60, batch_size=4, learning_rate=3e-2),
            AdaLoraConfig(init_r=4, target_r=4, lora_alpha=16.0),
        ),
        output_dir=tmp_path / "a",
        callbacks=progress,
    )
    assert result.metrics["exact_match"] == 1.0 and result.metrics["exact_match_rows"] == 4
    assert result.metrics["mean_token_accuracy"] == 1.0
    assert len(progress.accuracies) == 60 and all(a is not None for a in progress.accuracies)
    assert progress.accuracies[0] < 0.5 and progress.accuracies[-1] == 1.0
