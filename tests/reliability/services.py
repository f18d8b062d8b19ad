"""Process-level helpers for the reliability tests: a private redis-server the test may kill and
restart empty, and the service's environment (a throw-away PostgreSQL database, a tiny model)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.e2e.harness import Proc, free_port, service_env


class PrivateRedis:
    """``redis-server`` on a free port with no persistence: a restart starts with no queue."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server binary not found"
            if IN_CI:
                pytest.fail(message + " (CI=true: required)")
            # Justified skip: a laptop without redis-server; CI (CI=true) fails above instead.
            pytest.skip(message)
        self._binary = binary
        self._workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.starts = 0
        self.proc: Proc | None = None

    def start(self) -> None:
        argv = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self._workdir)]
        self.starts += 1
        self.proc = Proc(argv, {}, self._workdir / f"redis-{self.starts}.log")
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.popen.poll() is not None:
                    pytest.fail(f"redis-server did not start:\n{self.proc.tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.stop()

    def queue_length(self, queue: str) -> int:
        import redis

        return int(redis.Redis(port=self.port).llen(queue))


def reliability_env(
    home: Path, database_url: str, broker_url: str, key: str, tiny_model: Path
) -> dict[str, str]:
    """Fast leases and reconciling, so lost work is noticed within seconds."""
    return service_env(
        {
            "ADALORA_HOME": str(home),
            "ADALORA_DATABASE_URL": database_url,
            "ADALORA_BROKER_URL": broker_url,
            "ADALORA_API_KEY": key,
            "ADALORA_BASE_MODELS": json.dumps({"tiny": str(tiny_model)}),
            "ADALORA_LEASE_SECONDS": "2",
            "ADALORA_RECONCILE_INTERVAL_S": "0.5",
            "ADALORA_JOBS_RATE_PER_S": "1000",
            "ADALORA_JOBS_BURST": "1000",
        }
    )
