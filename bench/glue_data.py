"""GLUE TSV parsing for the benchmark (library code never reads /work/shared).

Rules from shared/data/README.md: split on tabs only with no quote handling, MRPC files start
with a UTF-8 BOM, CoLA files have no header row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from adalora_core.tasks import TaskSpec

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@dataclass(frozen=True)
class GlueTask:
    directory: str
    spec: TaskSpec
    metric: str  # the headline dev metric


TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask(
        "SST-2",
        TaskSpec("classification", "sentence", label_column="label", labels=("0", "1")),
        "accuracy",
    ),
    "rte": GlueTask(
        "RTE",
        TaskSpec(
            "classification",
            "sentence1",
            text_pair_column="sentence2",
            label_column="label",
            labels=("not_entailment", "entailment"),
        ),
        "accuracy",
    ),
    "mrpc": GlueTask(
        "MRPC",
        TaskSpec(
            "classification",
            "sentence1",
            text_pair_column="sentence2",
            label_column="label",
            labels=("0", "1"),
        ),
        "accuracy",
    ),
    "cola": GlueTask(
        "CoLA",
        TaskSpec("classification", "sentence", label_column="label", labels=("0", "1")),
        "matthews",
    ),
}


def _read_tsv(path: Path, encoding: str = "utf-8") -> list[list[str]]:
    with path.open(encoding=encoding, newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def load_split(task: str, split: str, root: Path = DEFAULT_ROOT) -> list[dict[str, str]]:
    """Rows of ``train`` or ``dev`` as dicts with the columns of ``TASKS[task].spec``."""
    path = root / TASKS[task].directory / f"{split}.tsv"
    if task == "sst2":
        header, *rows = _read_tsv(path)
        assert header == ["sentence", "label"], header
        return [{"sentence": r[0], "label": r[1]} for r in rows]
    if task == "rte":
        header, *rows = _read_tsv(path)
        assert header == ["index", "sentence1", "sentence2", "label"], header
        return [{"sentence1": r[1], "sentence2": r[2], "label": r[3]} for r in rows]
    if task == "mrpc":
        header, *rows = _read_tsv(path, encoding="utf-8-sig")
        assert header[0] == "Quality", header
        return [{"sentence1": r[3], "sentence2": r[4], "label": r[0]} for r in rows]
    if task == "cola":
        return [{"sentence": r[3], "label": r[1]} for r in _read_tsv(path)]
    raise KeyError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
