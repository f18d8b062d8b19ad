"""A real S3 endpoint over HTTP on loopback: moto's standalone server (`ThreadedMotoServer`, a
Flask app speaking the S3 REST protocol) in this process, behind a cuttable TCP proxy.

``stop()`` takes it down as a crash would: every open connection is dropped at once (the proxy),
then the server stops listening. Its objects live in this process's memory, so ``start()``
brings back the same bucket, as a real server restarts with its disk.
"""

from __future__ import annotations

import hashlib
import secrets
from types import TracebackType
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from tests.e2e.harness import free_port
from tests.reliability.tcp_proxy import TcpProxy

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class LoopbackS3:
    def __init__(self) -> None:
        self.bucket = f"adalora-{secrets.token_hex(6)}"  # the server's state is per process
        self._port = free_port()
        self._server: ThreadedMotoServer | None = None
        self.proxy = TcpProxy("127.0.0.1", self._port)
        self.url = f"http://127.0.0.1:{self.proxy.port}"
        # The test's own view, straight to the server: never cut, never slowed.
        self.direct = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{self._port}", region_name=REGION, **CREDENTIALS
        )

    def __enter__(self) -> LoopbackS3:
        self.proxy.__enter__()
        self.start()
        self.direct.create_bucket(Bucket=self.bucket)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            for key in self.objects():
                self.direct.delete_object(Bucket=self.bucket, Key=key)
            for key, upload_id in self.unfinished_uploads():
                self.direct.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            self.direct.delete_bucket(Bucket=self.bucket)
            self._server.stop()
        self.proxy.close()

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port, verbose=False)
        self._server.start()
        self.proxy.restore()

    def stop(self) -> None:
        self.proxy.cut()
        assert self._server is not None
        self._server.stop()
        self._server = None

    def env(self) -> dict[str, str]:
        """The service's settings for this bucket, and botocore's own: three attempts in its
        standard retry mode, so a request to a server that is down fails within seconds."""
        return {
            "ADALORA_STORE_BACKEND": "s3",
            "ADALORA_S3_BUCKET": self.bucket,
            "ADALORA_S3_ENDPOINT_URL": self.url,
            "ADALORA_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_RETRY_MODE": "standard",
            "AWS_MAX_ATTEMPTS": "3",
        }

    def objects(self) -> dict[str, str]:
        """Every object in the bucket → the sha256 of its bytes."""
        found: dict[str, str] = {}
        for page in self.direct.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                body = self.direct.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                found[item["Key"]] = hashlib.sha256(body).hexdigest()
        return found

    def unfinished_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload begun and neither completed nor aborted."""
        answer: dict[str, Any] = self.direct.list_multipart_uploads(Bucket=self.bucket)
        return [(u["Key"], u["UploadId"]) for u in answer.get("Uploads", [])]
