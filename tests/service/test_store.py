"""Artifact stores: atomic writes, keys that cannot escape, checksums checked on every read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import moto
import pytest

from service.settings import Settings
from service.store import (
    ChecksumMismatch,
    InvalidKey,
    LocalStore,
    NotFound,
    S3Store,
    StoreError,
    StoreUnavailable,
    adapter_key,
    checkpoint_key,
    dataset_key,
    get_store,
)

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    "a\\b",
    "a/b/",
    "c:/x",
    "nul\x00byte",
    ".tmp/put-x",
]


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "root")


def test_round_trip_and_digest(local: LocalStore, tmp_path: Path) -> None:
    data = b"hello " * 1000
    sha, size = local.put_stream("a/b/c.bin", [data[:10], data[10:]])
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert local.exists("a/b/c.bin")
    assert local.open_read("a/b/c.bin", sha) == data
    assert b"".join(local.iter_read("a/b/c.bin", 7, sha)) == data
    copy = local.get_file("a/b/c.bin", tmp_path / "copy.bin", sha)
    assert copy.read_bytes() == data
    source = tmp_path / "src.bin"
    source.write_bytes(b"xyz")
    assert local.put_file("f.bin", source) == (hashlib.sha256(b"xyz").hexdigest(), 3)
    local.delete("a/b/c.bin")
    local.delete("a/b/c.bin")  # deleting twice is fine
    assert not local.exists("a/b/c.bin")
    with pytest.raises(NotFound):
        local.open_read("a/b/c.bin")


def test_failed_write_leaves_nothing(local: LocalStore) -> None:
    local.put_stream("k", [b"old"])

    def broken() -> Iterator[bytes]:
        yield b"new data"
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        local.put_stream("k", broken())
    assert local.open_read("k") == b"old"  # the previous version is intact
    assert list((local.root / ".tmp").iterdir()) == []


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_cannot_escape(local: LocalStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        local.put_stream(key, [b"x"])
    with pytest.raises(InvalidKey):
        local.exists(key)


def test_symlink_escape_is_refused(local: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (local.root / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        local.put_stream("link/file", [b"x"])
    assert list(outside.iterdir()) == []


def test_checksum_mismatch(local: LocalStore) -> None:
    sha, _ = local.put_stream("k", [b"good"])
    (local.root / "k").write_bytes(b"evil")
    with pytest.raises(ChecksumMismatch) as info:
        local.open_read("k", sha)
    assert info.value.expected == sha
    with pytest.raises(ChecksumMismatch):
        b"".join(local.iter_read("k", expected_sha256=sha))
    received: list[bytes] = []
    with pytest.raises(ChecksumMismatch):
        for chunk in local.iter_read("k", chunk_size=1, expected_sha256=sha):
            received.append(chunk)
    assert b"".join(received) == b"evi"  # never the whole bad object


def test_key_helpers_are_valid_keys(local: LocalStore) -> None:
    for key in (
        dataset_key("ten_1", "ds_1", "csv"),
        adapter_key("ten_1", "ad_1", "peft"),
        checkpoint_key("job_1", 40),
    ):
        local.put_stream(key, [b"x"])
    assert (local.root / "adapters/ten_1/ad_1/peft.zip").is_file()
    local.delete_prefix("adapters/ten_1/ad_1")
    assert not local.exists(adapter_key("ten_1", "ad_1", "peft"))


def test_get_store_from_settings(tmp_path: Path) -> None:
    assert isinstance(get_store(Settings(home=tmp_path)), LocalStore)
    with pytest.raises(ValueError, match="S3_BUCKET"):
        get_store(Settings(home=tmp_path, store_backend="s3"))


# --- S3 against moto's in-process S3 implementation -----------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="artifacts")
        yield S3Store("artifacts", prefix="svc/", client=client)


def test_s3_round_trip(s3: S3Store, tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    sha, size = s3.put_stream("adapters/t/a/peft.zip", iter([data[:1000], data[1000:]]))
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    head = s3.client.head_object(Bucket="artifacts", Key="svc/adapters/t/a/peft.zip")
    assert head["Metadata"]["sha256"] == sha
    assert s3.exists("adapters/t/a/peft.zip")
    assert not s3.exists("adapters/t/a/lora.zip")
    assert s3.open_read("adapters/t/a/peft.zip", sha) == data
    assert b"".join(s3.iter_read("adapters/t/a/peft.zip", 4096, sha)) == data
    assert s3.get_file("adapters/t/a/peft.zip", tmp_path / "x", sha).read_bytes() == data
    source = tmp_path / "f"
    source.write_bytes(b"file")
    assert s3.put_file("adapters/t/a/lora.zip", source)[1] == 4
    s3.delete_prefix("adapters/t/a")
    assert not s3.exists("adapters/t/a/peft.zip")
    with pytest.raises(NotFound):
        s3.open_read("adapters/t/a/peft.zip")


def test_s3_multipart_upload(s3: S3Store) -> None:
    data = b"\x01" * (9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    calls: list[str] = []
    original: Any = s3.client.create_multipart_upload

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs["Key"])
        return original(**kwargs)

    s3.client.create_multipart_upload = spy
    sha, size = s3.put_stream("big", iter([data]))
    assert calls == ["svc/big"]
    assert s3.open_read("big", sha) == data and size == len(data)


def test_s3_checksum_mismatch_and_bad_keys(s3: S3Store) -> None:
    sha, _ = s3.put_stream("k", iter([b"good"]))
    s3.client.put_object(Bucket="artifacts", Key="svc/k", Body=b"evil")
    with pytest.raises(ChecksumMismatch):
        s3.open_read("k", sha)
    with pytest.raises(ChecksumMismatch):
        b"".join(s3.iter_read("k", expected_sha256=sha))
    for key in ("../x", "/abs", "a\\b"):
        with pytest.raises(InvalidKey):
            s3.put_stream(key, iter([b"x"]))


def started_at(s3: S3Store, when: datetime) -> None:
    """List multipart uploads as begun at ``when``: moto reports a fixed 2010 date for all."""
    real = s3.client.get_paginator

    class Pages:
        def __init__(self, name: str) -> None:
            self.pages = real(name)

        def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
            for page in self.pages.paginate(**kwargs):
                for upload in page.get("Uploads", []):
                    upload["Initiated"] = when
                yield page

    s3.client.get_paginator = Pages


def test_s3_sweep_aborts_only_stale_unfinished_uploads_under_its_prefix(s3: S3Store) -> None:
    client = s3.client
    client.create_multipart_upload(Bucket="artifacts", Key="svc/datasets/t/d/data.csv")
    other = client.create_multipart_upload(Bucket="artifacts", Key="elsewhere/x")
    started_at(s3, datetime.now(UTC) - timedelta(minutes=5))
    assert s3.sweep_temp(3600) == 0  # begun 5 minutes ago: maybe live, left alone
    assert s3.sweep_temp(60) == 1  # older than a minute: ours goes, the other prefix stays
    left = client.list_multipart_uploads(Bucket="artifacts").get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]


def test_s3_unreachable_is_store_unavailable_and_a_missing_key_is_not(tmp_path: Path) -> None:
    """A closed port: botocore's connection error becomes StoreUnavailable (a StoreError, so
    the API answers 503 and the worker's store-error handling applies)."""
    import socket

    import boto3
    from botocore.config import Config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    down = S3Store("artifacts", client=client)
    source = tmp_path / "f"
    source.write_bytes(b"x")
    for attempt in (
        lambda: down.put_file("a/b", source),
        lambda: down.open_read("a/b"),
        lambda: down.delete("a/b"),
        lambda: list(down.list_objects()),
        lambda: down.exists("a/b"),
    ):
        with pytest.raises(StoreUnavailable):
            attempt()
    assert issubclass(StoreUnavailable, StoreError)


def test_s3_a_missing_key_is_not_found_not_unavailable(s3: S3Store) -> None:
    with pytest.raises(NotFound):
        s3.open_read("nothing/here")
    with pytest.raises(NotFound):
        s3.iter_read("nothing/here")
