"""The serving side of an API process, built from Settings in one place: the engine, its batcher,
the store-backed adapter source, the tenant's adapter directory and the admission step.

Every serving setting is named in `SERVING_SETTINGS` with where it goes, and
`tests/application/test_engine_factory.py` fails when an ``infer_*`` setting is added to
`service.settings.Settings` without being wired here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from adalora_core.precision import native_bf16
from adalora_core.serving.batcher import DynamicBatcher
from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.forward_process import ForwardProcessDied
from adalora_core.serving.requests import Prepared
from application.adapter_directory import AdapterDirectory
from application.adapter_source import StoreAdapterSource
from application.admission import Admission, AdmissionLimits
from application.errors import RequestError, retry_after
from service.base_models import LocalModelDirs
from service.settings import Settings
from service.store import ArtifactStore

log = logging.getLogger("adalora.application.engine_factory")

# Settings field → where it takes effect: ``engine.<EngineSettings field>``,
# ``admission.<AdmissionLimits field>``, or one of the other consumers named below.
SERVING_SETTINGS: dict[str, str] = {
    "max_batch_size": "engine.max_batch_size",
    "max_wait_ms": "engine.max_wait_ms",
    "max_batch_tokens": "engine.max_batch_tokens",
    "device_cache_bytes": "engine.device_cache_bytes",
    "host_cache_bytes": "engine.host_cache_bytes",
    "pinned_adapters": "engine.pinned_adapters",
    "infer_batching": "engine.batching",
    "infer_max_length": "engine.max_length",
    "infer_encoder_forward": "engine.encoder_forward",
    "infer_forward_deadline_s": "engine.forward_deadline_s",
    "infer_max_queued_rows": "engine.max_queued_rows",
    "infer_max_queued_rows_per_tenant": "engine.max_queued_rows_per_tenant",
    "infer_max_running_rows_per_tenant": "engine.max_running_rows_per_tenant",
    "infer_max_running_rows_per_tenant_shared": "engine.max_running_rows_per_tenant_shared",
    "infer_max_inputs": "admission.max_rows",
    "infer_max_new_tokens": "admission.max_new_tokens",
    "infer_device": "device",  # serving_device
    "infer_dtype": "dtype",  # serving_dtype
    "infer_rate_per_s": "rate_limit",  # api.main's token buckets
    "infer_burst": "rate_limit",
    "infer_rows_per_s": "rate_limit",
    "infer_rows_burst": "rate_limit",
}


def _destined(prefix: str, settings: Settings) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, destination in SERVING_SETTINGS.items():
        if destination.startswith(prefix):
            value = getattr(settings, name)
            values[destination.removeprefix(prefix)] = (
                tuple(value) if isinstance(value, list) else value
            )
    return values


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(**_destined("engine.", settings))


def admission_limits(settings: Settings) -> AdmissionLimits:
    return AdmissionLimits(
        max_batch_tokens=settings.max_batch_tokens, **_destined("admission.", settings)
    )


def serving_device(requested: str) -> torch.device:
    """The device /infer runs on; a GPU that is not there falls back to the CPU, loudly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"ADALORA_INFER_DEVICE: {requested!r} is not a device") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"ADALORA_INFER_DEVICE: {requested!r}; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (device.index or 0) >= count:
        log.warning("ADALORA_INFER_DEVICE=%s but %d GPU(s) here: serving on cpu", requested, count)
        return torch.device("cpu")
    return device


def serving_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The dtype the bases and adapters are served in.

    On a GPU: float16 as asked; bfloat16 where the GPU computes it natively (compute capability
    8.0 and up), otherwise float32 with a warning. On the CPU: bfloat16 as asked, since torch
    computes bf16 matmuls there. It is slower than float32 on many CPUs (those without bf16
    instructions convert every product), so it is there to test the half-precision serving path
    without a GPU and to halve the memory the weights take, not for speed. float16 on the CPU
    stays float32, with a warning.
    """
    if requested == "float32":
        return torch.float32
    if device.type == "cuda":
        if requested == "float16":
            return torch.float16
        if native_bf16(device):
            return torch.bfloat16
    elif requested == "bfloat16":
        return torch.bfloat16
    log.warning("ADALORA_INFER_DTYPE=%s is not served on %s: serving in float32", requested, device)
    return torch.float32


@dataclass
class Serving:
    """What an API process serves with; `close` stops its threads and the forward process."""

    engine: InferenceEngine
    batcher: DynamicBatcher
    directory: AdapterDirectory
    admission: Admission

    async def run_encoder(self, prepared: Prepared) -> list[dict[str, Any]]:
        """Encoder rows through the batcher, in the routed batches every encoder request
        shares; a forward process that died is a 503 to retry."""
        try:
            return await self.batcher.submit(prepared)
        except ForwardProcessDied as exc:
            raise RequestError(
                503, "engine_unavailable", f"{exc}; retry shortly", None, retry_after(1)
            ) from exc

    def rows_using(self, adapter_id: str) -> int:
        """Rows of this adapter in flight: encoder rows queued or in a forward, generation rows
        decoding or waiting."""
        return self.batcher.rows_of(adapter_id) + self.engine.generations_using(adapter_id)

    def forget_adapter(self, tenant_id: str, adapter_id: str) -> None:
        """The adapter was deleted: its record and its weights leave this process now."""
        self.directory.forget(tenant_id, adapter_id)
        try:
            self.engine.evict(adapter_id)
        except Exception:
            log.warning("engine could not evict %s", adapter_id, exc_info=True)

    def close(self) -> None:
        self.batcher.close()
        self.engine.close()


def start_serving(
    settings: Settings, sessions: sessionmaker[Session], store: ArtifactStore
) -> Serving:
    device = serving_device(settings.infer_device)
    engine = InferenceEngine(
        StoreAdapterSource(store),
        engine_settings(settings),
        base_paths=LocalModelDirs(settings.base_models, settings.home),
        device=device,
        dtype=serving_dtype(settings.infer_dtype, device),
    )
    directory = AdapterDirectory(sessions, settings.lookup_cache_ttl_s)
    admission = Admission(engine, directory, settings.base_models, admission_limits(settings))
    return Serving(engine, DynamicBatcher(engine), directory, admission)
