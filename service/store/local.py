"""Artifacts as files under one root directory; writes are atomic (temp file, then os.replace)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from service.store.base import (
    DEFAULT_CHUNK,
    InvalidKey,
    NotFound,
    StoredObject,
    StoreReads,
    checked_chunks,
    file_chunks,
    validate_key,
    verified,
)

# A write in progress touches its temp file with every chunk; one untouched this long belongs
# to a process that died mid-write (e.g. a SIGKILLed worker uploading a checkpoint).
STALE_TEMP_S = 3600.0


class LocalStore(StoreReads):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self.sweep_temp(STALE_TEMP_S)

    def sweep_temp(self, older_than_s: float) -> int:
        """Delete temp files left by interrupted writes; returns how many went."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self._tmp.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process swept or finished it first
                continue
        return removed

    def path_for(self, key: str) -> Path:
        """The file for ``key``; refuses anything that would land outside the root."""
        validate_key(key)
        if key.split("/")[0] == ".tmp":
            raise InvalidKey(f"invalid key {key!r}")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(f"key {key!r} escapes the store root")
        return path

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        final = self.path_for(key)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return digest.hexdigest(), size

    def put_file(self, key: str, path: str | Path) -> tuple[str, int]:
        return self.put_stream(key, file_chunks(path))

    def _existing(self, key: str) -> Path:
        path = self.path_for(key)
        if not path.is_file():
            raise NotFound(key)
        return path

    def open_read(self, key: str, expected_sha256: str | None = None) -> bytes:
        return verified(key, self._existing(key).read_bytes(), expected_sha256)

    def iter_read(
        self, key: str, chunk_size: int = DEFAULT_CHUNK, expected_sha256: str | None = None
    ) -> Iterator[bytes]:
        path = self._existing(key)
        return checked_chunks(key, file_chunks(path, chunk_size), expected_sha256)

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix/`` (e.g. all of one adapter's formats)."""
        path = self.path_for(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if relative.parts[0] == ".tmp" or not path.is_file():
                continue
            key = relative.as_posix()
            if key.startswith(prefix):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                yield StoredObject(key, stat.st_size, stat.st_mtime)
