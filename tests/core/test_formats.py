"""Bundle, PEFT, LoRA-export and merged formats give the outputs of the adapter they came from.

The adapter under test has one module pruned to rank 0 and one to rank 1, so every format
handles a rank-0 module explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import peft  # a test dependency: the cross-format checks load our files with PEFT itself
import pytest
import torch
from tiny_trainer_model import save_tiny_bert, save_tiny_gpt2

from adalora_core.adalora_model import AdaLoraModel, inject_adalora
from adalora_core.config import AdaLoraConfig
from adalora_core.formats.bundle import (
    META_FILE,
    AdapterMeta,
    BundleError,
    read_adapter,
    zip_bundle,
)
from adalora_core.formats.lora import export_lora
from adalora_core.formats.merged import save_merged
from adalora_core.formats.peft import apply_adapter, save_adapter
from adalora_core.formats.peft_import import ArchiveLimits, import_peft_adapter, read_peft_dir
from adalora_core.hf_loading import head_modules, load_model, load_tokenizer
from adalora_core.tasks import TaskSpec

SEQ_TASK = TaskSpec("classification", "text", label_column="label", labels=("neg", "pos"))
LM_TASK = TaskSpec("causal-lm", "text")
CONFIG = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8.0)
ZERO = "bert.encoder.layer.0.attention.self.query"
ONE = "bert.encoder.layer.1.attention.self.value"
ATOL = 1e-5


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), dropout=0.0)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def _trained_like(base: Path, task: TaskSpec, prune: dict[str, int]) -> AdaLoraModel:
    """An AdaLoraModel with random nonzero triplets and head, pruned as `prune` says."""
    model = load_model(base, task, load_tokenizer(base))
    adapted = inject_adalora(
        model, CONFIG, schedule=CONFIG.schedule(10), head_modules=head_modules(task, model)
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in adapted.adapter_parameters() + adapted.head_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    state = adapted.allocator_state()
    keep = state["keep"].view(len(adapted.adapted), CONFIG.init_r)
    names = list(adapted.adapted)
    for path, rank in prune.items():
        keep[names.index(path)] = torch.arange(CONFIG.init_r) >= CONFIG.init_r - rank
    adapted.load_allocator_state(state)
    with torch.no_grad():
        for path, layer in adapted.adapted.items():
            layer.lora_E.mul_(keep[names.index(path)].unsqueeze(-1).float())
    return adapted.eval()


def _meta(task: TaskSpec, adapted: AdaLoraModel, base: Path) -> AdapterMeta:
    ranks = adapted.ranks()
    return AdapterMeta(
        task=task.to_json(),
        base_model=str(base),
        init_r=CONFIG.init_r,
        target_r=CONFIG.target_r,
        lora_alpha=CONFIG.lora_alpha,
        scaling=CONFIG.lora_alpha / CONFIG.init_r,
        labels=list(task.labels) if task.labels else None,
        modules=[{"name": n, "layer": 0, "kind": "x", "rank": r} for n, r in ranks.items()],
    )


def _inputs(vocab: int, with_pad: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(5, vocab, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    if with_pad:
        mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def seq_bundle(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    adapted = _trained_like(bert_dir, SEQ_TASK, {ZERO: 0, ONE: 1})
    out = save_adapter(
        adapted, tmp_path_factory.mktemp("bundle") / "adapter", _meta(SEQ_TASK, adapted, bert_dir)
    )
    with torch.no_grad():
        expected = adapted(**_inputs(28)).logits
    return out, expected


def test_bundle_holds_pruned_triplets_with_peft_keys(seq_bundle) -> None:
    out, _ = seq_bundle
    bundle = read_adapter(out)
    assert bundle.modules[ZERO].rank == 0
    assert bundle.modules[ZERO].lora_A.shape == (0, 32)
    assert bundle.modules[ZERO].lora_B.shape == (32, 0)
    assert bundle.modules[ONE].rank == 1
    assert bundle.modules[ONE].lora_E.shape == (1, 1)
    config = bundle.peft_config
    assert config["peft_type"] == "ADALORA" and config["task_type"] == "SEQ_CLS"
    assert config["rank_pattern"][f"{ZERO}.lora_E"] == [False] * 4
    assert config["rank_pattern"][f"{ONE}.lora_E"] == [False, False, False, True]
    assert sorted(config["modules_to_save"]) == ["bert.pooler", "classifier"]
    assert torch.equal(bundle.modules[ZERO].delta_weight(), torch.zeros(32, 32)), (
        "a rank-0 module changes nothing"
    )


def test_peft_loads_our_bundle_with_the_same_outputs(seq_bundle, bert_dir: Path) -> None:
    out, expected = seq_bundle
    base = load_model(bert_dir, SEQ_TASK, load_tokenizer(bert_dir))
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        got = loaded(**_inputs(28)).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    zero = loaded.base_model.model.get_submodule(ZERO)
    assert zero.lora_A["default"].shape[0] == 0


def test_apply_adapter_reloads_unmerged(seq_bundle, bert_dir: Path) -> None:
    out, expected = seq_bundle
    base = load_model(bert_dir, SEQ_TASK, load_tokenizer(bert_dir))
    model = apply_adapter(base, read_adapter(zip_bundle(out)))
    with torch.no_grad():
        got = model(**_inputs(28)).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_lora_export_loads_in_peft_lora(seq_bundle, bert_dir: Path, tmp_path: Path) -> None:
    out, expected = seq_bundle
    exported = export_lora(out, tmp_path / "lora")
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert ZERO not in config["target_modules"]  # rank 0: nothing to add
    assert config["rank_pattern"][ONE] == 1 and config["alpha_pattern"][ONE] == 1
    base = load_model(bert_dir, SEQ_TASK, load_tokenizer(bert_dir))
    loaded = peft.PeftModel.from_pretrained(base, str(exported)).eval()
    assert type(loaded.base_model).__name__ == "LoraModel"
    with torch.no_grad():
        got = loaded(**_inputs(28)).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_merged_model_loads_without_adalora_core(
    seq_bundle, bert_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    out, expected = seq_bundle
    merged_dir = save_merged(bert_dir, out, tmp_path / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert (merged_dir / "tokenizer.json").is_file()
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        got = model(**_inputs(28)).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_conv1d_model_merges_and_reloads(gpt2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    adapted = _trained_like(gpt2_dir, LM_TASK, {"transformer.h.0.attn.c_attn": 0})
    with torch.no_grad():
        expected = adapted(**_inputs(25, with_pad=False)).logits
    out = save_adapter(adapted, tmp_path / "adapter", _meta(LM_TASK, adapted, gpt2_dir))
    bundle = read_adapter(out)
    assert bundle.peft_config["fan_in_fan_out"] is True
    assert bundle.peft_config["task_type"] == "CAUSAL_LM" and bundle.head == {}

    merged = AutoModelForCausalLM.from_pretrained(save_merged(gpt2_dir, out, tmp_path / "m"))
    with torch.no_grad():
        got = merged.eval()(**_inputs(25, with_pad=False)).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    base = load_model(gpt2_dir, LM_TASK, load_tokenizer(gpt2_dir))
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        got = loaded(**_inputs(25, with_pad=False)).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_import_of_an_adapter_saved_by_peft(bert_dir: Path, tmp_path: Path) -> None:
    base = load_model(bert_dir, SEQ_TASK, load_tokenizer(bert_dir))
    config = peft.AdaLoraConfig(
        init_r=4,
        target_r=1,
        tinit=1,
        tfinal=1,
        deltaT=1,
        total_step=6,
        lora_alpha=8,
        target_modules=["query", "value"],
        task_type="SEQ_CLS",
    )
    model = peft.get_peft_model(base, config)
    inputs = _inputs(28)
    labels = torch.tensor([0, 1, 1])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(1, 7):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "peft")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits

    imported = import_peft_adapter(
        read_peft_dir(tmp_path / "peft", ArchiveLimits()),
        base_model="tiny-bert",
        model_dir=str(bert_dir),
        labels=["no", "yes"],
        max_rank=8,
    ).weights
    ranks = {m["name"]: m["rank"] for m in imported.meta.modules}
    assert sum(ranks.values()) == 4  # target_r x 4 modules
    assert imported.meta.task["kind"] == "classification"
    fresh = load_model(bert_dir, SEQ_TASK, load_tokenizer(bert_dir))
    with torch.no_grad():
        got = apply_adapter(fresh, imported)(**inputs).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_zip_round_trip_is_deterministic(seq_bundle, tmp_path: Path) -> None:
    out, _ = seq_bundle
    data = zip_bundle(out)
    assert data == zip_bundle(out)
    from_bytes, from_dir = read_adapter(data), read_adapter(out)
    for path, delta in from_dir.modules.items():
        assert torch.equal(delta.lora_A, from_bytes.modules[path].lora_A)
    written = zip_bundle(out, tmp_path / "a.zip")
    assert read_adapter(written).meta == from_dir.meta


def test_broken_bundles_are_rejected(seq_bundle, tmp_path: Path) -> None:
    out, _ = seq_bundle
    with pytest.raises(BundleError, match="not a zip"):
        read_adapter(b"definitely not a zip")
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in out.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    meta = json.loads((broken / META_FILE).read_text())
    meta["modules"][0]["rank"] += 1
    (broken / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="rank"):
        read_adapter(broken)
    (broken / META_FILE).unlink()
    with pytest.raises(BundleError, match="lacks"):
        read_adapter(broken)
