"""Adapters trained elsewhere: a PEFT LoRA or AdaLoRA adapter read from a zip or a directory,
checked against the base it will run on, and written as our bundle.

Everything that would make such an adapter fail later, or serve outputs other than PEFT's, is
refused here, before anything is stored, by an `ImportRefused` that names the field at fault (the
API answers 422): an archive that is not what it claims (links, paths out of its directory, too
many files, too much unpacked, a pickle that would run code, no weights), a PEFT type or option
the engine does not compute, a module or a shape the base does not have, a rank above the limit,
`modules_to_save` beyond the classification head, a head that disagrees with the labels.

An accepted adapter keeps PEFT's files as uploaded (a `.bin` is read as tensors only and written
back as safetensors, with the same tensors) and gains `adalora.json`; `bundle.read_adapter`
reads it like any other bundle. PEFT's scales are kept exactly: LoRA's alpha / r (alpha / √r
with rsLoRA) per module after `rank_pattern` / `alpha_pattern`, AdaLoRA's alpha / (init_r + 1e-5).
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from adalora_core.context_limit import context_limit
from adalora_core.errors import ConfigError
from adalora_core.formats.bundle import (
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterMeta,
    AdapterWeights,
    BundleError,
    ModuleDelta,
    pattern_value,
    split_lora_state_dict,
    split_state_dict,
    write_bundle,
)
from adalora_core.inject import module_layer_and_kind
from adalora_core.tasks import (
    AUTO_CLASS,
    CLASSIFICATION,
    MODEL_KIND,
    REGRESSION,
    SEQ2SEQ,
    TASK_KINDS,
    ModelKind,
    TaskSpec,
)

BIN_WEIGHTS_FILE = "adapter_model.bin"
WEIGHT_FILES = (WEIGHTS_FILE, BIN_WEIGHTS_FILE)
# The sequence-classification heads PEFT saves with an adapter (its SEQ_CLS default).
HEAD_NAMES = frozenset({"classifier", "score", "classification_head"})
# PEFT divides an AdaLoRA update by ranknum + 1e-5, ranknum being init_r.
ADALORA_EPS = 1e-5
# The task kinds each PEFT task_type can be served as.
TASKS_OF_TASK_TYPE: dict[str, tuple[str, ...]] = {
    "SEQ_CLS": (CLASSIFICATION, REGRESSION),
    "CAUSAL_LM": ("causal-lm",),
    "SEQ_2_SEQ_LM": (SEQ2SEQ,),
}
# LoraConfig options that change what a module computes; each must be off.
UNSERVED_OPTIONS = {
    "use_dora": "DoRA (weight-decomposed LoRA) is not served",
    "lora_bias": "a trained LoRA bias is not served",
    "trainable_token_indices": "trainable token embeddings are not served",
    "target_parameters": "LoRA on parameters (target_parameters) is not served",
    "layer_replication": "layer replication is not served",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not served",
    "use_qalora": "QALoRA is not served",
    "megatron_config": "Megatron parallel layers are not served",
}


class ImportRefused(ConfigError):
    """A PEFT adapter that cannot be served as it is: the field at fault and why (a 422)."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an uploaded archive may hold, checked before and while it is unpacked."""

    max_files: int = 64
    max_unpacked_bytes: int = 1 << 30


@dataclass
class PeftFiles:
    """The two files of a PEFT adapter, parsed: its config and its tensors."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]


@dataclass
class ImportedAdapter:
    """An accepted adapter: the bundle as the engine reads it and the tensors it is written with."""

    weights: AdapterWeights
    state: dict[str, torch.Tensor]

    def write(self, out_dir: Path) -> Path:
        return write_bundle(self.weights, Path(out_dir), self.state)


def refuse(field: str, message: str) -> ImportRefused:
    return ImportRefused(field, message)


# --- reading the files -------------------------------------------------------------------------


def read_peft_zip(source: bytes | Path, limits: ArchiveLimits) -> PeftFiles:
    """A zip of a PEFT adapter directory, its files at the top or one folder down."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise refuse("file", "is not a zip archive") from exc
    with archive:
        infos = archive.infolist()
        files = [info for info in infos if not info.is_dir()]
        if len(files) > limits.max_files:
            raise refuse(
                "file", f"holds {len(files)} files; an adapter archive may hold {limits.max_files}"
            )
        for info in infos:
            _check_entry(info)
        declared = sum(info.file_size for info in files)
        if declared > limits.max_unpacked_bytes:
            raise refuse(
                "file",
                f"unpacks to {declared} bytes, more than the {limits.max_unpacked_bytes} allowed",
            )
        names = {info.filename for info in files}
        folder = _adapter_folder(names)
        weights = next((f"{folder}{n}" for n in WEIGHT_FILES if f"{folder}{n}" in names), None)
        if weights is None:
            raise refuse("file", f"has no {' or '.join(WEIGHT_FILES)} beside {PEFT_CONFIG_FILE}")
        budget = [limits.max_unpacked_bytes]
        config = _read_member(archive, f"{folder}{PEFT_CONFIG_FILE}", budget)
        data = _read_member(archive, weights, budget)
    return PeftFiles(_parse_config(config), _parse_weights(PurePosixPath(weights).name, data))


def read_peft_dir(directory: Path, limits: ArchiveLimits) -> PeftFiles:
    """A PEFT adapter directory on this machine; its files must be files, not links."""
    config_path = directory / PEFT_CONFIG_FILE
    weights = next((directory / n for n in WEIGHT_FILES if (directory / n).exists()), None)
    if not config_path.exists():
        raise refuse("lora_path", f"has no {PEFT_CONFIG_FILE}")
    if weights is None:
        raise refuse("lora_path", f"has no {' or '.join(WEIGHT_FILES)}")
    for path in (config_path, weights):
        if path.is_symlink() or not path.is_file():
            raise refuse("lora_path", f"{path.name} is a link or not a file; links are refused")
    if config_path.stat().st_size + weights.stat().st_size > limits.max_unpacked_bytes:
        raise refuse("lora_path", f"holds more than {limits.max_unpacked_bytes} bytes")
    return PeftFiles(
        _parse_config(config_path.read_bytes()), _parse_weights(weights.name, weights.read_bytes())
    )


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in name:
        raise refuse("file", f"entry {name!r} escapes the adapter directory")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise refuse("file", f"entry {name!r} is a link; links are refused")


def _adapter_folder(names: set[str]) -> str:
    """The folder holding adapter_config.json: the top, or one folder down."""
    found = sorted(
        name[: -len(PEFT_CONFIG_FILE)]
        for name in names
        if PurePosixPath(name).name == PEFT_CONFIG_FILE and name.count("/") <= 1
    )
    if not found:
        raise refuse("file", f"has no {PEFT_CONFIG_FILE} at the top or one folder down")
    if len(found) > 1:
        raise refuse("file", f"holds {len(found)} adapters ({PEFT_CONFIG_FILE} in {found})")
    return found[0]


def _read_member(archive: zipfile.ZipFile, name: str, budget: list[int]) -> bytes:
    """Read one entry, counting the bytes it really unpacks to against what is left."""
    chunks: list[bytes] = []
    try:
        with archive.open(name) as member:
            while chunk := member.read(1 << 20):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise refuse("file", "unpacks to more bytes than allowed")
                chunks.append(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
        raise refuse("file", f"entry {name!r} cannot be unpacked ({exc})") from exc
    return b"".join(chunks)


def _parse_config(data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refuse(PEFT_CONFIG_FILE, f"is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise refuse(PEFT_CONFIG_FILE, "is not a JSON object")
    return config


def _parse_weights(name: str, data: bytes) -> dict[str, torch.Tensor]:
    if name == WEIGHTS_FILE:
        try:
            return dict(load_safetensors(data))
        except Exception as exc:  # safetensors raises its own error types
            raise refuse("file", f"{name} is not a safetensors file") from exc
    try:
        # Never a plain torch.load: unpickling runs whatever code the pickle names.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refuse(
            "file",
            f"{name} holds objects other than tensors; it is read with "
            "torch.load(weights_only=True), which refuses a pickle that would run code",
        ) from exc
    except Exception as exc:
        raise refuse("file", f"{name} is not a torch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise refuse("file", f"{name} is not a mapping of names to tensors")
    return state


# --- the base it will run on -------------------------------------------------------------------


@dataclass(frozen=True)
class BaseLayout:
    """What an adapter must fit: the base's projections (the Linear and Conv1D layers serving
    routes), its other modules, its head tensors and which of them are sized by the labels."""

    modules: frozenset[str]
    projections: Mapping[str, tuple[int, int]]  # path -> (in, out)
    embeddings: frozenset[str]
    heads: Mapping[str, Mapping[str, tuple[int, ...]]]  # head module -> {tensor: shape}
    label_tensors: frozenset[str]  # "<head>.<tensor>" whose first dimension is the label count
    max_positions: int | None


@functools.lru_cache(maxsize=16)
def base_layout(model_dir: str, kind: ModelKind) -> BaseLayout:
    """The base's modules and shapes, built on the meta device from its config (no weights)."""
    import transformers
    from transformers.pytorch_utils import Conv1D

    from adalora_core.serving.heads import head_module_names

    config = transformers.AutoConfig.from_pretrained(model_dir)
    auto = getattr(transformers, AUTO_CLASS[kind])

    def build(num_labels: int) -> torch.nn.Module:
        if kind == "sequence-classification":
            config.num_labels = num_labels
        with torch.device("meta"):
            return auto.from_config(config)

    model = build(2)
    heads = head_module_names(model) if kind == "sequence-classification" else []
    skip = set(heads) | {"lm_head"}
    projections: dict[str, tuple[int, int]] = {}
    embeddings: set[str] = {"lm_head"} if hasattr(model, "lm_head") else set()
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, Conv1D):
            projections[name] = (int(module.weight.shape[0]), int(module.weight.shape[1]))
        elif isinstance(module, torch.nn.Linear):
            projections[name] = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            embeddings.add(name)
    head_shapes = {
        head: {n: tuple(t.shape) for n, t in model.get_submodule(head).state_dict().items()}
        for head in heads
    }
    label_tensors: set[str] = set()
    if heads:
        other = build(3)
        for head, shapes in head_shapes.items():
            for n, t in other.get_submodule(head).state_dict().items():
                if tuple(t.shape) != shapes[n]:
                    label_tensors.add(f"{head}.{n}")
    return BaseLayout(
        modules=frozenset(name for name, _ in model.named_modules() if name),
        projections=projections,
        embeddings=frozenset(embeddings),
        heads=head_shapes,
        label_tensors=frozenset(label_tensors),
        max_positions=context_limit(model_dir),
    )


# --- the checks and the conversion -------------------------------------------------------------


def check_config(config: Mapping[str, Any]) -> str:
    """The PEFT type, once the config asks for nothing the engine does not compute."""
    peft_type = config.get("peft_type")
    if peft_type not in ("LORA", "ADALORA"):
        raise refuse(
            "peft_type",
            f"{peft_type!r} is not served: only LORA and ADALORA adapters are "
            "(IA3, prefix and prompt tuning and the other PEFT types compute differently)",
        )
    for option, why in UNSERVED_OPTIONS.items():
        if config.get(option):
            raise refuse(option, f"{why} (adapter_config.json sets {option}={config[option]!r})")
    if config.get("bias", "none") != "none":
        raise refuse("bias", f"only bias 'none' is served, not {config.get('bias')!r}")
    rank_field = "init_r" if peft_type == "ADALORA" else "r"
    for field in (rank_field, "lora_alpha"):
        value = config.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise refuse(field, f"must be a positive number in {PEFT_CONFIG_FILE}, got {value!r}")
    return str(peft_type)


def requested_task(config: Mapping[str, Any], task: str | None) -> str:
    """The task asked for, or the one the config's task_type names; a task the bundle's
    task_type cannot serve is refused. SEQ_CLS defaults to classification here; a one-output
    head makes it regression later."""
    declared = config.get("task_type")
    allowed = TASKS_OF_TASK_TYPE.get(str(declared)) if declared is not None else None
    if task is None:
        if allowed is None:
            raise refuse(
                "task", f"the bundle's task_type {declared!r} names no task served here; give task"
            )
        return allowed[0]
    if task not in TASK_KINDS:
        raise refuse("task", f"must be one of {list(TASK_KINDS)}, got {task!r}")
    if declared is not None and (allowed is None or task not in allowed):
        raise refuse("task", f"{task!r} disagrees with the bundle's task_type {declared!r}")
    return task


def import_peft_adapter(
    files: PeftFiles,
    *,
    base_model: str,
    model_dir: str,
    task: str | None = None,
    labels: list[str] | None = None,
    max_rank: int,
) -> ImportedAdapter:
    """Check a PEFT adapter against the base ``base_model`` (its files in ``model_dir``) and
    turn it into our bundle; `ImportRefused` names what does not fit."""
    config = files.config
    peft_type = check_config(config)
    kind = requested_task(config, task)
    layout = base_layout(str(model_dir), MODEL_KIND[kind])
    modules, head = _split(peft_type, config, files.state)
    if not modules and not head:
        raise refuse("file", "holds no LoRA weights")
    misfit = _misfit_field(config, base_model, str(model_dir))
    _check_target_modules(config, layout, base_model)
    ranks = _check_modules(peft_type, config, modules, layout, base_model, max_rank, misfit)
    kind, labels = _check_head(config, head, layout, kind, task, labels, misfit)
    return ImportedAdapter(
        _weights(peft_type, config, modules, head, ranks, layout, base_model, kind, labels, files),
        dict(files.state),
    )


def _split(
    peft_type: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, ModuleDelta], dict[str, torch.Tensor]]:
    try:
        if peft_type == "LORA":
            return split_lora_state_dict(config, state)
        scaling = float(config["lora_alpha"]) / (int(config["init_r"]) + ADALORA_EPS)
        return split_state_dict(state, scaling)
    except BundleError as exc:
        raise refuse("file", str(exc)) from exc


def _misfit_field(config: Mapping[str, Any], base_model: str, model_dir: str) -> tuple[str, str]:
    """Where a shape that does not fit points: at base_model when the bundle names another base
    than this one (by its name or its directory), else at the weights."""
    trained_on = config.get("base_model_name_or_path")
    if not trained_on:
        return "file", ""
    same = str(trained_on) in (base_model, model_dir) or Path(str(trained_on)).name == base_model
    if same or Path(str(trained_on)).resolve() == Path(model_dir).resolve():
        return "file", ""
    return "base_model", f"the adapter was trained on {trained_on!r}, not {base_model!r}: "


def _check_target_modules(config: Mapping[str, Any], layout: BaseLayout, base_model: str) -> None:
    import re

    targets = config.get("target_modules")
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in layout.modules):
            raise refuse("target_modules", f"{targets!r} matches no module of {base_model}")
        return
    for entry in targets or ():
        if not any(name == entry or name.endswith("." + str(entry)) for name in layout.modules):
            raise refuse("target_modules", f"{base_model} has no module {entry!r}")


def _check_modules(
    peft_type: str,
    config: Mapping[str, Any],
    modules: Mapping[str, ModuleDelta],
    layout: BaseLayout,
    base_model: str,
    max_rank: int,
    misfit: tuple[str, str],
) -> dict[str, int]:
    """Each adapted module a projection of the base, its factors of the base's shape, its rank
    the config's and within the limit; the served rank of each."""
    ranks: dict[str, int] = {}
    field, why = misfit
    for path, delta in modules.items():
        if path not in layout.projections:
            if path in layout.embeddings:
                raise refuse(
                    "target_modules",
                    f"{path!r} is a token embedding of {base_model}; LoRA on embeddings is not "
                    "served",
                )
            if path in layout.modules:
                raise refuse(
                    "target_modules",
                    f"{path!r} of {base_model} is not a projection served with LoRA (a head's "
                    "layers, such as the pooler, are not)",
                )
            raise refuse(field, f"{why}{base_model} has no module {path!r}")
        fan_in, fan_out = layout.projections[path]
        a, b = delta.lora_A, delta.lora_B
        if a.shape[1] != fan_in or b.shape[0] != fan_out:
            raise refuse(
                field,
                f"{why}the weights of {path!r} are for a {a.shape[1]}→{b.shape[0]} layer; "
                f"{base_model}'s is {fan_in}→{fan_out}",
            )
        rank = delta.rank
        if peft_type == "LORA":
            rank_pattern = config.get("rank_pattern") or {}
            expected = int(pattern_value(rank_pattern, path, config["r"]))
            if rank != expected:
                where = "rank_pattern" if expected != config["r"] else "r"
                raise refuse(where, f"says rank {expected} for {path!r}, its weights have {rank}")
        else:
            init_r = int(config["init_r"])
            keep = (config.get("rank_pattern") or {}).get(f"{path}.lora_E")
            if rank > init_r or (keep is not None and sum(bool(k) for k in keep) != rank):
                raise refuse(
                    "rank_pattern", f"does not match the rank {rank} of {path!r}'s weights"
                )
        if rank > max_rank:
            where = "r" if peft_type == "LORA" else "init_r"
            raise refuse(
                where,
                f"{path!r} has rank {rank}, above ADALORA_IMPORT_MAX_RANK ({max_rank}) here",
            )
        ranks[path] = rank
    return ranks


def _check_head(
    config: Mapping[str, Any],
    head: Mapping[str, torch.Tensor],
    layout: BaseLayout,
    kind: str,
    task: str | None,
    labels: list[str] | None,
    misfit: tuple[str, str],
) -> tuple[str, list[str] | None]:
    """Head tensors only for the classification head, shaped like the base's but for the label
    count; the task and labels checked against that count. Returns the task and labels."""
    saved = config.get("modules_to_save") or []
    beyond = [m for m in saved if m not in HEAD_NAMES]
    if beyond:
        raise refuse(
            "modules_to_save",
            f"{beyond} are not the classification head; only {sorted(HEAD_NAMES)} are served",
        )
    field, why = misfit
    embedding_lora = sorted(k for k in head if ".lora_embedding_" in k)
    if embedding_lora:
        raise refuse(
            "target_modules",
            f"{embedding_lora[0].rsplit('.', 1)[0]!r} is a token embedding; LoRA on token "
            "embeddings is not served",
        )
    width: int | None = None
    for key, tensor in head.items():
        owner = next((h for h in layout.heads if key.startswith(h + ".")), None)
        top = key.split(".")[0]
        if any(key.startswith(e + ".") for e in layout.embeddings):
            raise refuse(
                "modules_to_save",
                f"{key!r}: trained or resized token embeddings (a resized vocabulary) are not "
                "served",
            )
        if owner is None or top not in HEAD_NAMES:
            where = "modules_to_save" if top not in HEAD_NAMES else field
            raise refuse(where, f"{why}{key!r} is not a tensor of the base's classification head")
        name = key[len(owner) + 1 :]
        expected = layout.heads[owner].get(name)
        if expected is None:
            raise refuse(field, f"{why}{key!r} is not a tensor of the base's head {owner!r}")
        shape = tuple(tensor.shape)
        if key in layout.label_tensors:
            if shape[1:] != expected[1:]:
                raise refuse(field, f"{why}{key!r} has shape {shape}, the base's is {expected}")
            width = shape[0]
        elif shape != expected:
            raise refuse(field, f"{why}{key!r} has shape {shape}, the base's is {expected}")
    if MODEL_KIND[kind] != "sequence-classification":
        if head:
            raise refuse("modules_to_save", f"a {kind} adapter carries head weights {sorted(head)}")
        if labels:
            raise refuse("labels", f"only classification takes labels, not {kind}")
        return kind, None
    if width is None:
        raise refuse(
            "modules_to_save",
            f"a {kind} adapter must carry its trained head ({sorted(HEAD_NAMES)}); this one has "
            "none",
        )
    if task is None and width == 1:
        kind = REGRESSION
    if kind == REGRESSION:
        if width != 1:
            raise refuse("task", f"regression needs a head of one output; this one has {width}")
        if labels:
            raise refuse("labels", "only classification takes labels, not regression")
        return kind, None
    if not labels:
        raise refuse("labels", f"classification needs the names of the head's {width} classes")
    if len(labels) != width:
        raise refuse("labels", f"{len(labels)} labels for a head of {width} classes")
    try:
        TaskSpec(kind, "text", label_column="label", labels=tuple(labels)).validate()
    except ConfigError as exc:
        raise refuse("labels", exc.message) from exc
    return kind, list(labels)


def _weights(
    peft_type: str,
    config: Mapping[str, Any],
    modules: dict[str, ModuleDelta],
    head: dict[str, torch.Tensor],
    ranks: dict[str, int],
    layout: BaseLayout,
    base_model: str,
    kind: str,
    labels: list[str] | None,
    files: PeftFiles,
) -> AdapterWeights:
    alpha = float(config["lora_alpha"])
    if peft_type == "ADALORA":
        init_r = int(config["init_r"])
        target_r = int(config.get("target_r") or init_r)
        scaling = alpha / (init_r + ADALORA_EPS)
        budget = {"initial": init_r * len(modules), "target": target_r * len(modules)}
    else:
        init_r = target_r = max((d.rank for d in modules.values()), default=0)
        scaling = alpha / float(config["r"])
        budget = {"initial": sum(ranks.values()), "target": sum(ranks.values())}
    task = TaskSpec(
        kind,
        "text",
        label_column="label" if MODEL_KIND[kind] == "sequence-classification" else None,
        target_column="target" if kind == SEQ2SEQ else None,
        labels=tuple(labels) if labels else None,
    )
    meta = AdapterMeta(
        task=task.to_json(),
        base_model=base_model,
        init_r=init_r,
        target_r=target_r,
        lora_alpha=alpha,
        scaling=scaling,
        labels=labels,
        modules=[
            {"name": path, "layer": layer, "kind": module_kind, "rank": ranks[path]}
            for path in sorted(modules)
            for layer, module_kind in [module_layer_and_kind(path)]
        ],
        budget={**budget, "final": sum(ranks.values())},
        trainable_params=sum(t.numel() for t in files.state.values()),
        max_length=layout.max_positions or AdapterMeta.max_length,
        method=f"peft-{peft_type.lower()}",
    )
    return AdapterWeights(meta=meta, peft_config=dict(config), modules=modules, head=head)
