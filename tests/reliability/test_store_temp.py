"""A process killed mid-write leaves a temp file in the local store's ``.tmp/``; the next store
opened on that directory removes it once it is clearly abandoned, and never a live one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from service.store.local import STALE_TEMP_S, LocalStore


def test_abandoned_temp_files_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_stream("datasets/t/ds/data.csv", [b"text\nhello\n"])
    abandoned = tmp_path / "store" / ".tmp" / "put-abandoned"
    live = tmp_path / "store" / ".tmp" / "put-live"
    abandoned.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(abandoned, (old, old))

    reopened = LocalStore(tmp_path / "store")
    assert not abandoned.exists()
    assert live.exists()
    assert reopened.open_read("datasets/t/ds/data.csv") == b"text\nhello\n"
