"""The adapter bundle: one directory (or a zip of it) that every consumer reads the same way.

A bundle holds PEFT's files (so ``peft.PeftModel.from_pretrained`` loads it) plus
``adalora.json`` with what PEFT has no place for (labels, rank history, metrics). Adapters we
train hold PEFT's AdaLoRA files; an imported PEFT LoRA adapter keeps its own LoRA files, so its
download gives back what was uploaded (``adalora_core.formats.peft_import``). The serving engine
and the exporters read bundles only through :func:`read_adapter`.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from adalora_core.atomic import atomic_directory

PEFT_CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "adalora.json"
BUNDLE_FILES = (PEFT_CONFIG_FILE, WEIGHTS_FILE, META_FILE)
FORMAT_VERSION = 1

KEY_PREFIX = "base_model.model."
TRIPLET_NAMES = ("lora_A", "lora_B", "lora_E")
LORA_NAMES = ("lora_A.weight", "lora_B.weight")

# A fixed timestamp makes zips of equal bundles byte-identical, so their sha256 is stable.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_COPY_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle is missing a file or holds inconsistent content (the cache marks it corrupt)."""


@dataclass
class AdapterMeta:
    """Content of ``adalora.json``: what a consumer needs beyond the PEFT files."""

    task: dict[str, Any]
    base_model: str
    init_r: int
    target_r: int
    lora_alpha: float
    scaling: float
    labels: list[str] | None = None
    modules: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    trainable_params: int = 0
    max_length: int = 128
    method: str = "adalora"
    final_params: int | None = None
    # The settings the adapter was trained with (AdaLoraConfig and TrainingConfig as dicts),
    # so a run can be repeated exactly from the adapter alone.
    adalora: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AdapterMeta:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{META_FILE}: unsupported format_version {version!r}")
        known = {f for f in cls.__dataclass_fields__}
        missing = {"task", "base_model", "init_r", "target_r", "lora_alpha", "scaling"} - set(data)
        if missing:
            raise BundleError(f"{META_FILE}: missing fields {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModuleDelta:
    """One adapted module's kept triplets: ΔW = scaling · P · diag(λ) · Q."""

    lora_A: torch.Tensor  # Q, r × in
    lora_B: torch.Tensor  # P, out × r
    lora_E: torch.Tensor  # λ, r × 1
    scaling: float

    def __post_init__(self) -> None:
        r = self.lora_A.shape[0]
        if self.lora_E.shape != (r, 1) or self.lora_B.shape[1] != r:
            raise BundleError(
                "inconsistent triplet shapes: "
                f"A {tuple(self.lora_A.shape)}, B {tuple(self.lora_B.shape)}, "
                f"E {tuple(self.lora_E.shape)}"
            )

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def delta_weight(self) -> torch.Tensor:
        """ΔW in ``nn.Linear`` layout (out × in); zeros for a rank-0 module."""
        a = self.lora_A.float()
        return self.scaling * (self.lora_B.float() @ (a * self.lora_E.float()))


@dataclass
class AdapterWeights:
    """A bundle in memory: metadata, the PEFT config dict, pruned triplets and head tensors."""

    meta: AdapterMeta
    peft_config: dict[str, Any]
    modules: dict[str, ModuleDelta]
    head: dict[str, torch.Tensor]

    @property
    def total_rank(self) -> int:
        return sum(m.rank for m in self.modules.values())


def weights_to_state_dict(
    modules: Mapping[str, ModuleDelta], head: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """PEFT's saved key layout: ``base_model.model.<module>.lora_A`` and the head by its name."""
    state: dict[str, torch.Tensor] = {}
    for path, delta in modules.items():
        for name in TRIPLET_NAMES:
            state[f"{KEY_PREFIX}{path}.{name}"] = getattr(delta, name).detach().contiguous().cpu()
    for name, tensor in head.items():
        state[f"{KEY_PREFIX}{name}"] = tensor.detach().contiguous().cpu()
    return state


def split_state_dict(
    state: Mapping[str, torch.Tensor], scaling: float
) -> tuple[dict[str, ModuleDelta], dict[str, torch.Tensor]]:
    """Inverse of :func:`weights_to_state_dict`: group triplets per module, the rest is head."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(KEY_PREFIX):
            raise BundleError(f"{WEIGHTS_FILE}: unexpected key {key!r}")
        name = key[len(KEY_PREFIX) :]
        path, _, leaf = name.rpartition(".")
        if leaf in TRIPLET_NAMES:
            parts.setdefault(path, {})[leaf] = tensor
        elif leaf == "ranknum":
            continue
        else:
            head[name] = tensor
    modules: dict[str, ModuleDelta] = {}
    for path, triplet in parts.items():
        missing = [n for n in TRIPLET_NAMES if n not in triplet]
        if missing:
            raise BundleError(f"{WEIGHTS_FILE}: module {path!r} lacks {missing}")
        modules[path] = ModuleDelta(scaling=scaling, **triplet)
    return modules, head


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """A module's entry in PEFT's ``rank_pattern`` / ``alpha_pattern``, matched as PEFT matches
    it (``peft.utils.other.get_pattern_key``: the first key that is a dotted suffix regex)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def lora_scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT LoRA's scale of one module: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def split_lora_state_dict(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, ModuleDelta], dict[str, torch.Tensor]]:
    """A PEFT LoRA adapter's modules as triplets (λ = 1, the module's own scale), the rest head.

    The rank of each module is its weights' (the config's ``r`` / ``rank_pattern`` is checked
    against them at import), so ΔW = scale · B · A exactly as PEFT computes it."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(KEY_PREFIX):
            raise BundleError(f"{WEIGHTS_FILE}: unexpected key {key!r}")
        name = key[len(KEY_PREFIX) :]
        leaf = next((n for n in LORA_NAMES if name.endswith("." + n)), None)
        if leaf is None:
            head[name] = tensor
        else:
            parts.setdefault(name[: -len(leaf) - 1], {})[leaf] = tensor
    modules: dict[str, ModuleDelta] = {}
    for path, pair in parts.items():
        if set(pair) != set(LORA_NAMES):
            raise BundleError(f"{WEIGHTS_FILE}: module {path!r} lacks one of {list(LORA_NAMES)}")
        a, b = pair["lora_A.weight"], pair["lora_B.weight"]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise BundleError(
                f"module {path!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair"
            )
        rank = int(a.shape[0])
        modules[path] = ModuleDelta(
            lora_A=a,
            lora_B=b,
            lora_E=torch.ones(rank, 1, dtype=a.dtype),
            scaling=lora_scaling(config, path, rank) if rank else 0.0,
        )
    return modules, head


def write_bundle(
    weights: AdapterWeights, out_dir: Path, state: Mapping[str, torch.Tensor] | None = None
) -> Path:
    """Write the three bundle files; the directory appears complete or not at all. ``state``
    is written as given instead of the triplets (an imported adapter keeps its own tensors)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        if state is None:
            state = weights_to_state_dict(weights.modules, weights.head)
        state = {k: v.contiguous() for k, v in state.items()}
        (tmp / WEIGHTS_FILE).write_bytes(save_safetensors(state, metadata={"format": "pt"}))
        (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(weights.peft_config, indent=2))
        (tmp / META_FILE).write_text(json.dumps(weights.meta.to_json(), indent=2))
    return out_dir


def _read_files(source: Path | bytes) -> dict[str, bytes]:
    if isinstance(source, bytes | bytearray):
        return _read_zip(io.BytesIO(source))
    path = Path(source)
    if path.is_dir():
        missing = [n for n in BUNDLE_FILES if not (path / n).is_file()]
        if missing:
            raise BundleError(f"bundle {path} lacks {missing}")
        return {n: (path / n).read_bytes() for n in BUNDLE_FILES}
    if path.is_file():
        return _read_zip(path)
    raise BundleError(f"no bundle at {path}")


def _read_zip(source: io.BytesIO | Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(source) as zf:
            names = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
            missing = [n for n in BUNDLE_FILES if n not in names]
            if missing:
                raise BundleError(f"bundle zip lacks {missing}")
            return {n: zf.read(names[n]) for n in BUNDLE_FILES}
    except zipfile.BadZipFile as exc:
        raise BundleError(f"not a zip archive: {exc}") from exc


def read_adapter(source: Path | str | bytes) -> AdapterWeights:
    """Load a bundle from a directory, a zip file, or the bytes of a zip."""
    files = _read_files(Path(source) if isinstance(source, str) else source)
    try:
        meta = AdapterMeta.from_json(json.loads(files[META_FILE]))
        peft_config = json.loads(files[PEFT_CONFIG_FILE])
        state = load_safetensors(files[WEIGHTS_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"unreadable bundle metadata: {exc}") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"unreadable {WEIGHTS_FILE}: {exc}") from exc
    peft_type = peft_config.get("peft_type")
    if peft_type == "ADALORA":
        modules, head = split_state_dict(state, float(meta.scaling))
    elif peft_type == "LORA":
        modules, head = split_lora_state_dict(peft_config, state)
    else:
        raise BundleError(f"{PEFT_CONFIG_FILE}: peft_type must be ADALORA or LORA")
    declared = {m["name"]: int(m["rank"]) for m in meta.modules}
    for name, rank in declared.items():
        if name not in modules:
            raise BundleError(f"{META_FILE} lists module {name!r} missing from {WEIGHTS_FILE}")
        if modules[name].rank != rank:
            raise BundleError(
                f"module {name!r}: rank {modules[name].rank} in weights, {rank} in {META_FILE}"
            )
    return AdapterWeights(meta=meta, peft_config=peft_config, modules=modules, head=head)


def zip_bundle(bundle_dir: Path, out_path: Path | None = None) -> bytes | Path:
    """Zip a bundle (or any exported directory) deterministically.

    Returns the bytes, or writes ``out_path`` and returns it; files are streamed, so a merged
    model of several GB never sits in memory at once when ``out_path`` is given.
    """
    bundle_dir = Path(bundle_dir)
    if out_path is None:
        buffer = io.BytesIO()
        _write_zip(bundle_dir, buffer)
        return buffer.getvalue()
    out_path = Path(out_path)
    with out_path.open("wb") as handle:
        _write_zip(bundle_dir, handle)
    return out_path


def _write_zip(bundle_dir: Path, target: io.BytesIO | io.BufferedWriter) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(file.relative_to(bundle_dir).as_posix(), date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with file.open("rb") as source, zf.open(info, "w", force_zip64=True) as sink:
                shutil.copyfileobj(source, sink, _COPY_CHUNK)


def unzip_bundle(data: bytes, out_dir: Path) -> Path:
    """Unpack a zipped bundle (or exported model directory) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            target = (out_dir / name).resolve()
            if root not in target.parents and target != root:
                raise BundleError(f"zip entry escapes the target directory: {name!r}")
        zf.extractall(out_dir)
    return out_dir
