"""The one multipart upload path: the media type, a size limit enforced while the body streams
in, the form parsed with bounds, and the file spooled to a staging file with its sha256
(:func:`multipart_form`, :func:`staged_file`, :func:`spool`), for every route that takes a file.
A data set is then validated line by line, stored, and its row written once per
Idempotency-Key: ``POST /datasets`` and OpenAI's ``POST /v1/files`` both receive files through
:func:`receive_dataset`; ``POST /adapters/import`` takes its zip through the same steps."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from api.idempotency import replay
from application.errors import RequestError
from application.idempotency import create_once
from service import datasets as dataset_rows
from service.datasets_io import (
    DatasetError,
    DatasetLimits,
    DatasetSummary,
    UnsupportedFormat,
    check_filename,
    scan,
)
from service.ids import new_id
from service.settings import Settings
from service.store import ArtifactStore, dataset_key
from service.tables import Dataset

UPLOAD = "upload"


COPY_CHUNK = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


def too_large(limit: int) -> RequestError:
    return RequestError(
        413, "payload_too_large", f"upload exceeds max_upload_bytes ({limit} bytes)"
    )


def _size_limited(request: Request, limit: int) -> Request:
    """The same request, but reading its body fails with 413 once past ``limit`` bytes, so an
    oversized upload is refused while streaming instead of after landing on disk."""
    received = 0
    receive = request.receive

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit + MULTIPART_OVERHEAD:
                raise too_large(limit)
        return message

    return Request(request.scope, limited_receive)


@asynccontextmanager
async def multipart_form(request: Request, limit: int, max_fields: int) -> AsyncIterator[FormData]:
    """The request's multipart form (one file at most), refused with 415 for another media type
    and 413 past ``limit`` bytes, declared or streamed."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(
            415, "unsupported_media_type", "upload the file as multipart/form-data (field 'file')"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large(limit)
    async with _size_limited(request, limit).form(max_files=1, max_fields=max_fields) as form:
        yield form


def form_file(form: FormData) -> UploadFile:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        message = "a file is required (form field 'file')"
        raise RequestError(422, "validation_error", message, "file")
    return upload


def form_text(form: FormData, field: str) -> str | None:
    """A text field of the form; a file sent under its name is a 422 naming it."""
    value = form.get(field)
    if value is None or isinstance(value, str):
        return value
    raise RequestError(422, "validation_error", f"{field} must be a text field", field)


@asynccontextmanager
async def staged_file(staging: Path, suffix: str) -> AsyncIterator[Path]:
    """A fresh file under ``staging`` for one upload, removed afterwards whatever happens."""
    staging.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=staging, suffix=suffix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


async def spool(upload: UploadFile, dest: Path, limit: int) -> tuple[str, int]:
    """Copy the upload to ``dest`` in chunks (hashing as it goes), refusing more than ``limit``."""
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as handle:
        while chunk := await upload.read(COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            digest.update(chunk)
            await run_in_threadpool(handle.write, chunk)
    return digest.hexdigest(), size


def _bad_file(exc: DatasetError) -> RequestError:
    return RequestError(422, "invalid_dataset", str(exc), "file")


def _check_name(name: object, filename: str) -> str:
    if name is None or name == "":
        return filename
    if not isinstance(name, str):
        raise RequestError(422, "validation_error", "name must be a text field", "name")
    if len(name) > 255 or "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise RequestError(
            422, "validation_error", "name: at most 255 characters, no paths or '..'", "name"
        )
    return name


def upload_hash(filename: str, name: str, content_sha256: str, header: bool = True) -> str:
    """What an Idempotency-Key stands for: the same file under the same names (and, for a file
    without a header row, that too; the default leaves earlier digests as they were)."""
    text = f"{filename}\0{name}\0{content_sha256}" + ("" if header else "\0no-header")
    return hashlib.sha256(text.encode()).hexdigest()


def _check_header(value: object, fmt: str) -> bool:
    """Form field ``header``: true (default) or false, for CSV/TSV files."""
    if value is None:
        return True
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise RequestError(422, "validation_error", "must be true or false", "header")
    header = text in ("true", "1")
    if not header and fmt == "jsonl":
        raise RequestError(422, "validation_error", "applies to .csv and .tsv files only", "header")
    return header


def _insert_row(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    name: str,
    summary: DatasetSummary,
    sha256: str,
    size: int,
    key: str,
    idempotency: tuple[str, str] | None,
) -> Dataset:
    dataset = dataset_rows.create_dataset(
        session,
        dataset_id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        summary=summary,
        sha256=sha256,
        size_bytes=size,
        storage_key=key,
        idempotency_key=idempotency[0] if idempotency else None,
        request_hash=idempotency[1] if idempotency else None,
    )
    session.commit()
    return dataset


async def receive_dataset(
    request: Request,
    response: Response,
    tenant_id: str,
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    idempotency_key: str | None,
    check_form: Callable[[FormData], None] | None = None,
) -> Dataset:
    """The uploaded data set's row (a replay's, with ``response`` set to 200); ``check_form``
    refuses a form the caller's protocol does not accept before anything is read."""
    limit = settings.max_upload_bytes
    async with multipart_form(request, limit, max_fields=8) as form:
        if check_form is not None:
            check_form(form)
        upload = form_file(form)
        filename = upload.filename or ""
        try:
            fmt = check_filename(filename)
        except DatasetError as exc:
            status = 415 if isinstance(exc, UnsupportedFormat) else 422
            raise RequestError(status, "invalid_dataset", str(exc), "file") from exc
        name = _check_name(form.get("name"), filename)
        header = _check_header(form.get("header"), fmt)

        dataset_id = new_id("ds")
        key = dataset_key(tenant_id, dataset_id, fmt)
        stored = False
        async with staged_file(Path(settings.home) / "uploads", f".{fmt}") as tmp:
            try:
                content_sha256, _ = await spool(upload, tmp, limit)
                idempotency = None
                if idempotency_key is not None:
                    digest = upload_hash(filename, name, content_sha256, header)
                    idempotency = (idempotency_key, digest)
                    existing = await run_in_threadpool(
                        dataset_rows.find_by_idempotency_key, session, tenant_id, idempotency_key
                    )
                    if existing is not None:
                        return replay(existing, digest, response, UPLOAD)
                try:
                    summary = await run_in_threadpool(
                        scan, tmp, fmt, DatasetLimits.from_settings(settings), header
                    )
                except DatasetError as exc:
                    raise _bad_file(exc) from exc
                sha256, size = await run_in_threadpool(store.put_file, key, tmp)
                stored = True

                def insert() -> Dataset:
                    return _insert_row(
                        session,
                        tenant_id,
                        dataset_id,
                        name,
                        summary,
                        sha256,
                        size,
                        key,
                        idempotency,
                    )

                def find() -> Dataset | None:
                    assert idempotency is not None
                    return dataset_rows.find_by_idempotency_key(session, tenant_id, idempotency[0])

                dataset, created = await run_in_threadpool(
                    create_once, session, idempotency_key, insert, find
                )
                if not created:  # a concurrent upload with the same key won the race
                    assert idempotency is not None
                    return replay(dataset, idempotency[1], response, UPLOAD)
                stored = False  # the row owns the file now
                return dataset
            finally:
                if stored:
                    session.rollback()
                    await run_in_threadpool(store.delete, key)
