from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "worker"))
sys.path.insert(0, str(TESTS / "e2e"))

from harness import Client, adalora, free_port, new_api_key, service_env  # noqa: E402
from service_fixtures import save_tiny_bert, write_sentiment_csv  # noqa: E402


@dataclass
class LiveService:
    url: str
    key: str
    data: Path
    client: Client


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """`adalora serve` (embedded defaults) on a free port with a tiny model registered."""
    tmp = tmp_path_factory.mktemp("cli")
    model = save_tiny_bert(tmp / "tiny")
    key, port = new_api_key(), free_port()
    env = service_env(
        {
            "ADALORA_HOME": str(tmp / "home"),
            "ADALORA_API_KEY": key,
            "ADALORA_BASE_MODELS": json.dumps({"tiny": str(model)}),
        }
    )
    serve = adalora(["serve", "--port", str(port)], env, tmp / "serve.log")
    url = f"http://127.0.0.1:{port}"
    client = Client(url, key)
    try:
        client.wait_ready([serve])
        yield LiveService(url, key, write_sentiment_csv(tmp / "train.csv", 48), client)
    finally:
        serve.stop()
