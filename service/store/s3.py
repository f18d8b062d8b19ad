"""Artifacts in an S3 bucket (or MinIO via endpoint_url); multipart uploads complete atomically."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from service.store.base import (
    DEFAULT_CHUNK,
    NotFound,
    StoredObject,
    StoreReads,
    checked_chunks,
    validate_key,
    verified,
)

SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024


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
        self.client.upload_fileobj(
            fileobj, self.bucket, self.object_key(key), ExtraArgs={"Metadata": {"sha256": sha256}}
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
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except self.client.exceptions.NoSuchKey as exc:
            raise NotFound(key) from exc

    def open_read(self, key: str, expected_sha256: str | None = None) -> bytes:
        return verified(key, self._get(key)["Body"].read(), expected_sha256)

    def iter_read(
        self, key: str, chunk_size: int = DEFAULT_CHUNK, expected_sha256: str | None = None
    ) -> Iterator[bytes]:
        body = self._get(key)["Body"]
        return checked_chunks(key, body.iter_chunks(chunk_size), expected_sha256)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_prefix(self, prefix: str) -> None:
        full = self.object_key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
            for item in page.get("Contents", []):
                yield StoredObject(
                    item["Key"][len(base) :], int(item["Size"]), item["LastModified"].timestamp()
                )

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True
