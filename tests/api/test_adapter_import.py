"""POST /adapters/import: PEFT adapters made by PEFT in the test, imported over HTTP, then served,
downloaded, named and deleted like trained ones; and every refusal, each a 422 naming its field,
after which nothing is stored (no row, no artifact, no staging file)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.api.conftest import job_body
from tests.conftest import TenantKey
from tests.peft_adapters import (
    LABELS,
    MINILM,
    MINILM_DIR,
    TEXTS,
    peft_logits,
    save_minilm_adapter,
    zip_dir,
)


def lora(**options: Any) -> peft.LoraConfig:
    defaults = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
    return peft.LoraConfig(task_type="SEQ_CLS", **{**defaults, **options})


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LoRA adapter with a 3-class head, shared by the tests that only read it."""
    return save_minilm_adapter(tmp_path_factory.mktemp("lora") / "adapter", lora(), seed=1)


@pytest.fixture
def import_zip(client: Any, tenant: TenantKey) -> Callable[..., Any]:
    """import_zip(data, headers=None, **form) posts a zip; the form defaults to MiniLM with
    LABELS."""

    def post(data: bytes, headers: dict[str, str] | None = None, **form: Any) -> Any:
        fields = {"base_model": MINILM, "labels": json.dumps(LABELS), **form}
        fields = {k: v for k, v in fields.items() if v is not None}
        return client.post(
            "/adapters/import",
            headers={**tenant.headers, **(headers or {})},
            files={"file": ("adapter.zip", data, "application/zip")},
            data=fields,
        )

    return post


def infer_scores(client: Any, tenant: TenantKey, adapter: str) -> torch.Tensor:
    body = {"adapter_id": adapter, "inputs": TEXTS}
    response = client.post("/infer", headers=tenant.headers, json=body)
    assert response.status_code == 200, response.text
    rows = response.json()["outputs"]
    return torch.tensor([[row["scores"][label] for label in LABELS] for row in rows])


def test_import_serves_peft_outputs_by_id_and_name_and_downloads_give_the_upload_back(
    client: Any, tenant: TenantKey, import_zip: Callable[..., Any], lora_dir: Path, tmp_path: Path
) -> None:
    response = import_zip(zip_dir(lora_dir), name="my-lora", output="merged")
    assert response.status_code == 201, response.text
    adapter = response.json()
    assert adapter["source"] == "import" and adapter["name"] == "my-lora"
    assert adapter["task"] == "classification" and adapter["labels"] == LABELS
    assert adapter["formats"] == ["peft", "lora", "merged"]
    assert adapter["total_rank"] == 4 * 12 and adapter["init_r"] == 4

    want = torch.softmax(peft_logits(lora_dir), -1)
    torch.testing.assert_close(infer_scores(client, tenant, adapter["id"]), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(infer_scores(client, tenant, "my-lora"), want, atol=1e-5, rtol=0)
    got = client.get("/adapters/my-lora", headers=tenant.headers).json()
    assert got["id"] == adapter["id"]
    ranks = client.get(f"/adapters/{adapter['id']}/ranks", headers=tenant.headers).json()
    assert {m["rank"] for m in ranks["modules"]} == {4} and len(ranks["modules"]) == 12

    for fmt in ("peft", "lora", "merged"):
        download = client.get(
            f"/adapters/{adapter['id']}/download?format={fmt}", headers=tenant.headers
        )
        assert download.status_code == 200, download.text
        zipfile.ZipFile(io.BytesIO(download.content)).extractall(tmp_path / fmt)
    uploaded = load_file(lora_dir / "adapter_model.safetensors")
    returned = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert returned.keys() == uploaded.keys()
    assert all(torch.equal(returned[k], uploaded[k]) for k in uploaded)
    torch.testing.assert_close(
        torch.softmax(peft_logits(tmp_path / "lora"), -1), want, atol=1e-5, rtol=0
    )
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    with torch.no_grad():
        logits = torch.stack([merged(**tokenizer(t, return_tensors="pt")).logits[0] for t in TEXTS])
    torch.testing.assert_close(torch.softmax(logits, -1), want, atol=1e-5, rtol=0)


def test_a_name_is_unique_and_deleting_frees_it_for_an_adapter_served_at_once(
    client: Any, tenant: TenantKey, import_zip: Callable[..., Any], lora_dir: Path, tmp_path: Path
) -> None:
    """Delete an adapter, import another under its name: the next request by that name gets the
    new adapter's outputs (the engine's cache is keyed by id and digest, not the name)."""
    first = import_zip(zip_dir(lora_dir), name="shared").json()
    torch.testing.assert_close(
        infer_scores(client, tenant, "shared"), torch.softmax(peft_logits(lora_dir), -1)
    )
    taken = import_zip(zip_dir(lora_dir), name="shared")
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "name"

    other = save_minilm_adapter(tmp_path / "other", lora(), seed=2)
    deleted = client.delete(f"/adapters/{first['id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    second = import_zip(zip_dir(other), name="shared")
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    want = torch.softmax(peft_logits(other), -1)
    torch.testing.assert_close(infer_scores(client, tenant, "shared"), want, atol=1e-5, rtol=0)

    job = client.post("/jobs", headers=tenant.headers, json=job_body("ds_x", name="shared"))
    assert job.status_code == 409 and job.json()["error"]["field"] == "name"


def test_an_import_honours_idempotency_key(
    client: Any, tenant: TenantKey, import_zip: Callable[..., Any], lora_dir: Path
) -> None:
    headers = {"Idempotency-Key": "import-1"}
    first = import_zip(zip_dir(lora_dir), headers=headers, name="once")
    assert first.status_code == 201, first.text
    again = import_zip(zip_dir(lora_dir), headers=headers, name="once")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    changed = import_zip(zip_dir(lora_dir), headers=headers, name="twice")
    assert changed.status_code == 409
    assert changed.json()["error"]["field"] == "Idempotency-Key"
    assert len(client.get("/adapters", headers=tenant.headers).json()["items"]) == 1


# --- refusals: each a 422 naming its field, and nothing stored -----------------------------------


def edited(
    source: Path, target: Path, config: dict[str, Any] | None = None, **tensors: Any
) -> Path:
    """A copy of an adapter directory with config entries replaced and tensors added (None
    removes one)."""
    target.mkdir(parents=True)
    data = json.loads((source / "adapter_config.json").read_text())
    data.update(config or {})
    (target / "adapter_config.json").write_text(json.dumps(data))
    state = load_file(source / "adapter_model.safetensors")
    for key, tensor in tensors.items():
        key = key.replace("__", ".")
        if tensor is None:
            state.pop(key)
        else:
            state[key] = tensor
    save_file(state, target / "adapter_model.safetensors")
    return target


def assert_refused(
    response: Any, field: str, words: str, client: Any, tenant: TenantKey, settings: Any
) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert words in error["message"], error
    assert client.get("/adapters", headers=tenant.headers).json()["items"] == []
    store = Path(settings.store_dir)
    assert not [p for p in store.rglob("*") if p.is_file()] if store.exists() else True
    uploads = Path(settings.home) / "uploads"
    assert not list(uploads.iterdir()) if uploads.exists() else True


def peft_made(kind: str, tmp_path: Path) -> Path:
    """Adapters of types or options we do not serve, made by PEFT itself."""
    configs: dict[str, Any] = {
        "dora": lora(use_dora=True),
        "lora_bias": lora(lora_bias=True),
        "ia3": peft.IA3Config(
            task_type="SEQ_CLS", target_modules=["query", "value"], feedforward_modules=[]
        ),
        "prefix": peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
        "prompt": peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
        "trainable_tokens": lora(trainable_token_indices=[5, 6]),
        "embedding_lora": lora(target_modules=["word_embeddings", "query"]),
    }
    return save_minilm_adapter(tmp_path / kind, configs[kind])


PEFT_REFUSALS = {
    "dora": ("use_dora", "DoRA"),
    "lora_bias": ("lora_bias", "bias"),
    "ia3": ("peft_type", "'IA3' is not served"),
    "prefix": ("peft_type", "'PREFIX_TUNING' is not served"),
    "prompt": ("peft_type", "'PROMPT_TUNING' is not served"),
    "trainable_tokens": ("trainable_token_indices", "token embeddings"),
    "embedding_lora": ("target_modules", "token embedding"),
}


@pytest.mark.parametrize("kind", sorted(PEFT_REFUSALS))
def test_peft_types_and_options_we_do_not_serve_are_refused(
    kind: str,
    client: Any,
    tenant: TenantKey,
    settings: Any,
    import_zip: Callable[..., Any],
    tmp_path: Path,
) -> None:
    field, words = PEFT_REFUSALS[kind]
    response = import_zip(zip_dir(peft_made(kind, tmp_path)))
    assert_refused(response, field, words, client, tenant, settings)


def bundle_refusals(lora_dir: Path, tmp_path: Path) -> dict[str, tuple[bytes, dict, str, str]]:
    """name -> (zip, form, field, words) for refusals of the bundle's content."""
    hidden = 384
    vocab = AutoTokenizer.from_pretrained(MINILM_DIR).vocab_size
    query0 = "base_model.model.bert.encoder.layer.0.attention.self.query"
    tiny = save_minilm_adapter(tmp_path / "rank8", lora(r=8))
    return {
        "unknown target": (
            zip_dir(edited(lora_dir, tmp_path / "t", {"target_modules": ["query", "c_attn"]})),
            {},
            "target_modules",
            "has no module 'c_attn'",
        ),
        "shape": (
            zip_dir(
                edited(lora_dir, tmp_path / "s", **{f"{query0}.lora_B.weight": torch.ones(32, 4)})
            ),
            {},
            "file",
            "layer",
        ),
        "other architecture": (
            zip_dir(
                edited(
                    lora_dir,
                    tmp_path / "a",
                    {"base_model_name_or_path": "openai-community/gpt2"},
                    **{f"{query0}.lora_A.weight": torch.ones(4, 768)},
                )
            ),
            {},
            "base_model",
            "trained on 'openai-community/gpt2'",
        ),
        "rank pattern disagrees": (
            zip_dir(edited(lora_dir, tmp_path / "r", {"r": 6})),
            {},
            "r",
            "its weights have 4",
        ),
        "rank above the limit": (zip_dir(tiny), {}, "r", "ADALORA_IMPORT_MAX_RANK"),
        "modules_to_save beyond the head": (
            zip_dir(edited(lora_dir, tmp_path / "m", {"modules_to_save": ["classifier", "bert"]})),
            {},
            "modules_to_save",
            "not the classification head",
        ),
        "resized vocabulary": (
            zip_dir(
                edited(
                    lora_dir,
                    tmp_path / "v",
                    **{
                        "base_model.model.bert.embeddings.word_embeddings.weight": torch.zeros(
                            vocab + 8, hidden
                        )
                    },
                )
            ),
            {},
            "modules_to_save",
            "resized vocabulary",
        ),
        "labels disagree": (zip_dir(lora_dir), {"labels": '["a", "b"]'}, "labels", "3 classes"),
        "no labels": (zip_dir(lora_dir), {"labels": None}, "labels", "names of the head's 3"),
        "labels not json": (zip_dir(lora_dir), {"labels": "a,b,c"}, "labels", "JSON list"),
        "task disagrees": (zip_dir(lora_dir), {"task": "causal-lm"}, "task", "SEQ_CLS"),
        "no head": (
            zip_dir(
                edited(
                    lora_dir,
                    tmp_path / "h",
                    base_model__model__classifier__weight=None,
                    base_model__model__classifier__bias=None,
                )
            ),
            {},
            "modules_to_save",
            "trained head",
        ),
        "unknown base": (zip_dir(lora_dir), {"base_model": "gpt-9"}, "base_model", "unknown"),
    }


def test_bundles_that_do_not_fit_are_refused_and_nothing_is_stored(
    client: Any,
    tenant: TenantKey,
    settings: Any,
    import_zip: Callable[..., Any],
    lora_dir: Path,
    tmp_path: Path,
) -> None:
    settings.import_max_rank = 4
    for name, (data, form, field, words) in bundle_refusals(lora_dir, tmp_path).items():
        response = import_zip(data, **form)
        try:
            assert_refused(response, field, words, client, tenant, settings)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


# --- archive safety ------------------------------------------------------------------------------


def zip_of(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            archive.writestr(info, target)
    return buffer.getvalue()


class RunsCode:
    """Unpickling this calls os.system: the pickle a plain torch.load would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_archives_are_refused_and_nothing_is_stored(
    client: Any,
    tenant: TenantKey,
    settings: Any,
    import_zip: Callable[..., Any],
    lora_dir: Path,
    tmp_path: Path,
) -> None:
    config = (lora_dir / "adapter_config.json").read_bytes()
    weights = (lora_dir / "adapter_model.safetensors").read_bytes()
    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save({"base_model.model.classifier.weight": RunsCode(marker)}, evil)
    settings.import_max_files = 8
    settings.import_max_unpacked_bytes = 4 * len(weights)
    bomb = b"\0" * (8 * len(weights))  # deflates to a few kB
    cases = {
        "not a zip": (b"PK but not really", "is not a zip archive"),
        "traversal": (
            zip_of({"../evil/adapter_config.json": config, "adapter_model.safetensors": weights}),
            "escapes the adapter directory",
        ),
        "absolute path": (
            zip_of({"adapter_config.json": config, "/etc/adapter_model.safetensors": weights}),
            "escapes the adapter directory",
        ),
        "link": (
            zip_of({"adapter_config.json": config}, {"adapter_model.safetensors": "/etc/passwd"}),
            "is a link",
        ),
        "too many files": (
            zip_of({"adapter_config.json": config, **{f"f{i}.txt": b"x" for i in range(9)}}),
            "holds 10 files",
        ),
        "zip bomb": (
            zip_of({"adapter_config.json": config, "adapter_model.safetensors": bomb}),
            "unpacks to",
        ),
        "no weights": (zip_of({"adapter_config.json": config}), "has no adapter_model"),
        "no config": (zip_of({"adapter_model.safetensors": weights}), "has no adapter_config"),
        "too deep": (
            zip_of({"a/b/adapter_config.json": config, "a/b/adapter_model.safetensors": weights}),
            "one folder down",
        ),
        "pickle that runs code": (
            zip_of({"adapter_config.json": config, "adapter_model.bin": evil.getvalue()}),
            "would run code",
        ),
        "not safetensors": (
            zip_of({"adapter_config.json": config, "adapter_model.safetensors": b"{}garbage"}),
            "not a safetensors file",
        ),
    }
    assert len(zipfile.ZipFile(io.BytesIO(cases["zip bomb"][0])).read("adapter_config.json"))
    assert len(cases["zip bomb"][0]) < len(weights)
    for name, (data, words) in cases.items():
        response = import_zip(data)
        try:
            assert_refused(response, "file", words, client, tenant, settings)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert not marker.exists()
    # The same files, safely zipped, are accepted (so the refusals above are about the archive).
    accepted = import_zip(
        zip_of({"adapter_config.json": config, "adapter_model.safetensors": weights})
    )
    assert accepted.status_code == 201, accepted.text


def test_an_adalora_adapter_peft_trained_shows_its_pruned_ranks(
    client: Any, tenant: TenantKey, import_zip: Callable[..., Any], tmp_path: Path
) -> None:
    """PEFT trains AdaLoRA for a few steps and prunes it; imported, its ranks view shows the
    ranks PEFT kept (its rank_pattern), and it serves PEFT's outputs."""
    from tests.peft_adapters import train_peft_adalora

    train_peft_adalora(tmp_path / "peft", init_r=4, steps=6, lora_alpha=8)
    pattern = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["rank_pattern"]

    response = import_zip(zip_dir(tmp_path / "peft"), name="peft-adalora")
    assert response.status_code == 201, response.text
    ranks = client.get("/adapters/peft-adalora/ranks", headers=tenant.headers).json()
    got = {m["name"]: m["rank"] for m in ranks["modules"]}
    assert got == {k.removesuffix(".lora_E"): sum(v) for k, v in pattern.items()}
    assert ranks["budget"] == {"initial": 48, "target": 24, "final": sum(got.values())}
    want = torch.softmax(peft_logits(tmp_path / "peft"), -1)
    got_scores = infer_scores(client, tenant, "peft-adalora")
    torch.testing.assert_close(got_scores, want, atol=1e-5, rtol=0)
