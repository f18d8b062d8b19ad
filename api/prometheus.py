"""Prometheus metrics: request counts and latency by route template, jobs by status from SQL,
the encoder batcher's forwards (how many rows each carried), and the generation decoders' load
(rows running and waiting, steps and tokens so far)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import jobs

if TYPE_CHECKING:  # the engine's module imports torch; scraping needs none of it
    from application.engine_factory import Serving


class JobsCollector(Collector):
    """Counts jobs per status at scrape time; queued jobs are the training queue's depth."""

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self._sessions() as session:
                counts = jobs.count_by_status(session)
        except SQLAlchemyError:
            return
        by_status = GaugeMetricFamily("adalora_jobs", "Jobs by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "adalora_queue_depth", "Jobs waiting for a worker.", value=counts.get("queued", 0)
        )


class DecodeCollector(Collector):
    """Each causal-LM base's continuous decoder, read at scrape time."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self._engine()
        decoders = engine.decoders.all() if engine is not None else []
        running = GaugeMetricFamily(
            "adalora_decode_running_rows", "Rows in the running decode batch.", labels=["base"]
        )
        waiting = GaugeMetricFamily(
            "adalora_decode_waiting_rows", "Rows waiting to join the batch.", labels=["base"]
        )
        steps = CounterMetricFamily("adalora_decode_steps", "Decode steps run.", labels=["base"])
        tokens = CounterMetricFamily(
            "adalora_generated_tokens", "Tokens generated.", labels=["base"]
        )
        preempted = CounterMetricFamily(
            "adalora_decode_preempted_rows",
            "Rows taken out of the batch to give another tenant its place.",
            labels=["base"],
        )
        refused = CounterMetricFamily(
            "adalora_decode_refused_rows",
            "Rows refused with 429 because the generation queue was full.",
            labels=["base"],
        )
        for decoder in decoders:
            name = [decoder.base.name]
            running.add_metric(name, decoder.running)
            waiting.add_metric(name, decoder.waiting)
            steps.add_metric(name, decoder.steps)
            tokens.add_metric(name, decoder.generated)
            preempted.add_metric(name, decoder.preempted)
            refused.add_metric(name, decoder.refused)
        yield from (running, waiting, steps, tokens, preempted, refused)


class ForwardProcessCollector(Collector):
    """The encoder forward process: children started, and batches lost by how it failed."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        engine = self._engine()
        encoder = None if engine is None else engine.encoder
        if encoder is None:
            return
        yield CounterMetricFamily(
            "adalora_forward_process_starts",
            "Encoder forward processes started (the first, and each replacement).",
            value=encoder.stats.starts,
        )
        failures = CounterMetricFamily(
            "adalora_forward_process_failures",
            "Batches lost to a forward process that exited or missed its deadline.",
            labels=["reason"],
        )
        for reason in ("exited", "timeout"):
            failures.add_metric([reason], encoder.stats.failures.get(reason, 0))
        yield failures


class BatcherCollector(Collector):
    """The /infer batcher's forwards: rows / batches is the mean batch a scrape interval saw."""

    def __init__(self, batcher: Callable[[], Any]) -> None:
        self._batcher = batcher

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        batcher = self._batcher()
        if batcher is None:
            return
        stats = batcher.stats
        yield CounterMetricFamily(
            "adalora_infer_batches", "Batched forwards run for /infer.", value=stats.batches
        )
        yield CounterMetricFamily(
            "adalora_infer_batch_rows", "Rows carried by those forwards.", value=stats.rows
        )
        yield GaugeMetricFamily(
            "adalora_infer_largest_batch_rows",
            "Most rows one forward has carried.",
            value=stats.largest_batch_rows,
        )


class ApiMetrics:
    def __init__(
        self,
        sessions: Callable[[], Session],
        serving: Callable[[], Serving | None],
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "adalora_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "adalora_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            registry=self.registry,
        )
        self.registry.register(JobsCollector(sessions))
        self.registry.register(DecodeCollector(lambda: _part(serving(), "engine")))
        self.registry.register(ForwardProcessCollector(lambda: _part(serving(), "engine")))
        self.registry.register(BatcherCollector(lambda: _part(serving(), "batcher")))


def _part(serving: Serving | None, name: str) -> Any:
    """The serving part a collector reads, or None before startup (or after shutdown)."""
    return None if serving is None else getattr(serving, name)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), or "unmatched"."""
    route = scope.get("route")
    return getattr(route, "path", "unmatched") if route is not None else "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware, so streamed responses are timed to their last byte."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
