"""The encoder forward in a process of its own, so it never waits for the event loop's GIL.

A forward is several hundred torch ops, and each one hands the GIL back and must take it again.
In a thread beside the API's event loop every op boundary can wait for the loop's Python work:
a 16-row mixed batch took 6.6 ms per row under load against 4.0 alone (docs/benchmarks.md). The
child runs routed sequence-classification forwards only; the parent still tokenizes, pads,
caches adapters and shapes the answers. A base's weights and an adapter's factors cross once,
in shared memory; each batch then sends its padded ids and row groups and gets the logits (and
the final hidden states, for base rows) back as plain arrays.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as torch_mp  # registers the shared-memory tensor pickling
from torch import nn

from adalora_core.compute_choices import EncoderPlacement
from adalora_core.errors import ConfigError
from adalora_core.serving.bases import SharedBase, wrap_base
from adalora_core.serving.forward import forward_here
from adalora_core.serving.grouped import (
    Heads,
    Layers,
    LowRankDelta,
    RowGroup,
    Strategy,
    group_rows,
)
from adalora_core.serving.loading import LoadedAdapter
from adalora_core.serving.malloc import tune_glibc_malloc

log = logging.getLogger("adalora.serving.forward_process")


class ForwardProcessDied(RuntimeError):
    """The forward process exited (killed, out of memory) or hung past its deadline; its batch
    fails and the next batch starts a new one."""


@dataclass(frozen=True)
class ForwardDeadline:
    """How long a batch may take in the child before the parent gives up on it and replaces
    the child: a floor, plus time per padded token (a 32 × 128 batch takes about 0.2 s on two
    cores, docs/benchmarks.md), plus the child's rebuild of a base it has not seen yet."""

    floor_s: float = 10.0
    per_token_s: float = 0.002
    new_base_s: float = 60.0

    def seconds(self, tokens: int, new_base: bool) -> float:
        return self.floor_s + tokens * self.per_token_s + (self.new_base_s if new_base else 0.0)


@dataclass
class ForwardProcessStats:
    """For /metrics: children started, and batches lost by how the child failed."""

    starts: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def uses_process(placement: EncoderPlacement, device: torch.device) -> bool:
    """ "auto" is the process on CPU only: on a GPU an op's GIL hand-off is a kernel launch,
    and CUDA tensors do not cross processes here."""
    if placement == "process" and device.type != "cpu":
        raise ConfigError("encoder_forward", f"the forward process runs on CPU only, not {device}")
    return placement == "process" or (placement == "auto" and device.type == "cpu")


class ForwardProcess:
    """Parent side: an `EncoderForward` that runs each batch in the child, started on first use.

    Thread-safe: batches of different bases take turns, as they would for the one CPU.
    """

    def __init__(
        self,
        threads: int,
        tune_malloc: bool,
        strategy: Strategy,
        deadline: ForwardDeadline | None = None,
    ) -> None:
        self.threads = threads
        self.tune_malloc = tune_malloc
        self.strategy = strategy
        self.deadline = deadline or ForwardDeadline()
        self.stats = ForwardProcessStats()
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._conn: Connection | None = None
        self._child: Any = None
        self._bases: dict[int, int] = {}  # id(SharedBase) → key in the current child
        self._adapters: dict[int, int] = {}  # id(LoadedAdapter) → key in the current child
        self._dropped: deque[int] = deque()

    def __call__(
        self,
        base: SharedBase,
        padded: Mapping[str, torch.Tensor],
        groups: Sequence[RowGroup],
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with self._lock:
            conn = self._connection(base)
            try:
                new_base = id(base) not in self._bases
                base_key = self._send_base(conn, base)
                owners = [
                    key
                    for g in groups
                    for key in [self._send_adapter(conn, g.adapter)] * (g.stop - g.start)
                ]
                while self._dropped:  # popleft: a finalizer may append meanwhile
                    conn.send(("drop", self._dropped.popleft()))
                arrays = {name: tensor.cpu().numpy() for name, tensor in padded.items()}
                conn.send(("forward", base_key, arrays, owners, hidden))
                limit = self.deadline.seconds(padded["input_ids"].numel(), new_base)
                if not conn.poll(limit):
                    self._replace(f"did not answer within {limit:.0f} s", "timeout")
                    raise ForwardProcessDied(
                        f"the encoder forward process did not answer within {limit:.0f} s"
                    )
                reply = conn.recv()
            except (EOFError, OSError) as exc:
                self._replace("exited", "exited")
                raise ForwardProcessDied("the encoder forward process exited") from exc
        if reply[0] == "error":
            raise RuntimeError(f"encoder forward failed in the forward process: {reply[1]}")
        _, logits, hidden = reply
        return torch.from_numpy(logits), None if hidden is None else torch.from_numpy(hidden)

    def close(self) -> None:
        with self._lock:
            self._stop()

    # ---- the child's lifetime ---------------------------------------------------------------
    def _connection(self, base: SharedBase) -> Connection:
        if self._conn is None:
            context = torch_mp.get_context("forkserver")
            # Children fork from a server that has imported these once; the first start in a
            # process also preloads the base's model module (transformers imports it lazily,
            # seconds per child otherwise).
            context.set_forkserver_preload([__name__, type(base.model).__module__])
            parent, child = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(child, self.threads, self.tune_malloc, self.strategy),
                name="adalora-encoder-forward",
                daemon=True,
            )
            process.start()
            child.close()
            self._conn, self._child = parent, process
            self.stats.starts += 1
            log.info("encoder forward process %d started", process.pid)
        return self._conn

    def _replace(self, what: str, reason: str) -> None:
        """The child failed its batch: log it, count it, stop it; the next batch starts anew."""
        pid = None if self._child is None else self._child.pid
        log.error("encoder forward process %s %s; the next batch starts a new one", pid, what)
        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
        if self._child is not None and self._child.is_alive():
            self._child.kill()  # a hung child would not read the close
        self._stop()

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._child.join(timeout=10)
            if self._child.is_alive():
                self._child.kill()
                self._child.join()
        self._conn = self._child = None
        self._bases.clear()
        self._adapters.clear()
        self._dropped.clear()

    # ---- what the child holds ---------------------------------------------------------------
    def _send_base(self, conn: Connection, base: SharedBase) -> int:
        key = self._bases.get(id(base))
        if key is None:
            base.model.share_memory()
            state = base.model.state_dict(keep_vars=False)
            key = next(self._keys)
            conn.send(("base", key, base.kind, type(base.model), base.model.config, state))
            self._bases[id(base)] = key
        return key

    def _send_adapter(self, conn: Connection, adapter: LoadedAdapter | None) -> int | None:
        if adapter is None:
            return None
        key = self._adapters.get(id(adapter))
        if key is None:
            key = next(self._keys)
            templates = adapter.base.head_templates
            heads = None
            if adapter.heads is not None:
                heads = {
                    name: None if module is templates.get(name) else module.share_memory()
                    for name, module in adapter.heads.items()
                }
            for delta in adapter.layers:
                if delta is not None:
                    delta.q.share_memory_()
                    delta.p.share_memory_()
            conn.send(("adapter", key, adapter.layers, heads))
            self._adapters[id(adapter)] = key
            weakref.finalize(adapter, self._forget, id(adapter), key)
        return key

    def _forget(self, adapter_id: int, key: int) -> None:
        """The parent let go of an adapter (evicted): the child drops its copy with the next
        batch. Runs at garbage collection, so it only queues."""
        if self._adapters.get(adapter_id) == key:
            del self._adapters[adapter_id]
            self._dropped.append(key)


# ---- the child ---------------------------------------------------------------------------------
def _serve(conn: Connection, threads: int, tune_malloc: bool, strategy: Strategy) -> None:
    torch.set_num_threads(threads)
    if tune_malloc:
        tune_glibc_malloc()
    bases: dict[int, SharedBase] = {}
    adapters: dict[int, tuple[tuple[LowRankDelta | None, ...], dict[str, Any] | None]] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "base":
            _, key, model_kind, model_class, config, state = message
            bases[key] = _rebuild_base(model_kind, model_class, config, state)
        elif kind == "adapter":
            _, key, layers, heads = message
            adapters[key] = (layers, heads)
        elif kind == "drop":
            adapters.pop(message[1], None)
        else:
            _, base_key, arrays, owners, hidden = message
            try:
                base = bases[base_key]
                reply = ("ok", *_forward(base, adapters, arrays, owners, hidden, strategy))
            except Exception as exc:  # the parent fails this batch's requests, not the process
                reply = ("error", f"{type(exc).__name__}: {exc}")
            conn.send(reply)


def _rebuild_base(
    kind: Any, model_class: type[nn.Module], config: Any, state: dict[str, torch.Tensor]
) -> SharedBase:
    """The parent's base again: its class on its config, wrapped the same way, its tensors."""
    model = model_class(config)
    shared = wrap_base("", kind, model, None, 0)
    model.load_state_dict(state, assign=True)
    model.eval().requires_grad_(False)
    return shared


def _forward(
    base: SharedBase,
    adapters: Mapping[int, tuple[tuple[LowRankDelta | None, ...], dict[str, Any] | None]],
    arrays: Mapping[str, np.ndarray],
    owners: Sequence[int | None],
    hidden: bool,
    strategy: Strategy,
) -> tuple[np.ndarray, np.ndarray | None]:
    def parts(key: int | None) -> tuple[Layers, Heads]:
        if key is None:
            return None, None
        layers, heads = adapters[key]
        if heads is None:
            return layers, None
        return layers, {n: base.head_templates[n] if m is None else m for n, m in heads.items()}

    groups = group_rows(owners, parts, same=operator.eq)
    padded = {name: torch.from_numpy(array) for name, array in arrays.items()}
    logits, states = forward_here(strategy)(base, padded, groups, hidden)
    return logits.numpy(), None if states is None else states.float().numpy()
