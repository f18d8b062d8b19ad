"""Artifacts in an S3 bucket (or MinIO via endpoint_url); multipart uploads complete atomically.

An endpoint that is down, cuts a connection or answers 5xx raises ``StoreUnavailable`` (after
botocore's own retries), so callers handle it like any other store error: the API answers 503,
the worker logs it. An upload cut in the middle leaves an unfinished multipart upload on the
server, invisible as an object but holding its parts; ``sweep_temp`` aborts the stale ones
(`adalora store gc` runs it).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.store.base import (
    DEFAULT_CHUNK,
    NotFound,
    StoredObject,
    StoreReads,
    StoreUnavailable,
    checked_chunks,
    validate_key,
    verified,
)

SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
SERVER_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}


def _is_unavailable(exc: BaseException) -> bool:
    """A transport failure or a server-side error, anywhere in the exception's chain."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BotoConnectionError | HTTPClientError):
            return True
        if isinstance(seen, ClientError):
            error = seen.response.get("Error", {})
            status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or error.get("Code") in SERVER_BUSY_CODES
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _reaching(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if isinstance(exc, StoreUnavailable) or not _is_unavailable(exc):
            raise
        raise StoreUnavailable(f"the S3 store did not answer ({what}): {exc}") from exc


class S3Store(StoreReads):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _upload(self, key: str, fileobj: Any, sha256: str) -> None:
        # upload_fileobj switches to multipart above its threshold; the object appears only
        # once the upload completes, so readers never see a partial artifact.
        with _reaching(f"upload {key}"):
            self.client.upload_fileobj(
                fileobj,
                self.bucket,
                self.object_key(key),
                ExtraArgs={"Metadata": {"sha256": sha256}},
            )

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        self.object_key(key)
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            spool.seek(0)
            self._upload(key, spool, digest.hexdigest())
        return digest.hexdigest(), size

    def put_file(self, key: str, path: str | Path) -> tuple[str, int]:
        self.object_key(key)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(DEFAULT_CHUNK):
                digest.update(chunk)
            size = handle.tell()
            handle.seek(0)
            self._upload(key, handle, digest.hexdigest())
        return digest.hexdigest(), size

    def _get(self, key: str) -> Any:
        with _reaching(f"read {key}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            except self.client.exceptions.NoSuchKey as exc:
                raise NotFound(key) from exc

    def open_read(self, key: str, expected_sha256: str | None = None) -> bytes:
        body = self._get(key)["Body"]
        with _reaching(f"read {key}"):
            data = body.read()
        return verified(key, data, expected_sha256)

    def iter_read(
        self, key: str, chunk_size: int = DEFAULT_CHUNK, expected_sha256: str | None = None
    ) -> Iterator[bytes]:
        body = self._get(key)["Body"]
        return checked_chunks(key, self._chunks(key, body, chunk_size), expected_sha256)

    @staticmethod
    def _chunks(key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        with _reaching(f"read {key}"):
            yield from body.iter_chunks(chunk_size)

    def delete(self, key: str) -> None:
        with _reaching(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_prefix(self, prefix: str) -> None:
        full = self.object_key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        with _reaching(f"delete {prefix}/"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if objects:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with _reaching("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(
                        item["Key"][len(base) :],
                        int(item["Size"]),
                        item["LastModified"].timestamp(),
                    )

    def sweep_temp(self, older_than_s: float) -> int:
        """Abort multipart uploads under our prefix started more than ``older_than_s`` ago: a
        client cut off mid-upload (its process killed, or the server down when it tried to
        abort) leaves one behind, and the server keeps its parts until it is aborted."""
        cutoff = time.time() - older_than_s
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_multipart_uploads")
        aborted = 0
        with _reaching("list uploads"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with _reaching(f"look up {key}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True
