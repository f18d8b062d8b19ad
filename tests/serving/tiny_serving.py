"""Tiny random models, a word-level tokenizer and real adapter bundles for the serving tests."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import processors
from torch import nn
from transformers import (
    BertForSequenceClassification,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5ForConditionalGeneration,
)
from transformers.pytorch_utils import Conv1D

from adalora_core.formats.bundle import (
    AdapterMeta,
    AdapterWeights,
    ModuleDelta,
    write_bundle,
    zip_bundle,
)
from adalora_core.formats.peft import peft_config
from adalora_core.serving.sources import AdapterBlob, AdapterNotFound, AdapterRef
from tests.tiny_models import (
    bert_config,
    gpt2_config,
    llama_config,
    seeded,
    t5_config,
    word_level_tokenizer,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"] + [f"w{i}" for i in range(59)]
WORDS = VOCAB[5:]
MODEL_SEED = 1234


def make_tokenizer(with_cls: bool) -> PreTrainedTokenizerFast:
    post_processor = None
    names = ["input_ids", "attention_mask"]
    if with_cls:
        post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
        names = ["input_ids", "token_type_ids", "attention_mask"]
    return word_level_tokenizer(
        VOCAB,
        "[UNK]",
        post_processor,
        pad_token="[PAD]",
        eos_token="</s>",
        model_input_names=names,
        model_max_length=64,
    )


def make_model(kind: str) -> nn.Module:
    """Same weights every call (fixed seed), so a test can rebuild the engine's base; any kind
    but bert, gpt2 and llama is the T5."""
    size, ends = len(VOCAB), {"eos_token_id": 4, "pad_token_id": 0}
    if kind == "bert":
        config = bert_config(size, intermediate_size=64, max_position_embeddings=64, num_labels=2)
        return seeded(BertForSequenceClassification, config, MODEL_SEED).eval()
    if kind == "gpt2":
        config = gpt2_config(size, bos_token_id=4, **ends)
        return seeded(GPT2LMHeadModel, config, MODEL_SEED).eval()
    if kind == "llama":
        config = llama_config(
            size,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=4,
            **ends,
        )
        return seeded(LlamaForCausalLM, config, MODEL_SEED).eval()
    config = t5_config(size, d_ff=64, decoder_start_token_id=0, **ends)
    return seeded(T5ForConditionalGeneration, config, MODEL_SEED).eval()


BASES = {
    "tiny-bert": "bert",
    "tiny-gpt2": "gpt2",
    "tiny-llama": "llama",
    "tiny-t5": "t5",
    "tiny-test-model": "bert",
}


def base_factory(name: str, kind: str) -> tuple[nn.Module, Any]:
    family = BASES[name]
    return make_model(family), make_tokenizer(with_cls=family == "bert")


def projections(model: nn.Module, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Module path → (in, out) of every Linear / Conv1D outside the heads."""
    found: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, Conv1D):
            found[name] = tuple(module.weight.shape)  # type: ignore[assignment]
        elif isinstance(module, nn.Linear):
            found[name] = (module.in_features, module.out_features)
    return found


def make_adapter(
    base_name: str,
    task: str,
    ranks: dict[str, int],
    seed: int,
    labels: list[str] | None = None,
    init_r: int = 4,
    pooler: bool = False,
) -> AdapterWeights:
    """A random AdaLoRA-like adapter: per-module ranks (0 allowed) and, for seq-cls, a head."""
    gen = torch.Generator().manual_seed(seed)
    model = make_model(BASES[base_name])
    shapes = projections(model, ("classifier", "lm_head"))
    modules: dict[str, ModuleDelta] = {}
    scaling = 8.0 / init_r
    for path, r in ranks.items():
        fan_in, fan_out = shapes[path]
        modules[path] = ModuleDelta(
            lora_A=torch.randn(r, fan_in, generator=gen) * 0.3,
            lora_B=torch.randn(fan_out, r, generator=gen) * 0.3,
            lora_E=torch.randn(r, 1, generator=gen),
            scaling=scaling,
        )
    head: dict[str, torch.Tensor] = {}
    if task == "classification":
        head = {
            "classifier.weight": torch.randn(len(labels or ()), 32, generator=gen),
            "classifier.bias": torch.randn(len(labels or ()), generator=gen),
        }
    elif task == "regression":
        head = {
            "classifier.weight": torch.randn(1, 32, generator=gen),
            "classifier.bias": torch.randn(1, generator=gen),
        }
    if pooler:  # the trainer saves BERT's pooler with the classifier
        head["bert.pooler.dense.weight"] = torch.randn(32, 32, generator=gen) * 0.3
        head["bert.pooler.dense.bias"] = torch.randn(32, generator=gen) * 0.3
    meta = AdapterMeta(
        task={"kind": task},
        base_model=base_name,
        init_r=init_r,
        target_r=2,
        lora_alpha=8.0,
        scaling=scaling,
        labels=labels,
        modules=[{"name": p, "rank": r} for p, r in ranks.items()],
        max_length=64,
    )
    return AdapterWeights(
        meta=meta, peft_config={"peft_type": "ADALORA"}, modules=modules, head=head
    )


def merged_reference(weights: AdapterWeights) -> nn.Module:
    """The adapter merged into its own copy of the base: W += s·P·diag(λ)·Q, head replaced."""
    model = copy.deepcopy(make_model(BASES[weights.meta.base_model]))
    with torch.no_grad():
        for path, delta in weights.modules.items():
            module = model.get_submodule(path)
            dw = delta.scaling * delta.lora_B @ torch.diag(delta.lora_E[:, 0]) @ delta.lora_A
            if isinstance(module, Conv1D):
                module.weight += dw.t()
            else:
                module.weight += dw
        if "bert.pooler.dense.weight" in weights.head:
            model.bert.pooler.dense.weight.copy_(weights.head["bert.pooler.dense.weight"])
            model.bert.pooler.dense.bias.copy_(weights.head["bert.pooler.dense.bias"])
        if weights.head:
            w, b = weights.head["classifier.weight"], weights.head["classifier.bias"]
            model.classifier = nn.Linear(w.shape[1], w.shape[0])
            model.classifier.weight.copy_(w)
            model.classifier.bias.copy_(b)
    return model.eval()


def greedy_alone(base_name: str, weights: AdapterWeights | None, prompt_ids: list[int], new: int):
    """The oracle for generation: HF generate, greedy, one prompt alone, on the plain base or on
    the adapter merged into its own copy of it; the new tokens up to end-of-sequence."""
    model = make_model(BASES[base_name]) if weights is None else merged_reference(weights)
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        do_sample=False,
        eos_token_id=4,
        pad_token_id=0,
    )[0, ids.shape[1] :].tolist()
    return out[: out.index(4)] if 4 in out else out


@dataclass
class MemorySource:
    """Adapters as zipped bundles in memory; counts reads; can serve tampered bytes."""

    blobs: dict[str, AdapterBlob] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)
    delay: Callable[[], None] | None = None

    def add(self, adapter_id: str, weights: AdapterWeights, tmp: Path) -> None:
        data = zip_bundle(write_bundle(weights, tmp / adapter_id))
        assert isinstance(data, bytes)
        self.blobs[adapter_id] = AdapterBlob(data, hashlib.sha256(data).hexdigest())

    def corrupt(self, adapter_id: str) -> None:
        blob = self.blobs[adapter_id]
        self.blobs[adapter_id] = AdapterBlob(blob.data[:-7] + b"garbage", blob.sha256)

    def read(self, ref: AdapterRef) -> AdapterBlob:
        adapter_id = ref.adapter_id
        self.reads[adapter_id] = self.reads.get(adapter_id, 0) + 1
        if self.delay is not None:
            self.delay()
        try:
            return self.blobs[adapter_id]
        except KeyError:
            raise AdapterNotFound(adapter_id) from None


def bert_layer_paths(layer: int) -> dict[str, str]:
    p = f"bert.encoder.layer.{layer}"
    return {
        "q": f"{p}.attention.self.query",
        "k": f"{p}.attention.self.key",
        "v": f"{p}.attention.self.value",
        "o": f"{p}.attention.output.dense",
        "up": f"{p}.intermediate.dense",
        "down": f"{p}.output.dense",
    }


def byte_level_llama(tokenizer: Any) -> LlamaForCausalLM:
    """A tiny random Llama over a real byte-level vocabulary (SmolLM2's tokenizer): JSON
    grammars and tool calls need real byte-level tokens, the weights stay tiny. Large initial
    weights make its next-token distributions peaked, so greedy picks are not near-ties."""
    config = llama_config(
        len(tokenizer),
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    return seeded(LlamaForCausalLM, config, MODEL_SEED).eval()


def llama_adapter_for(model: nn.Module, base_name: str, seed: int) -> AdapterWeights:
    """Random AdaLoRA-like triplets on the attention and MLP projections of every layer."""
    gen = torch.Generator().manual_seed(seed)
    shapes = projections(model, ("lm_head",))
    modules = {
        path: ModuleDelta(
            lora_A=torch.randn(4, fan_in, generator=gen) * 0.3,
            lora_B=torch.randn(fan_out, 4, generator=gen) * 0.3,
            lora_E=torch.randn(4, 1, generator=gen),
            scaling=2.0,
        )
        for path, (fan_in, fan_out) in shapes.items()
    }
    meta = AdapterMeta(
        task={"kind": "causal-lm", "text_column": "text"},
        base_model=base_name,
        init_r=4,
        target_r=4,
        lora_alpha=8.0,
        scaling=2.0,
        labels=None,
        modules=[{"name": p, "rank": 4} for p in modules],
        max_length=512,
    )
    config = peft_config(
        meta,
        rank_pattern={p: [True] * 4 for p in modules},
        head_paths=[],
        fan_in_fan_out=False,
        schedule=None,
    )
    return AdapterWeights(meta, config, modules, {})
