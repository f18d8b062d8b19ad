"""Generation under abuse, on a live server: bounded requests, bounded queues, fair turns across
tenants, and rows that stop when their client goes (docs/reliability.md has each finding).

The tiny Llama decodes in about a millisecond a step; each test slows its decode steps so that a
request lasts long enough to watch. Every check counts decode steps or rows, never seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from adalora_core.serving.decoding import ContinuousDecoder
from service.settings import Settings
from tests.conftest import TenantKey

STEP_S = 0.02  # each decode step of these tests sleeps this long


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A batch of 2 rows and one row of queue per tenant beyond it, so that limits show."""
    return settings.model_copy(
        update={
            "max_batch_size": 2,
            "infer_max_queued_rows": 4,
            "infer_max_queued_rows_per_tenant": 1,
        }
    )


@pytest.fixture(autouse=True)
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    step = ContinuousDecoder._step

    def slowed(self: ContinuousDecoder) -> None:
        time.sleep(STEP_S)
        step(self)

    monkeypatch.setattr(ContinuousDecoder, "_step", slowed)


@pytest.fixture
def decoder(app: Any) -> Callable[[], ContinuousDecoder]:
    def the_decoder() -> ContinuousDecoder:
        """The tiny Llama's decoder, once the first request has started it."""
        decoders = app.state.serving.engine.decoders
        wait_for(lambda: len(decoders.all()) == 1, "the decoder to start")
        return decoders.all()[0]

    return the_decoder


def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Liveness guard only: the check is the condition, not the time."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def openai_for(live_server: Any, tenant: TenantKey, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0, **options
    )


@pytest.fixture
def streams(live_server: Any) -> Iterator[Callable[..., threading.Thread]]:
    """Background streaming chats, each read to its end; joined after the test."""
    started: list[threading.Thread] = []

    def start(tenant: TenantKey, model: str, max_tokens: int, seen: list[Any]) -> threading.Thread:
        def run() -> None:
            client = openai_for(live_server, tenant)
            try:
                chunks = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "w1 w2"}],
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=True,
                )
                seen.append([c.choices[0].finish_reason for c in chunks if c.choices][-1])
            except openai.APIError as exc:
                seen.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.join(timeout=60)


def test_one_request_may_not_ask_for_more_rows_than_the_limit(
    live_server, tenant, llama_adapter
) -> None:
    """300 prompts × n=8 is 2,400 rows: it was queued whole; now the row limit refuses it."""
    adapter_id, _ = llama_adapter
    client = openai_for(live_server, tenant)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=adapter_id, prompt=["w1"] * 300, n=8, max_tokens=4)
    assert info.value.body["param"] == "prompt"
    assert "at most 256 rows" in info.value.body["message"]


def test_a_full_queue_is_a_429_with_retry_after(
    live_server, tenant, llama_adapter, decoder, streams
) -> None:
    """2 rows run and 1 waits; a 4th gets 429 overloaded at once instead of a place in line."""
    adapter_id, _ = llama_adapter
    seen: list[Any] = []
    for _ in range(3):
        streams(tenant, adapter_id, 40, seen)
    wait_for(lambda: decoder().running == 2 and decoder().waiting == 1, "2 running, 1 waiting")
    with pytest.raises(openai.RateLimitError) as info:
        openai_for(live_server, tenant).chat.completions.create(
            model=adapter_id, messages=[{"role": "user", "content": "w3"}], max_tokens=4
        )
    assert info.value.code == "overloaded"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert decoder().refused == 1


def test_another_tenant_gets_a_place_within_one_step(
    live_server, tenant, other_tenant, llama_adapter, decoder, streams, app
) -> None:
    """Tenant A fills the batch with long rows and has one more waiting ahead of everyone;
    tenant B's short chat still takes a place at the next step (one of A's rows waits
    meanwhile) and is answered while A's rows run."""
    adapter_id, _ = llama_adapter
    seen: list[Any] = []
    a_rows = [streams(tenant, adapter_id, 50, seen) for _ in range(3)]
    wait_for(lambda: decoder().running == 2 and decoder().waiting == 1, "A: 2 running, 1 waiting")
    base_client = openai_for(live_server, other_tenant)
    steps_before = decoder().steps
    answer = base_client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "w5"}], max_tokens=4
    )
    steps_taken = decoder().steps - steps_before
    assert answer.choices[0].message.content is not None
    assert decoder().preempted >= 1
    assert sum(t.is_alive() for t in a_rows) == 3, "A's rows finished first: B waited for them"
    assert steps_taken <= 4 + 2  # B's 4 tokens, plus at most one step to get in (and one slack)
    for thread in a_rows:
        thread.join(timeout=60)
    assert seen == ["length"] * 3  # A's preempted row went on and finished whole


def test_rows_are_charged_against_the_keys_row_budget(
    settings, tenant, llama_adapter, monkeypatch
) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    metered = settings.model_copy(update={"infer_rows_per_s": 0.5, "infer_rows_burst": 6})
    adapter_id, _ = llama_adapter
    with TestClient(create_app(metered)) as http:
        body = {"model": adapter_id, "prompt": ["w1"] * 4, "max_tokens": 2, "temperature": 0}
        first = http.post("/v1/completions", headers=tenant.headers, json=body)
        assert first.status_code == 200, first.text
        second = http.post("/v1/completions", headers=tenant.headers, json=body)
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "rate_limited"
        assert int(second.headers["retry-after"]) >= 1


def _steps_after_giving_up(
    live_server: Any, tenant: TenantKey, decoder: Callable[[], ContinuousDecoder], body: dict
) -> int:
    """Send ``body`` on a raw connection, hang up once its rows have decoded a few steps, and
    count the steps run after the client was gone."""
    with httpx.Client(base_url=live_server.url, headers=tenant.headers) as http:
        warm = {**body, "max_tokens": 1, "n": 1}  # load the base and the adapter first
        assert http.post("/v1/chat/completions", json=warm).status_code == 200
    url = httpx.URL(live_server.url)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {tenant.secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    started = decoder().steps
    with socket.create_connection((url.host, url.port)) as client:
        client.sendall(head.encode() + payload)
        wait_for(lambda: decoder().running == body["n"], "the rows to run")
        wait_for(lambda: decoder().steps >= started + 3, "a few steps")
    gone_at = decoder().steps
    wait_for(lambda: decoder().running == 0 and decoder().waiting == 0, "the rows to leave")
    return decoder().steps - gone_at


def test_an_abandoned_request_stops_generating(live_server, tenant, llama_adapter, decoder) -> None:
    """A chat with n=2 and 50 tokens whose client gives up: its rows leave within a step or
    two instead of running all 50 steps for nobody."""
    adapter_id, _ = llama_adapter
    body = {
        "model": adapter_id,
        "messages": [{"role": "user", "content": "w1 w2"}],
        "max_tokens": 50,
        "n": 2,
        "temperature": 0,
    }
    assert _steps_after_giving_up(live_server, tenant, decoder, body) <= 3


def test_a_stream_abandoned_mid_way_stops_generating(
    live_server, tenant, llama_adapter, decoder
) -> None:
    adapter_id, _ = llama_adapter
    body = {
        "model": adapter_id,
        "messages": [{"role": "user", "content": "w1 w2"}],
        "max_tokens": 50,
        "stream": True,
    }
    with (
        httpx.Client(base_url=live_server.url, headers=tenant.headers) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the opening chunk; now hang up
    gone_at = decoder().steps
    wait_for(lambda: decoder().running == 0, "the row to leave")
    assert decoder().steps - gone_at <= 3


def test_image_parts_and_bad_content_name_the_field_plainly(
    live_server, tenant, llama_adapter
) -> None:
    adapter_id, _ = llama_adapter
    client = openai_for(live_server, tenant)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as picture:
        client.chat.completions.create(
            model=adapter_id, messages=[{"role": "user", "content": [image]}]
        )
    assert picture.value.body["message"].startswith("image inputs are not supported")
    assert picture.value.body["param"] == "messages.0.content.0"
    with pytest.raises(openai.BadRequestError) as number:
        client.chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": 7}])
    assert number.value.body["param"] == "messages.0.content"
    with pytest.raises(openai.BadRequestError) as name:
        client.chat.completions.create(
            model=adapter_id,
            messages=[{"role": "user", "content": "w1", "name": "x" * 1_000_000}],
        )
    assert name.value.body["param"] == "messages.0.name"


def test_infer_on_a_plain_generating_base_generates(live_server, tenant) -> None:
    """/infer with adapter_id null on a causal-LM base used to load it as an encoder and answer
    an embedding, ignoring max_new_tokens."""
    body = {"adapter_id": None, "base_model": "tiny-llama", "inputs": ["w1 w2"]}
    body["parameters"] = {"max_new_tokens": 3}
    with httpx.Client(base_url=live_server.url, headers=tenant.headers) as http:
        response = http.post("/infer", json=body)
    assert response.status_code == 200, response.text
    (row,) = response.json()["outputs"]
    assert set(row) == {"text"}
    assert 1 <= len(row["text"].split()) <= 3
