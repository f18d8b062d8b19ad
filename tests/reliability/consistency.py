"""The store and the rows agree: no succeeded job without its files, no file without its row."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select

from service.db import make_engine, make_sessionmaker
from service.tables import Adapter, Checkpoint, Dataset, Job


def assert_store_matches_rows(database_url: str, store_dir: Path) -> None:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            jobs = session.scalars(select(Job)).all()
            adapters = {a.id: a for a in session.scalars(select(Adapter))}
            datasets = session.scalars(select(Dataset)).all()
            checkpoints = session.scalars(select(Checkpoint)).all()
    finally:
        engine.dispose()
    expected: dict[str, str | None] = {d.storage_key: d.sha256 for d in datasets}
    for adapter in adapters.values():
        for info in adapter.formats.values():
            expected[info["storage_key"]] = info["sha256"]
    for checkpoint in checkpoints:  # a checkpoint row names its step's adapter
        for info in checkpoint.formats.values():
            expected[info["storage_key"]] = info["sha256"]
    for job in jobs:
        if job.status == "succeeded":
            assert job.adapter_id in adapters, f"succeeded job {job.id} has no adapter row"
        if job.status not in ("succeeded", "failed", "cancelled") and job.checkpoint_key:
            expected[job.checkpoint_key] = None  # a live job's checkpoint: no digest in a row
    # ``.tmp/`` holds writes in progress (renamed into place when complete); a process killed
    # mid-write leaves its temp file there, outside every key, so it is never served.
    found = {
        str(path.relative_to(store_dir)): path
        for path in store_dir.rglob("*")
        if path.is_file() and path.relative_to(store_dir).parts[0] != ".tmp"
    }
    assert set(found) == set(expected), {
        "files without a row": sorted(set(found) - set(expected)),
        "rows without a file": sorted(set(expected) - set(found)),
    }
    for key, sha256 in expected.items():
        if sha256 is not None:
            assert hashlib.sha256(found[key].read_bytes()).hexdigest() == sha256, key
