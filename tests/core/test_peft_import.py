"""Adapters PEFT produced in the test, imported and served by our engine: the outputs equal
PEFT's own (``PeftModel.from_pretrained`` on the same base) — classification logits (as the
engine's probabilities) within 1e-5, regression values within 1e-4, greedy generation token
for token — and the stored bundle gives PEFT back the uploaded weights.

Kinds: LoRA on all-MiniLM-L6-v2 with a trained head (classification and regression), with
``rank_pattern`` and ``alpha_pattern``, rsLoRA, weights as ``adapter_model.bin``, an AdaLoRA
adapter PEFT trained for a few steps, and LoRA on a tiny GPT-2 (Conv1D, ``fan_in_fan_out``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from adalora_core.formats.bundle import (
    AdapterMeta,
    AdapterWeights,
    ModuleDelta,
    read_adapter,
    write_bundle,
    zip_bundle,
)
from adalora_core.formats.peft_import import (
    ArchiveLimits,
    ImportedAdapter,
    import_peft_adapter,
    read_peft_zip,
)
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.sources import AdapterBlob, AdapterRef
from tests.core.tiny_trainer_model import save_tiny_gpt2
from tests.peft_adapters import (
    LABELS,
    MINILM,
    MINILM_DIR,
    TEXTS,
    minilm_base,
    peft_logits,
    perturb,
    train_peft_adalora,
    zip_dir,
)

LIMITS = ArchiveLimits()


class Served:
    """One engine on the real MiniLM (and the tiny GPT-2), fed imported bundles by id."""

    def __init__(self, base_paths: dict[str, str]) -> None:
        self.blobs: dict[str, AdapterBlob] = {}
        self.engine = InferenceEngine(self, base_paths=base_paths)

    def read(self, ref: AdapterRef) -> AdapterBlob:
        return self.blobs[ref.adapter_id]

    def add(self, adapter_id: str, imported: ImportedAdapter, tmp: Path) -> Path:
        bundle = imported.write(tmp / adapter_id)
        data = zip_bundle(bundle)
        assert isinstance(data, bytes)
        self.blobs[adapter_id] = AdapterBlob(data, hashlib.sha256(data).hexdigest())
        return bundle


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def served(gpt2_dir: Path) -> Iterator[Served]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    served = Served({MINILM: MINILM_DIR, "tiny-gpt2": str(gpt2_dir)})
    yield served
    served.engine.close()
    torch.set_num_threads(threads)


def import_zip(directory: Path, **request: Any) -> ImportedAdapter:
    return import_peft_adapter(
        read_peft_zip(zip_dir(directory), LIMITS),
        base_model=request.pop("base_model", MINILM),
        model_dir=request.pop("model_dir", MINILM_DIR),
        max_rank=64,
        **request,
    )


LORA_KINDS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "lora_alpha": 16},
    "rank-and-alpha-pattern": {
        "r": 8,
        "lora_alpha": 16,
        "rank_pattern": {"layer.0.attention.self.query": 2, "value": 4},
        "alpha_pattern": {"layer.1.attention.self.query": 3},
    },
    "rslora": {"r": 16, "lora_alpha": 8, "use_rslora": True},
}


@pytest.mark.parametrize("kind", sorted(LORA_KINDS))
def test_lora_classification_equals_peft(kind: str, served: Served, tmp_path: Path) -> None:
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        target_modules=["query", "value", "output.dense"],
        **LORA_KINDS[kind],
    )
    model = peft.get_peft_model(minilm_base(3), config)
    perturb(model, seed=len(kind))
    model.save_pretrained(tmp_path / "peft")
    want = torch.softmax(peft_logits(tmp_path / "peft"), -1)

    imported = import_zip(tmp_path / "peft", labels=LABELS)
    assert imported.weights.meta.task["kind"] == "classification"
    served.add(kind, imported, tmp_path)
    rows = served.engine.infer(kind, TEXTS)
    got = torch.tensor([[row["scores"][label] for label in LABELS] for row in rows])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if kind == "rank-and-alpha-pattern":
        ranks = {m["name"]: m["rank"] for m in imported.weights.meta.modules}
        assert ranks["bert.encoder.layer.0.attention.self.query"] == 2
        assert ranks["bert.encoder.layer.3.attention.self.value"] == 4
        assert ranks["bert.encoder.layer.3.attention.self.query"] == 8


def test_regression_head_and_bin_weights_equal_peft(served: Served, tmp_path: Path) -> None:
    """A one-output head is served as regression (the task_type says SEQ_CLS); weights given as
    adapter_model.bin are read as tensors and written back as the same tensors."""
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query"])
    model = peft.get_peft_model(minilm_base(1), config)
    perturb(model, seed=3)
    model.save_pretrained(tmp_path / "peft", safe_serialization=False)
    assert (tmp_path / "peft" / "adapter_model.bin").is_file()
    want = peft_logits(tmp_path / "peft", 1)[:, 0]

    imported = import_zip(tmp_path / "peft")
    assert imported.weights.meta.task["kind"] == "regression"
    bundle = served.add("regression", imported, tmp_path)
    got = torch.tensor([row["value"] for row in served.engine.infer("regression", TEXTS)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    uploaded = torch.load(tmp_path / "peft" / "adapter_model.bin", weights_only=True)
    stored = load_file(bundle / "adapter_model.safetensors")
    assert stored.keys() == uploaded.keys()
    assert all(torch.equal(stored[k], uploaded[k]) for k in uploaded)


def test_adalora_trained_by_peft_equals_peft(served: Served, tmp_path: Path) -> None:
    train_peft_adalora(tmp_path / "peft", init_r=6, steps=8, lora_alpha=12)
    want = torch.softmax(peft_logits(tmp_path / "peft"), -1)

    imported = import_zip(tmp_path / "peft", labels=LABELS, task="classification")
    meta = imported.weights.meta
    assert meta.method == "peft-adalora"
    ranks = [m["rank"] for m in meta.modules]
    assert len(ranks) == 12 and sum(ranks) == 2 * 12 and max(ranks) <= 6  # PEFT's pruning
    assert meta.budget == {"initial": 72, "target": 24, "final": 24}
    served.add("adalora", imported, tmp_path)
    rows = served.engine.infer("adalora", TEXTS)
    got = torch.tensor([[row["scores"][label] for label in LABELS] for row in rows])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_lora_on_gpt2_conv1d_generates_as_peft(
    served: Served, gpt2_dir: Path, tmp_path: Path
) -> None:
    """GPT-2 keeps its projections in Conv1D (in × out): PEFT sets fan_in_fan_out for them."""
    base = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
    )
    model = peft.get_peft_model(copy.deepcopy(base), config)
    perturb(model, seed=5)
    model.save_pretrained(tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)

    imported = import_zip(tmp_path / "peft", base_model="tiny-gpt2", model_dir=str(gpt2_dir))
    assert imported.weights.meta.task["kind"] == "causal-lm"
    served.add("gpt2", imported, tmp_path)
    params = GenerationParams(max_new_tokens=12)
    for prompt in ["the movie was", "a very good plot and"]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = theirs.generate(
                input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=1
            )
            plain = base.generate(
                input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=1
            )
        want = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        prepared = served.engine.prepare("gpt2", [prompt], params)
        got = served.engine.generate(prepared)[0].wait().text
        assert got.split() == want.split() and len(want.split()) >= 3
        assert out[0].tolist() != plain[0].tolist()  # the adapter changes what is generated


def test_peft_reads_the_stored_bundle_back(tmp_path: Path) -> None:
    """The bundle we store (and give back as the `peft` download) is PEFT's own adapter: the
    uploaded weights, the uploaded config, plus adalora.json; PEFT loads it unchanged."""
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "key"])
    model = peft.get_peft_model(minilm_base(3), config)
    perturb(model, seed=11)
    model.save_pretrained(tmp_path / "peft")
    bundle = import_zip(tmp_path / "peft", labels=LABELS).write(tmp_path / "bundle")

    uploaded = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    stored = load_file(bundle / "adapter_model.safetensors")
    assert stored.keys() == uploaded.keys()
    assert all(torch.equal(stored[k], uploaded[k]) for k in uploaded)
    assert read_adapter(bundle).meta.labels == LABELS
    torch.testing.assert_close(peft_logits(bundle), peft_logits(tmp_path / "peft"))


def own_adalora_bundle(seed: int) -> AdapterWeights:
    """An adapter in our own AdaLoRA format on MiniLM (triplets with λ, pruned ranks, a head)."""
    generator = torch.Generator().manual_seed(seed)
    modules = {
        f"bert.encoder.layer.{layer}.attention.self.{kind}": ModuleDelta(
            lora_A=torch.randn(rank, 384, generator=generator) * 0.1,
            lora_B=torch.randn(384, rank, generator=generator) * 0.1,
            lora_E=torch.randn(rank, 1, generator=generator),
            scaling=2.0,
        )
        for layer, kind, rank in [(0, "query", 3), (2, "value", 1), (5, "key", 4)]
    }
    head = {
        "classifier.weight": torch.randn(2, 384, generator=generator),
        "classifier.bias": torch.randn(2, generator=generator),
    }
    meta = AdapterMeta(
        task={"kind": "classification"},
        base_model=MINILM,
        init_r=4,
        target_r=2,
        lora_alpha=8.0,
        scaling=2.0,
        labels=["no", "yes"],
        modules=[{"name": p, "rank": d.rank} for p, d in modules.items()],
    )
    return AdapterWeights(meta, {"peft_type": "ADALORA"}, modules, head)


def test_imported_adapters_in_a_mixed_batch_with_ours_and_the_base(
    served: Served, tmp_path: Path
) -> None:
    """One routed forward holds rows of two imported adapters (LoRA with rsLoRA, LoRA with a
    rank pattern), one of our own AdaLoRA adapters and the plain base: each imported row equals
    PEFT's, the others equal their own request alone."""
    imported = {}
    for seed, options in enumerate([{"use_rslora": True}, {"rank_pattern": {"query": 2}}]):
        config = peft.LoraConfig(
            task_type="SEQ_CLS", r=6, lora_alpha=12, target_modules=["query", "value"], **options
        )
        model = peft.get_peft_model(minilm_base(3), config)
        perturb(model, seed=20 + seed)
        model.save_pretrained(tmp_path / f"peft{seed}")
        imported[f"mixed{seed}"] = torch.softmax(peft_logits(tmp_path / f"peft{seed}"), -1)
        served.add(f"mixed{seed}", import_zip(tmp_path / f"peft{seed}", labels=LABELS), tmp_path)
    bundle = write_bundle(own_adalora_bundle(7), tmp_path / "ours")
    data = zip_bundle(bundle)
    assert isinstance(data, bytes)
    served.blobs["ours"] = AdapterBlob(data, hashlib.sha256(data).hexdigest())

    engine = served.engine
    requests = [
        engine.prepare("mixed0", TEXTS[:2]),
        engine.prepare(None, TEXTS[1:3], base_model=MINILM),
        engine.prepare("ours", TEXTS),
        engine.prepare("mixed1", TEXTS),
        engine.prepare("mixed0", TEXTS[2:]),
    ]
    together = engine.run(requests)
    alone = [engine.run([r])[0] for r in requests]

    def scores(rows: list[dict[str, Any]]) -> torch.Tensor:
        return torch.tensor([[row["scores"][label] for label in LABELS] for row in rows])

    torch.testing.assert_close(scores(together[0]), imported["mixed0"][:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores(together[4]), imported["mixed0"][2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores(together[3]), imported["mixed1"], atol=1e-5, rtol=0)
    for index in (1, 2):
        for got, want in zip(together[index], alone[index], strict=True):
            for key, value in want.items():
                if isinstance(value, dict):
                    assert got[key] == pytest.approx(value, abs=1e-5)
                elif isinstance(value, list):
                    torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(value))
                else:
                    assert got[key] == value
