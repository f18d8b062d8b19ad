"""The artifact store contract shared by the local and S3 backends."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

DEFAULT_CHUNK = 1024 * 1024


class StoreError(Exception):
    pass


class InvalidKey(StoreError, ValueError):
    """A key that could escape the store root or is otherwise malformed."""


class NotFound(StoreError, KeyError):
    pass


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a server error (an S3 endpoint that is
    down or restarting): nothing was written, and trying again later may succeed."""


class ChecksumMismatch(StoreError):
    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(f"{key}: sha256 {actual} does not match the recorded {expected}")
        self.key = key
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified_at: float  # seconds since the epoch


@runtime_checkable
class ArtifactStore(Protocol):
    def put_file(self, key: str, path: str | Path) -> tuple[str, int]:
        """Store a local file under ``key`` atomically; returns (sha256 hex, size)."""

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store the concatenated chunks atomically; returns (sha256 hex, size)."""

    def open_read(self, key: str, expected_sha256: str | None = None) -> bytes:
        """The whole object; raises ChecksumMismatch if it does not hash to expected_sha256."""

    def iter_read(
        self, key: str, chunk_size: int = DEFAULT_CHUNK, expected_sha256: str | None = None
    ) -> Iterator[bytes]:
        """Stream the object; with expected_sha256, raises ChecksumMismatch after the last chunk."""

    def get_file(self, key: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        """Copy the object to a local file (checked), for readers that need a path."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix/``; none there is not an error."""

    def exists(self, key: str) -> bool: ...

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every complete object whose key starts with ``prefix`` (writes in progress are not
        objects yet)."""

    def sweep_temp(self, older_than_s: float) -> int:
        """Remove what interrupted writes left behind (local temp files, unfinished S3 multipart
        uploads) untouched for ``older_than_s``; returns how many went."""


def validate_key(key: str) -> str:
    """Keys are relative, '/'-separated, without '.', '..', empty parts, backslashes or NULs."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("empty key")
    if key.startswith("/") or "\\" in key or "\x00" in key or ":" in key.split("/")[0]:
        raise InvalidKey(f"invalid key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"invalid key {key!r}")
    return key


def checked_chunks(
    key: str, chunks: Iterable[bytes], expected_sha256: str | None
) -> Iterator[bytes]:
    """Pass chunks through, hashing them; on a wrong digest raise ChecksumMismatch BEFORE the
    last chunk goes out, so a consumer never receives the complete bad object."""
    digest = hashlib.sha256()
    pending: bytes | None = None
    for chunk in chunks:
        digest.update(chunk)
        if pending is not None:
            yield pending
        pending = chunk
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise ChecksumMismatch(key, expected_sha256, digest.hexdigest())
    if pending is not None:
        yield pending


def verified(key: str, data: bytes, expected_sha256: str | None) -> bytes:
    """``data`` itself, once it hashes to ``expected_sha256`` (when one is given)."""
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ChecksumMismatch(key, expected_sha256, actual)
    return data


class StoreReads:
    """What every backend derives from its own ``iter_read``."""

    def iter_read(
        self, key: str, chunk_size: int = DEFAULT_CHUNK, expected_sha256: str | None = None
    ) -> Iterator[bytes]:
        raise NotImplementedError

    def get_file(self, key: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as handle:
            for chunk in self.iter_read(key, expected_sha256=expected_sha256):
                handle.write(chunk)
        return dest


def file_chunks(path: str | Path, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk
