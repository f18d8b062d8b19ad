"""The "OpenAI fine-tuning" script in docs/api.md, run as written against a live server (a
worker thread trains what it submits): only its environment names this service."""

from __future__ import annotations

import contextlib
import io
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.tables import Job
from tests.api.openai.conftest import LLAMA
from tests.api.openai.test_fine_tuning import CHATS, jsonl
from tests.conftest import TenantKey
from worker.runner import run_job

DOCS = Path(__file__).resolve().parents[3] / "docs" / "api.md"


def docs_script() -> str:
    section = DOCS.read_text().split("## OpenAI fine-tuning", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/api.md has no script under 'OpenAI fine-tuning'"
    return match.group(1)


def test_the_documented_script_fine_tunes_and_answers_here(
    live_server: Any,
    tenant: TenantKey,
    settings: Any,
    sessions: Any,
    store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chats.jsonl").write_bytes(jsonl(CHATS))
    monkeypatch.setenv("OPENAI_BASE_URL", f"{live_server.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", tenant.secret)
    monkeypatch.setenv("BASE_MODEL", LLAMA)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with sessions() as session:
                queued = session.scalars(select(Job.id).where(Job.status == "queued")).all()
            for job_id in queued:
                run_job(job_id, settings, sessions, store)
            stop.wait(0.2)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(docs_script(), str(DOCS), "exec"), {"__name__": "__main__"})
    finally:
        stop.set()
        thread.join(120)
    lines = printed.getvalue().splitlines()
    assert any(line.startswith("Job status: succeeded") for line in lines), lines
    assert lines[-1].startswith(f"ft:{LLAMA}:acme:support:ftjob-"), lines
