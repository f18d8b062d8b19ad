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


# The same prompts with each other's answers: the better the run learns ROWS, the worse it does
# on these, so the validation loss has its lowest point before the last update.
CROSSED = [{**row, "answer": ROWS[(i + 1) % 4]["answer"]} for i, row in enumerate(ROWS)]


class Evals(TrainCallbacks):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.losses[step] = metrics["eval_loss"]


def crossed_run(gpt2_dir: Path, out: Path, **training: object) -> tuple[object, Evals]:
    evals = Evals()
    result = train(
        base_model=gpt2_dir,
        task=TASK,
        train_rows=ROWS,
        eval_rows=CROSSED,
        plan=plan_run(
            len(ROWS),
            TrainingConfig(
                epochs=None,
                max_steps=40,
                batch_size=4,
                learning_rate=3e-2,
                eval_every=4,
                **training,
            ),
            AdaLoraConfig(init_r=4, target_r=4, lora_alpha=16.0),
        ),  # fmt: skip
        output_dir=out / "adapter",
        callbacks=evals,
    )
    return result, evals


def eval_loss(gpt2_dir: Path, bundle: Path) -> float:
    """The validation loss of a published bundle, loaded afresh."""
    from adalora_core.formats.bundle import read_adapter
    from adalora_core.formats.peft import apply_adapter
    from adalora_core.training.evaluation import EvalAccumulator

    tokenizer = load_tokenizer(gpt2_dir)
    model = apply_adapter(load_model(gpt2_dir, TASK, tokenizer), read_adapter(bundle)).eval()
    from adalora_core.encoding import make_collator

    batch = make_collator(TASK, tokenizer)(encode_rows(TASK, CROSSED, tokenizer, 512))
    accumulator = EvalAccumulator(TASK)
    with torch.no_grad():
        accumulator.add(model(**batch), batch)
    return accumulator.result()["eval_loss"]


def test_the_published_adapter_is_the_best_evaluation_and_the_early_stop_ends_the_run(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    kept, evals = crossed_run(gpt2_dir, tmp_path / "kept", keep_best=True)
    best_step = min(evals.losses, key=evals.losses.__getitem__)
    assert kept.steps == 40 and best_step < 40 and not kept.stopped_early
    assert kept.best_step == best_step
    assert eval_loss(gpt2_dir, kept.adapter_dir) == pytest.approx(evals.losses[best_step], rel=1e-4)
    assert read_metrics(kept.adapter_dir)["eval_loss"] == pytest.approx(evals.losses[best_step])

    last, last_evals = crossed_run(gpt2_dir, tmp_path / "last")
    assert last.best_step is None and last_evals.losses == evals.losses  # the same run
    assert eval_loss(gpt2_dir, last.adapter_dir) == pytest.approx(evals.losses[40], rel=1e-4)

    stopped, stopped_evals = crossed_run(
        gpt2_dir, tmp_path / "stopped", keep_best=True, early_stop_patience=2
    )
    # The same run to the point where two evaluations in a row (every update ends an epoch of
    # 4 rows, and so evaluates) have not beaten the lowest loss so far.
    running, since, expected = None, 0, None
    for step in sorted(evals.losses):
        if running is None or evals.losses[step] < evals.losses[running]:
            running, since = step, 0
        else:
            since += 1
        if since == 2:
            expected = step
            break
    assert expected is not None and expected < 40  # the test's data must make it stop
    assert stopped.stopped_early and stopped.steps == expected
    assert stopped.best_step == running and max(stopped_evals.losses) == expected
    assert eval_loss(gpt2_dir, stopped.adapter_dir) == pytest.approx(
        evals.losses[running], rel=1e-4
    )


def read_metrics(bundle: Path) -> dict[str, float]:
    from adalora_core.formats.bundle import read_adapter

    return dict(read_adapter(bundle).meta.metrics)


def test_keeping_the_best_needs_validation_rows(gpt2_dir: Path, tmp_path: Path) -> None:
    from adalora_core.errors import ConfigError

    for field_name, training in (
        ("keep_best", {"keep_best": True}),
        ("early_stop_patience", {"early_stop_patience": 1}),
    ):
        with pytest.raises(ConfigError) as raised:
            train(
                base_model=gpt2_dir,
                task=TASK,
                train_rows=ROWS,
                eval_rows=None,
                plan=plan_run(
                    len(ROWS),
                    TrainingConfig(epochs=None, max_steps=2, batch_size=4, **training),
                    AdaLoraConfig(init_r=4, target_r=4),
                ),
                output_dir=tmp_path / field_name,
            )
        assert raised.value.field == f"training.{field_name}"


# Rows of three lengths, so a token count that mixes rows up shows.
SIZED = [
    {"prompt": " ".join(POSITIVE[: 1 + i % 3]), "answer": " ".join(FILLER[: 1 + i % 2])}
    for i in range(6)
]


class TokensFed(TrainCallbacks):
    """The oracle: counts the tokens of every micro-batch the model is fed (through loss_fn),
    and stops the run after ``stop_after`` updates."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.fed = 0
        self.updates = 0
        self.stop_after = stop_after

    def loss(self, outputs, batch) -> torch.Tensor:
        self.fed += int(batch["attention_mask"].sum())
        return outputs.loss

    def on_progress(self, event) -> None:
        self.updates += 1

    def should_stop(self) -> bool:
        return self.stop_after is not None and self.updates >= self.stop_after


def sized_run(gpt2_dir: Path, out: Path, fed: TokensFed, checkpoints: Path | None = None):
    # 6 rows in batches of 4: 2 updates a pass (the second of 2 rows); 5 updates are 2 passes
    # and the first 4 rows of the third pass's order.
    return train(
        base_model=gpt2_dir,
        task=TASK,
        train_rows=SIZED,
        eval_rows=None,
        plan=plan_run(
            len(SIZED),
            TrainingConfig(epochs=None, max_steps=5, batch_size=4, checkpoint_every=2),
            AdaLoraConfig(init_r=4, target_r=4, lora_alpha=16.0),
        ),
        output_dir=out,
        callbacks=fed,
        checkpoint_dir=checkpoints,
        loss_fn=fed.loss,
    )


def test_trained_tokens_are_the_tokens_the_updates_took_resumed_or_not(
    gpt2_dir: Path, tmp_path: Path
) -> None:
    whole = TokensFed()
    result = sized_run(gpt2_dir, tmp_path / "whole", whole)
    assert result.steps == 5 and result.trained_tokens == whole.fed
    lengths = {len(r["input_ids"]) for r in encode_rows(TASK, SIZED, load_tokenizer(gpt2_dir), 32)}
    assert len(lengths) > 1  # rows differ, so the count depends on which rows were taken

    cut = TokensFed(stop_after=3)  # checkpoint at update 2, cancelled after update 3
    assert sized_run(gpt2_dir, tmp_path / "cut", cut, tmp_path / "ckpt").cancelled
    resumed = sized_run(gpt2_dir, tmp_path / "resumed", TokensFed(), tmp_path / "ckpt")
    assert resumed.steps == 5 and resumed.trained_tokens == whole.fed
