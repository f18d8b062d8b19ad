"""Rebuild the SST-2 example files in this folder from the GLUE files (seeded, so stable).

Usage: python examples/make_sst2_samples.py /work/shared/data/glue/SST-2
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

LABEL_NAMES = {"0": "negative", "1": "positive"}
# One pass at the recipe's 1,000 updates of 16: the quickstart sees every row once, none twice.
TRAIN_ROWS = 16000


def load_glue_tsv(path: Path) -> list[tuple[str, str]]:
    """GLUE SST-2 is `sentence<TAB>label` with no quoting, so split on tabs only."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        handle.readline()  # header
        for line in handle:
            line = line.rstrip("\n")
            if line:
                sentence, label = line.split("\t")
                rows.append((sentence.strip(), LABEL_NAMES[label]))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main(glue_dir: Path) -> None:
    rng = random.Random(0)
    train = load_glue_tsv(glue_dir / "train.tsv")
    dev = load_glue_tsv(glue_dir / "dev.tsv")
    # Very short phrases (1-3 words) dominate SST-2's train split; skip them so the sample
    # reads like sentences.
    out = Path(__file__).parent
    sentences = [r for r in train if len(r[0].split()) >= 4]
    write_csv(out / "sst2_train.csv", rng.sample(sentences, TRAIN_ROWS))
    write_csv(out / "sst2_dev.csv", dev)  # the whole dev set: the quickstart's figure is on it


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/glue/SST-2"))
