"""`adalora serve` (API + embedded worker) and `adalora worker` (a production queue consumer)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from service.settings import Settings, get_settings
from service.vocabulary import TRAINING_QUEUE

if TYPE_CHECKING:
    from worker.reconciler import ReconcilerThread

log = logging.getLogger("adalora.serve")

WORKER_STOP_TIMEOUT_S = 15.0
WORKER_POLL_S = 1.0
WORKER_RESTART_MIN_S = 1.0
WORKER_RESTART_MAX_S = 30.0


def worker_argv(hostname: str | None = None, loglevel: str = "INFO") -> list[str]:
    """Celery worker arguments: one job at a time, solo pool, only the training queue."""
    argv = [
        "worker",
        "--queues",
        TRAINING_QUEUE,
        "--concurrency",
        "1",
        "--pool",
        "solo",
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return argv


def start_worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    """The embedded worker: `adalora worker` in a child process with the same settings."""
    env = dict(os.environ)
    env["ADALORA_HOME"] = str(settings.home)
    env["ADALORA_DATABASE_URL"] = settings.database_url
    env["ADALORA_BROKER_URL"] = settings.broker_url
    return subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--no-reconcile"], env=env)


def stop_worker_process(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown first; a job cut short is re-queued later by the reconciler."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedWorker(threading.Thread):
    """Keeps one worker child alive for `adalora serve`: a worker that dies (OOM, a crash) is
    started again, and its job is re-queued by the reconciler once its lease expires."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="adalora-embedded-worker", daemon=True)
        self._settings = settings
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.proc = start_worker_process(settings)
        self.restarts = 0

    def run(self) -> None:
        backoff = WORKER_RESTART_MIN_S
        while not self._stopping.wait(WORKER_POLL_S):
            with self._lock:
                code = self.proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                log.warning("embedded worker exited with %s; restarting in %.0fs", code, backoff)
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = start_worker_process(self._settings)
                self.restarts += 1
            backoff = min(backoff * 2, WORKER_RESTART_MAX_S)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            stop_worker_process(self.proc)


def start_reconciler(settings: Settings) -> ReconcilerThread:
    from service.db import get_engine, make_sessionmaker
    from service.queue import enqueue_training_job
    from worker.reconciler import ReconcilerThread

    sessions = make_sessionmaker(get_engine(settings.database_url, settings.db_limits))
    thread = ReconcilerThread(
        sessions, settings, lambda job_id: enqueue_training_job(job_id, settings)
    )
    thread.start()
    return thread


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default ADALORA_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ADALORA_PORT).")] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve the API only; workers run elsewhere.")
    ] = False,
) -> None:
    """Run the service: migrate the database, start a worker and the reconciler, serve HTTP."""
    import uvicorn

    from api.main import create_app
    from cli.bootstrap import ensure_bootstrap_key
    from service.db import upgrade_to_head
    from service.tenants import WeakKey

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    settings.ensure_home()
    upgrade_to_head(settings.database_url)
    try:
        new_key = ensure_bootstrap_key(settings)
    except WeakKey as exc:
        typer.secho(f"ADALORA_API_KEY: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if new_key is not None:
        typer.secho(
            f"Bootstrap API key (shown once, store it now): {new_key}", fg=typer.colors.GREEN
        )
    bind_host, bind_port = host or settings.host, port or settings.port
    typer.secho(f"Console: http://{bind_host}:{bind_port}/ui/  (API docs: /docs)", bold=True)
    worker = None if no_worker else EmbeddedWorker(settings)
    if worker is not None:
        worker.start()
    reconciler = None if no_worker else start_reconciler(settings)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; turning it into
    # SystemExit lets the `finally` below stop the worker instead of orphaning it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(), host=bind_host, port=bind_port)
    finally:
        if reconciler is not None:
            reconciler.stop()
        if worker is not None:
            worker.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)  # a requested stop is a clean stop


def worker(
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    reconcile: Annotated[
        bool, typer.Option(help="Also run the reconciler in this process.")
    ] = True,
) -> None:
    """Consume training jobs (one at a time); run one per GPU machine."""
    from worker.celery_app import app as celery_app

    settings = get_settings()
    settings.ensure_home()
    reconciler = start_reconciler(settings) if reconcile else None
    try:
        celery_app.worker_main(worker_argv(hostname, loglevel))
    finally:
        if reconciler is not None:
            reconciler.stop()
