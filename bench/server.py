"""A service process for the HTTP benchmarks: `adalora serve --no-worker` on a fresh home."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    home: Path, settings: dict[str, str], threads: int | None = None
) -> Iterator[tuple[str, int]]:
    """(url, pid) of a server on ``home`` with these ADALORA_* settings, until the block ends;
    a server that does not come up exits with the tail of its log."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADALORA_")}
    env.update(
        {
            "ADALORA_HOME": str(home),
            "ADALORA_INFER_RATE_PER_S": "0",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            **settings,
        }
    )
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path = home.parent / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--no-worker", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(log_path.read_text()[-4000:])
                time.sleep(0.2)
            yield url, server.pid
        finally:
            server.terminate()
            server.wait(30)


def log_tail(home: Path, chars: int = 3000) -> str:
    return (home.parent / "server.log").read_text()[-chars:]
