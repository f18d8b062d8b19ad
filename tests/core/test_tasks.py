"""Task kinds: validation, label mapping, collation, loss masking, and one run per kind."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_trainer_model import save_tiny_bert, save_tiny_gpt2, save_tiny_t5, sentiment_rows

from adalora_core.config import AdaLoraConfig
from adalora_core.encoding import IGNORE_INDEX, encode_rows, make_collator
from adalora_core.errors import ConfigError
from adalora_core.formats.bundle import read_adapter
from adalora_core.hf_loading import head_modules, load_model, load_tokenizer
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec, label_index
from adalora_core.trainer import train
from adalora_core.training.evaluation import EvalAccumulator
from adalora_core.training_config import TrainingConfig

CLS = TaskSpec("classification", "a", text_pair_column="b", label_column="y", labels=("x", "z"))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), dropout=0.0)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (TaskSpec("ner", "t"), "task.kind"),
        (TaskSpec("classification", "t", label_column="y", labels=("a",)), "task.labels"),
        (TaskSpec("classification", "t", label_column="y", labels=("a", "a")), "task.labels"),
        (TaskSpec("classification", "t", labels=("a", "b")), "task.label_column"),
        (TaskSpec("regression", "t", label_column="y", labels=("a", "b")), "task.labels"),
        (TaskSpec("seq2seq", "t"), "task.target_column"),
        (TaskSpec("causal-lm", "t", text_pair_column="u"), "task.text_pair_column"),
        (TaskSpec("classification", "", label_column="y", labels=("a", "b")), "task.text_column"),
    ],
)
def test_invalid_specs_name_their_field(spec: TaskSpec, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec.validate()
    assert info.value.field == field


def test_labels_by_name_or_index() -> None:
    assert label_index(CLS, "z", "w") == 1
    assert label_index(CLS, 0, "w") == 0
    assert label_index(CLS, np.int64(1), "w") == 1
    for bad in ("q", 2, True, 1.0):
        with pytest.raises(ConfigError) as info:
            label_index(CLS, bad, "rows[4].y")
        assert info.value.field == "rows[4].y"


def test_spec_json_round_trip_and_task_types() -> None:
    assert TaskSpec.from_json(CLS.to_json()) == CLS
    assert CLS.peft_task_type == "SEQ_CLS" and CLS.num_labels == 2
    assert TaskSpec("causal-lm", "t").peft_task_type == "CAUSAL_LM"
    assert TaskSpec("seq2seq", "t", target_column="u").peft_task_type == "SEQ_2_SEQ_LM"


def test_pair_classification_collates_padded_batches(bert_dir: Path) -> None:
    tokenizer = load_tokenizer(bert_dir)
    rows = [{"a": "good film", "b": "the plot", "y": "z"}, {"a": "bad", "b": "dull", "y": 0}]
    batch = make_collator(CLS, tokenizer)(encode_rows(CLS, rows, tokenizer, max_length=16))
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"].shape == (2, 7)  # [CLS] good film [SEP] the plot [SEP]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    truncated = encode_rows(CLS, rows, tokenizer, max_length=4)
    assert max(len(ex["input_ids"]) for ex in truncated) == 4


def test_missing_column_names_the_row(bert_dir: Path) -> None:
    tokenizer = load_tokenizer(bert_dir)
    rows = [{"a": "good", "b": "film", "y": "x"}, {"a": "bad", "y": "x"}]
    with pytest.raises(ConfigError) as info:
        encode_rows(CLS, rows, tokenizer, 16, split="eval_rows")
    assert info.value.field == "eval_rows[1].b"


def test_causal_lm_target_masks_the_prompt(gpt2_dir: Path) -> None:
    tokenizer = load_tokenizer(gpt2_dir)
    task = TaskSpec("causal-lm", "prompt", target_column="answer")
    rows = [{"prompt": "the movie was", "answer": "good"}, {"prompt": "a plot", "answer": "dull"}]
    batch = make_collator(task, tokenizer)(encode_rows(task, rows, tokenizer, 16))
    good, eos = tokenizer.convert_tokens_to_ids(["good", "<eos>"])
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 3 + [good, eos]
    assert batch["labels"][1].tolist()[:2] == [IGNORE_INDEX] * 2
    assert batch["labels"][1].tolist()[-1] == IGNORE_INDEX  # padding is ignored too
    whole = TaskSpec("causal-lm", "prompt")
    plain = encode_rows(whole, rows, tokenizer, 16)
    assert plain[0]["labels"] == plain[0]["input_ids"]


def test_lm_accumulator_weights_tokens_not_batches() -> None:
    task = TaskSpec("seq2seq", "t", target_column="u")
    acc = EvalAccumulator(task)
    logits = torch.zeros(1, 3, 4)  # uniform: every token costs log(4)
    acc.add(SimpleNamespace(logits=logits), {"labels": torch.tensor([[1, 2, IGNORE_INDEX]])})
    acc.add(SimpleNamespace(logits=logits), {"labels": torch.tensor([[1, 2, 3]])})
    result = acc.result()
    assert result["eval_loss"] == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert result["perplexity"] == pytest.approx(4.0)


def test_head_modules_per_kind(bert_dir: Path, gpt2_dir: Path) -> None:
    bert = load_model(bert_dir, CLS, load_tokenizer(bert_dir))
    assert head_modules(CLS, bert) == ("classifier", "bert.pooler")
    lm = TaskSpec("causal-lm", "t")
    assert head_modules(lm, load_model(gpt2_dir, lm, load_tokenizer(gpt2_dir))) == ()


def _run(base: Path, task: TaskSpec, rows: list[dict], out: Path, **adalora: object):
    return train(
        base_model=base,
        task=task,
        train_rows=rows,
        eval_rows=rows[:8],
        plan=plan_run(
            len(rows),
            TrainingConfig(epochs=None, max_steps=4, batch_size=8, max_length=16),
            AdaLoraConfig(init_r=3, target_r=2, lora_alpha=6.0, **adalora),
        ),
        output_dir=out,
    )


def test_regression_run(bert_dir: Path, tmp_path: Path) -> None:
    texts = [r["text"] for r in sentiment_rows(16)]
    rows = [{"text": text, "score": float(i % 5) / 4} for i, text in enumerate(texts)]
    task = TaskSpec("regression", "text", label_column="score")
    result = _run(bert_dir, task, rows, tmp_path / "a")
    assert {"mse", "pearson", "spearman", "eval_loss"} <= set(result.metrics)
    assert read_adapter(result.adapter_dir).head["classifier.weight"].shape == (1, 32)


def test_causal_lm_run(gpt2_dir: Path, tmp_path: Path) -> None:
    rows = [{"text": r["text"]} for r in sentiment_rows(16)]
    result = _run(gpt2_dir, TaskSpec("causal-lm", "text"), rows, tmp_path / "a")
    assert result.metrics["perplexity"] > 1
    bundle = read_adapter(result.adapter_dir)
    assert bundle.head == {} and bundle.peft_config["task_type"] == "CAUSAL_LM"


def test_seq2seq_run(tmp_path: Path) -> None:
    base = save_tiny_t5(tmp_path / "t5")
    rows = [
        {"src": r["text"], "tgt": r["label"] == "positive" and "good" or "bad"}
        for r in sentiment_rows(16)
    ]
    task = TaskSpec("seq2seq", "src", target_column="tgt")
    result = _run(base, task, rows, tmp_path / "a")
    assert result.metrics["perplexity"] > 1
    assert read_adapter(result.adapter_dir).peft_config["task_type"] == "SEQ_2_SEQ_LM"
