"""Dynamic batching: concurrent requests share one routed forward in a worker thread.

A request is split into chunks that each fit `max_batch_size` rows and `max_batch_tokens`
(rows × padded length, plus new tokens for generation), so one huge request cannot exhaust
memory. When the worker is free it takes what is queued (what arrived during the last forward)
and runs every chunk of the oldest one's batch key (same base, same sampling settings) that
fits; with `max_wait_ms` > 0 it first lingers that long after the oldest chunk for more rows.
With batching off each chunk runs alone (the benchmark's comparison point).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.requests import Prepared

Rows = list[dict[str, Any]]


@dataclass
class _Chunk:
    prepared: Prepared
    future: Future[Rows] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def cost_per_row(self) -> int:
        generation = self.prepared.generation
        return self.prepared.longest + (generation.max_new_tokens if generation else 0)


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest_batch_rows: int = 0
    largest_batch_tokens: int = 0


class DynamicBatcher:
    """Owns the forward thread; `submit` (async) and `submit_blocking` (threads) feed it."""

    def __init__(self, engine: InferenceEngine, settings: EngineSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or engine.settings
        self.stats = BatchStats()
        self._queue: queue.Queue[_Chunk | None] = queue.Queue()
        # Rows of each adapter queued or in a forward (an adapter is not unloaded under them).
        self._rows_of: Counter[str] = Counter()
        self._rows_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="adalora-batcher", daemon=True)
        self._thread.start()

    # ---- entry points ----------------------------------------------------------------------
    async def submit(self, prepared: Prepared) -> Rows:
        futures = self._enqueue(prepared)
        parts = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return [row for part in parts for row in part]

    def submit_blocking(self, prepared: Prepared) -> Rows:
        return [row for f in self._enqueue(prepared) for row in f.result()]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _enqueue(self, prepared: Prepared) -> list[Future[Rows]]:
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        cost = _Chunk(prepared).cost_per_row
        rows = max(1, min(self.settings.max_batch_size, self.settings.max_batch_tokens // cost))
        chunks = [_Chunk(part) for part in prepared.split(rows)]
        for chunk in chunks:
            self._hold(chunk)
            self._queue.put(chunk)
        return [c.future for c in chunks]

    def rows_of(self, adapter_id: str) -> int:
        """Rows of this adapter waiting for or in a forward."""
        with self._rows_lock:
            return self._rows_of[adapter_id]

    def _hold(self, chunk: _Chunk) -> None:
        if chunk.prepared.adapter is not None:
            with self._rows_lock:
                self._rows_of[chunk.prepared.adapter.adapter_id] += chunk.prepared.rows

    def _release(self, chunk: _Chunk) -> None:
        """Before its answer is set, so whoever reads the answer sees the rows gone."""
        if chunk.prepared.adapter is not None:
            adapter_id = chunk.prepared.adapter.adapter_id
            with self._rows_lock:
                self._rows_of[adapter_id] -= chunk.prepared.rows
                if self._rows_of[adapter_id] <= 0:
                    del self._rows_of[adapter_id]

    # ---- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        pending: deque[_Chunk] = deque()
        while True:
            if not pending:
                item = self._queue.get()
                if item is None:
                    return
                pending.append(item)
            if self.settings.batching and not self._gather(pending):
                while pending:  # closing: finish what was accepted
                    self._run(self._select(pending))
                return
            batch = self._select(pending) if self.settings.batching else [pending.popleft()]
            self._run(batch)

    def _gather(self, pending: deque[_Chunk]) -> bool:
        """Pull queued chunks until the batch is full or the oldest has waited max_wait_ms."""
        deadline = pending[0].queued_at + self.settings.max_wait_ms / 1000
        while sum(c.prepared.rows for c in pending) < self.settings.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            pending.append(item)
        return True

    def _select(self, pending: deque[_Chunk]) -> list[_Chunk]:
        """The oldest chunk plus every later one of its batch key that still fits the limits."""
        first = pending.popleft()
        key = first.prepared.batch_key
        batch, rows, widest = [first], first.prepared.rows, first.cost_per_row
        kept: deque[_Chunk] = deque()
        while pending:
            chunk = pending.popleft()
            new_rows = rows + chunk.prepared.rows
            new_widest = max(widest, chunk.cost_per_row)
            if (
                chunk.prepared.batch_key == key
                and new_rows <= self.settings.max_batch_size
                and new_rows * new_widest <= self.settings.max_batch_tokens
            ):
                batch.append(chunk)
                rows, widest = new_rows, new_widest
            else:
                kept.append(chunk)
        pending.extend(kept)
        return batch

    def _run(self, batch: list[_Chunk]) -> None:
        live = [c for c in batch if c.future.set_running_or_notify_cancel()]
        for chunk in batch:
            if chunk not in live:  # cancelled: its rows are gone
                self._release(chunk)
        if not live:
            return
        rows = sum(c.prepared.rows for c in live)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest_batch_rows = max(self.stats.largest_batch_rows, rows)
        self.stats.largest_batch_tokens = max(
            self.stats.largest_batch_tokens, rows * max(c.cost_per_row for c in live)
        )
        try:
            answers = self.engine.run([c.prepared for c in live])
        except Exception as exc:  # a failed forward fails its own requests, never the worker
            for chunk in live:
                self._release(chunk)
                chunk.future.set_exception(exc)
            return
        for chunk, answer in zip(live, answers, strict=True):
            self._release(chunk)
            chunk.future.set_result(answer)
