"""Our rows under OpenAI's names: a data set is a file ("file-…"), a job a fine-tuning job
("ftjob-…"), a checkpoint "ftckpt-…". The id after the prefix is ours, so each object is the
same row seen through another shape, and an id maps back without a lookup table."""

from __future__ import annotations

from typing import Literal

Kind = Literal["file", "ftjob", "ftckpt"]
OURS: dict[Kind, str] = {"file": "ds", "ftjob": "job", "ftckpt": "ckpt"}


def to_openai(kind: Kind, our_id: str) -> str:
    prefix, _, rest = our_id.partition("_")
    assert prefix == OURS[kind], f"{our_id!r} is not a {OURS[kind]} id"
    return f"{kind}-{rest}"


def from_openai(kind: Kind, openai_id: str) -> str | None:
    """Our id for an OpenAI one of ``kind``; None when it is not one (the route's 404)."""
    prefix, sep, rest = openai_id.partition("-")
    if prefix != kind or not sep or not rest or "_" in rest or "-" in rest:
        return None
    return f"{OURS[kind]}_{rest}"


RESULT = "-metrics"


def result_file_id(job_id: str) -> str:
    """A job's result file (its metrics CSV) as OpenAI lists it in ``result_files``."""
    return to_openai("file", job_id.replace("job_", "ds_", 1)) + RESULT


def job_of_result_file(file_id: str) -> str | None:
    """The job whose result file ``file_id`` is; None for any other id."""
    if not file_id.endswith(RESULT):
        return None
    dataset_like = from_openai("file", file_id[: -len(RESULT)])
    return dataset_like.replace("ds_", "job_", 1) if dataset_like else None
