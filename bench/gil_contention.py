"""The routed forward beside a busy Python thread: the grouped op's loop in Python against the
same loop compiled by TorchScript (adalora_core/serving/grouped_kernel.py), next to the bare model.

In the server the forward thread shares the GIL with the event loop. Every torch call made from
Python gives the GIL up and must take it back, and while another thread runs Python that can take
up to the interpreter's switch interval. Run by hand:

    .venv/bin/python -m bench.gil_contention --rounds 12 --rows 32

Each round times, in turn, the bare all-MiniLM-L6-v2 forward and the engine's forward of the same
rows for 8 adapters (4 rows each) with the loop compiled and in Python; first with the process
otherwise idle, then with a second thread running a pure-Python loop. One torch thread; medians
over rounds (the first 2 dropped). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adalora_core.formats.bundle import write_bundle, zip_bundle  # noqa: E402
from adalora_core.serving import grouped, grouped_kernel  # noqa: E402
from adalora_core.serving.engine import EngineSettings, InferenceEngine  # noqa: E402
from bench.infer import FileSource, minilm_path, random_adapter  # noqa: E402
from bench.load_infer import WORDS  # noqa: E402

ADAPTERS = 8


class BusyThread:
    """A thread that runs pure Python while ``on`` is set: the event loop's stand-in."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        total = 0
        while not self._stop:
            if self.on.is_set():
                for i in range(1000):
                    total += i * i
            else:
                time.sleep(0.001)

    def close(self) -> None:
        self._stop = True
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--rows", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    tmp = Path(tempfile.mkdtemp(prefix="adalora-gil-"))
    files = {}
    for i in range(ADAPTERS):
        bundle = write_bundle(random_adapter(seed=i), tmp / f"a{i}")
        files[f"a{i}"] = Path(zip_bundle(bundle, tmp / f"a{i}.zip"))
    engine = InferenceEngine(
        FileSource(files), EngineSettings(), base_paths={"all-MiniLM-L6-v2": path}
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    bare = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rng = random.Random(0)
    loops = {
        "compiled": grouped_kernel.compiled_add_group_terms,
        "python": grouped_kernel.add_group_terms,
    }

    def sentences() -> list[str]:
        return [" ".join(rng.choices(WORDS, k=rng.randint(4, 16))) for _ in range(args.rows)]

    def time_bare(rows: list[str]) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            bare(**tokenizer(rows, padding=True, return_tensors="pt"))
        return (time.perf_counter() - started) * 1000

    def time_routed(rows: list[str], loop: str) -> tuple[float, Any]:
        grouped.compiled_add_group_terms = loops[loop]  # what RoutedLinear calls
        prepared = [engine.prepare(f"a{i % ADAPTERS}", [row]) for i, row in enumerate(rows)]
        started = time.perf_counter()
        answers = engine.run(prepared)
        return (time.perf_counter() - started) * 1000, answers

    rows = sentences()
    _, compiled_answers = time_routed(rows, "compiled")
    _, python_answers = time_routed(rows, "python")
    if compiled_answers != python_answers:
        sys.exit("the compiled and Python loops gave different answers")

    busy = BusyThread()
    samples: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for condition in ("idle", "busy thread"):
                if condition == "idle":
                    busy.on.clear()
                else:
                    busy.on.set()
                rows = sentences()
                order = ["bare", "compiled", "python"]
                rng.shuffle(order)
                for variant in order:
                    ms = time_bare(rows) if variant == "bare" else time_routed(rows, variant)[0]
                    samples.setdefault(f"{condition} / {variant}", []).append(ms)
    finally:
        busy.close()
        grouped.compiled_add_group_terms = loops["compiled"]

    medians = {k: round(statistics.median(v[2:]), 1) for k, v in samples.items()}
    print(f"{'condition / variant':<28} {'ms':>10} {'x bare':>8}")
    for key, ms in medians.items():
        condition = key.split(" / ")[0]
        print(f"{key:<28} {ms:>10.1f} {ms / medians[f'{condition} / bare']:>8.2f}")
    result = {"rows": args.rows, "rounds": args.rounds, "median_ms": medians}
    result["scripted"] = grouped_kernel.SCRIPTED
    print(json.dumps(result))


if __name__ == "__main__":
    main()
