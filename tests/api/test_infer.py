"""POST /infer over HTTP: real bundles in the store, tenant scoping, 404/409/422, concurrency."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from service import adapters as adapter_rows
from service.store import adapter_key
from tests.conftest import TEST_BASE_MODEL, TenantKey
from tests.serving.tiny_serving import (
    bert_layer_paths,
    make_adapter,
    make_model,
    make_tokenizer,
    merged_reference,
)


@pytest.fixture
def tiny_base(settings: Any) -> Path:
    """The settings' tiny-test-model directory, holding the serving tests' tiny BERT."""
    path = Path(settings.base_models[TEST_BASE_MODEL])
    make_model("bert").save_pretrained(path)
    make_tokenizer(with_cls=True).save_pretrained(path)
    return path


@pytest.fixture
def stored_adapter(store_bundle: Any, tiny_base: Path) -> Callable[..., tuple[str, Any]]:
    """stored_adapter(tenant, seed) stores a real peft zip + row; returns (id, weights)."""

    def make(tenant: TenantKey, seed: int, bundle_base: str = TEST_BASE_MODEL) -> tuple[str, Any]:
        l0, l1 = bert_layer_paths(0), bert_layer_paths(1)
        ranks = {l0["q"]: 1 + seed % 4, l0["v"]: 2, l1["up"]: seed % 3, l1["down"]: 3}
        weights = make_adapter(
            TEST_BASE_MODEL, "classification", ranks, seed=seed, labels=["neg", "pos"]
        )
        weights = dataclasses.replace(
            weights, meta=dataclasses.replace(weights.meta, base_model=bundle_base)
        )
        return store_bundle(tenant, weights, TEST_BASE_MODEL), weights

    return make


def expected_scores(weights: Any, text: str) -> list[float]:
    enc = make_tokenizer(with_cls=True)(text, return_tensors="pt")
    with torch.no_grad():
        logits = merged_reference(weights)(**enc).logits[0]
    return torch.softmax(logits, -1).tolist()


def test_infer_answers_with_the_adapter(client, tenant, stored_adapter) -> None:
    adapter_id, weights = stored_adapter(tenant, seed=1)
    texts = ["w1 w2 w3", ["w4 w5", "w6"]]
    response = client.post(
        "/infer", headers=tenant.headers, json={"adapter_id": adapter_id, "inputs": texts}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["adapter_id"] == adapter_id
    first = body["outputs"][0]
    assert first["scores"]["neg"] == pytest.approx(
        expected_scores(weights, "w1 w2 w3")[0], abs=1e-5
    )
    assert first["label"] in ("neg", "pos")
    assert set(body["outputs"][1]) == {"label", "score", "scores"}


def test_base_rows_return_embeddings(client, tenant, tiny_base) -> None:
    response = client.post(
        "/infer",
        headers=tenant.headers,
        json={"adapter_id": None, "base_model": TEST_BASE_MODEL, "inputs": ["w1 w2"]},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"][0]["embedding"]) == 32


def test_other_tenants_and_unknown_adapters_are_404(
    client, tenant, other_tenant, stored_adapter
) -> None:
    adapter_id, _ = stored_adapter(other_tenant, seed=2)
    for ident in (adapter_id, "ad_does_not_exist"):
        response = client.post(
            "/infer", headers=tenant.headers, json={"adapter_id": ident, "inputs": ["w1"]}
        )
        assert response.status_code == 404, response.text
    assert (
        client.post("/infer", json={"adapter_id": adapter_id, "inputs": ["w1"]}).status_code == 401
    )


def test_checksum_failure_is_409_and_others_keep_serving(
    client, tenant, stored_adapter, store, settings, sessions
) -> None:
    good, _ = stored_adapter(tenant, seed=3)
    bad, _ = stored_adapter(tenant, seed=4)
    path = Path(settings.store_dir) / adapter_key(tenant.id, bad, "peft")
    path.write_bytes(path.read_bytes()[:-5] + b"xxxxx")
    response = client.post(
        "/infer", headers=tenant.headers, json={"adapter_id": bad, "inputs": ["w1"]}
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "adapter_corrupt"
    with sessions() as session:
        row = adapter_rows.get_adapter(session, tenant.id, bad)
        leaks = [row.formats["peft"]["storage_key"], row.formats["peft"]["sha256"], "sha256 "]
    assert not [leak for leak in leaks if leak in response.text], response.text
    again = client.post(
        "/infer", headers=tenant.headers, json={"adapter_id": bad, "inputs": ["w1"]}
    )
    assert again.status_code == 409
    ok = client.post("/infer", headers=tenant.headers, json={"adapter_id": good, "inputs": ["w1"]})
    assert ok.status_code == 200, ok.text


def test_a_missing_artifact_is_503_and_serves_once_it_is_back(
    client, tenant, stored_adapter, sessions, settings
) -> None:
    adapter_id, _ = stored_adapter(tenant, seed=5)
    path = Path(settings.store_dir) / adapter_key(tenant.id, adapter_id, "peft")
    aside = path.with_suffix(".aside")
    path.rename(aside)  # a restore or replication still in progress
    body = {"adapter_id": adapter_id, "inputs": ["w1"]}
    response = client.post("/infer", headers=tenant.headers, json=body)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "adapter_unavailable"
    with sessions() as session:
        assert adapter_rows.get_adapter(session, tenant.id, adapter_id).status == "ready"
    aside.rename(path)
    assert client.post("/infer", headers=tenant.headers, json=body).status_code == 200


def test_one_bad_read_is_re_verified_before_the_adapter_is_condemned(
    client, tenant, stored_adapter, sessions, monkeypatch
) -> None:
    from service.store import ChecksumMismatch
    from service.store.local import LocalStore

    adapter_id, _ = stored_adapter(tenant, seed=6)
    real = LocalStore.open_read
    failures = {"left": 1}

    def torn_once(self, key, expected_sha256=None):
        if failures["left"]:
            failures["left"] -= 1
            raise ChecksumMismatch(key, expected_sha256, "0" * 64)
        return real(self, key, expected_sha256)

    monkeypatch.setattr(LocalStore, "open_read", torn_once)
    body = {"adapter_id": adapter_id, "inputs": ["w1"]}
    response = client.post("/infer", headers=tenant.headers, json=body)
    assert response.status_code == 200, response.text
    assert failures["left"] == 0
    with sessions() as session:
        assert adapter_rows.get_adapter(session, tenant.id, adapter_id).status == "ready"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": ["w1"] * 300}, "inputs"),
        ({"inputs": [" ".join(["w2"] * 100)], "parameters": {"truncate": False}}, "inputs[0]"),
        ({"inputs": [["a", "b", "c"]]}, "inputs[0]"),
        ({"inputs": []}, "inputs"),
        ({"inputs": ["w1"], "parameters": {"beams": 4}}, "parameters.beams"),
        ({"inputs": ["w1"], "parameters": {"max_new_tokens": 10**6}}, "parameters.max_new_tokens"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client, tenant, stored_adapter, body, field) -> None:
    adapter_id, _ = stored_adapter(tenant, seed=5)
    response = client.post(
        "/infer", headers=tenant.headers, json={"adapter_id": adapter_id, **body}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_concurrent_http_requests_get_their_own_adapters(client, tenant, stored_adapter) -> None:
    adapters = [stored_adapter(tenant, seed=10 + i) for i in range(3)]
    texts = ["w1 w2 w3", "w9 w8", "w5 w5 w5 w5"]
    work = [(adapters[i % 3][0], texts[i % 3]) for i in range(12)]
    # References first, serially: building them reseeds the global RNG.
    want = [expected_scores(adapters[i % 3][1], texts[i % 3]) for i in range(12)]

    def call(item: tuple[str, str]) -> list[float]:
        adapter_id, text = item
        response = client.post(
            "/infer", headers=tenant.headers, json={"adapter_id": adapter_id, "inputs": [text]}
        )
        assert response.status_code == 200, response.text
        scores = response.json()["outputs"][0]["scores"]
        return [scores["neg"], scores["pos"]]

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(call, work))
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5)


def test_metrics_count_the_batchers_forwards_and_rows(
    client, tenant, stored_adapter, settings
) -> None:
    adapter_id, _ = stored_adapter(tenant, seed=4)
    for inputs in (["w1 w2"], ["w3", "w4 w5", "w6"]):
        response = client.post(
            "/infer", headers=tenant.headers, json={"adapter_id": adapter_id, "inputs": inputs}
        )
        assert response.status_code == 200, response.text
    settings.metrics_token = "scrape-secret"
    text = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).text
    assert "adalora_infer_batches_total 2.0" in text  # one request at a time: one forward each
    assert "adalora_infer_batch_rows_total 4.0" in text
    assert "adalora_infer_largest_batch_rows 3.0" in text


def test_missing_base_model_directory_is_503(client, tenant, settings) -> None:
    response = client.post(
        "/infer",
        headers=tenant.headers,
        json={"adapter_id": None, "base_model": TEST_BASE_MODEL, "inputs": ["w1"]},
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "base_model_unavailable"
    directory = settings.base_models[TEST_BASE_MODEL]
    assert directory not in response.text and str(settings.home) not in response.text


def test_unknown_base_model_is_422(client, tenant) -> None:
    response = client.post(
        "/infer",
        headers=tenant.headers,
        json={"adapter_id": None, "base_model": "no-such-model", "inputs": ["w1"]},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "base_model"


def test_deleted_adapter_leaves_the_engine_cache(client, tenant, stored_adapter) -> None:
    from adalora_core.serving.cache import AdapterState

    adapter_id, _ = stored_adapter(tenant, seed=7)
    body = {"adapter_id": adapter_id, "inputs": ["w1 w2"]}
    assert client.post("/infer", headers=tenant.headers, json=body).status_code == 200
    engine = client.app.state.serving.engine
    assert engine.state(adapter_id) is AdapterState.READY_DEVICE
    assert client.delete(f"/adapters/{adapter_id}", headers=tenant.headers).status_code == 204
    assert engine.state(adapter_id) is AdapterState.ABSENT
    assert client.post("/infer", headers=tenant.headers, json=body).status_code == 404


def test_infer_conforms_to_its_schema(
    tiny_base: Path, stored_adapter: Any, tenant: TenantKey, app: Any, live_server: Any
) -> None:
    """Schemathesis over POST /infer with the engine running: no 5xx, every response matches
    the schema. Generated bodies that name an adapter are pointed at a real one, so the fuzzing
    reaches the engine and not only the 404 path."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    from api.ratelimit import TokenBuckets

    adapter_id, _ = stored_adapter(tenant, seed=1)
    app.state.rate_limits["auth_failures"] = TokenBuckets(rate=0, burst=1)  # wrong keys on purpose
    schema = schemathesis.openapi.from_dict(app.openapi()).include(path="/infer")
    statuses: list[int] = []

    @given(case=schema.as_strategy())
    @hypothesis_settings(
        max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    def check(case: Any) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("adapter_id"), str):
            case.body["adapter_id"] = adapter_id
        # Schema-valid but semantically bad input (e.g. over-long text with truncate=false)
        # is rightly refused with a 4xx.
        response = case.call_and_validate(
            base_url=live_server.url,
            headers=tenant.headers,
            excluded_checks=[positive_data_acceptance],
        )
        statuses.append(response.status_code)

    check()
    assert 200 in statuses, f"the fuzzing never reached the engine: {sorted(set(statuses))}"


def test_a_cold_infer_reads_the_adapter_row_once(client, tenant, stored_adapter) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    adapter_id, _ = stored_adapter(tenant, seed=7)
    reads: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM adapters" in statement:
            reads.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        body = {"adapter_id": adapter_id, "inputs": ["w1"]}
        assert client.post("/infer", headers=tenant.headers, json=body).status_code == 200
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len(reads) == 1, reads  # the route's own tenant-scoped read; the load reuses it


def test_an_adapter_whose_bundle_names_a_path_shares_the_base_loaded_by_name(
    app, client, tenant, stored_adapter, tiny_base
) -> None:
    """Bundles written before the worker recorded names carry the worker's path to the base;
    the adapter row's registered name wins, so adapter rows and base-only rows run on one copy
    of the base (and share a forward)."""
    adapter_id, weights = stored_adapter(tenant, seed=2, bundle_base=str(tiny_base))
    assert weights.meta.base_model == str(tiny_base)
    both = [
        {"adapter_id": adapter_id, "inputs": ["w1 w2"]},
        {"adapter_id": None, "base_model": TEST_BASE_MODEL, "inputs": ["w1 w2"]},
    ]
    for body in both:
        assert client.post("/infer", headers=tenant.headers, json=body).status_code == 200
    engine = app.state.serving.engine
    assert [name for name, _ in engine.bases.loaded()] == [TEST_BASE_MODEL]
    ref = app.state.serving.directory.find(tenant.id, adapter_id).ref  # as admission reads it
    with_adapter = engine.prepare(ref, ["w1 w2"])
    base_only = engine.prepare(None, ["w1"], base_model=TEST_BASE_MODEL)
    assert with_adapter.base is base_only.base
    assert with_adapter.batch_key == base_only.batch_key  # the batcher may join them
    joined = engine.run([with_adapter, base_only])  # one routed forward for both kinds
    assert set(joined[0][0]) == {"label", "score", "scores"} and "embedding" in joined[1][0]
    scores = engine.infer(ref, ["w1 w2"])[0]["scores"]
    by_name = dataclasses.replace(
        weights, meta=dataclasses.replace(weights.meta, base_model=TEST_BASE_MODEL)
    )
    want = expected_scores(by_name, "w1 w2")
    assert [scores["neg"], scores["pos"]] == pytest.approx(want, abs=1e-5)


@pytest.fixture
def tight_pool(settings: Any) -> Any:
    """A small pool that cannot wait long: 3 connections, 3 s to get one. Requests prepare in
    the event loop's worker threads (6 on this machine), so a request that needed two
    connections at once, or held one through a 2 s load, would leave others past the wait."""
    settings.db_pool_timeout_s = 3.0
    settings.db_pool_size = 3
    settings.db_max_overflow = 0
    return settings


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_fifty_cold_adapters_at_once_do_not_drain_the_pool(
    tight_pool: Any, tenant, stored_adapter, live_server, monkeypatch
) -> None:
    """50 first requests for 50 different adapters, each load slowed to 2 s: a request that held
    its pooled connection through the load (or took a second one for the store read) would
    leave the others waiting past the pool timeout."""
    import httpx

    from application.adapter_source import StoreAdapterSource

    adapter_ids = [stored_adapter(tenant, seed=i)[0] for i in range(50)]
    real_read = StoreAdapterSource.read

    def slow_read(self: Any, ref: Any) -> Any:
        time.sleep(2.0)
        return real_read(self, ref)

    monkeypatch.setattr(StoreAdapterSource, "read", slow_read)
    start = threading.Barrier(50)

    def first_request(adapter_id: str) -> int:
        with httpx.Client(base_url=live_server.url, timeout=120) as http:
            start.wait()
            body = {"adapter_id": adapter_id, "inputs": ["w1 w2"]}
            return http.post("/infer", json=body, headers=tenant.headers).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(first_request, adapter_ids))
    assert codes == [200] * 50, sorted(set(codes))


def test_a_warm_short_request_is_prepared_on_the_event_loop(
    client, tenant, stored_adapter, monkeypatch
) -> None:
    from application import admission

    adapter_id, weights = stored_adapter(tenant, seed=5)
    threaded: list[str] = []
    admit_in_thread = admission.Admission.infer

    def counted(self: Any, *args: Any) -> Any:
        threaded.append(args[0].inputs.rows[0][:10])
        return admit_in_thread(self, *args)

    monkeypatch.setattr(admission.Admission, "infer", counted)
    body = {"adapter_id": adapter_id, "inputs": ["w1 w2 w3"]}
    long_text = " ".join(["w4"] * (admission.INLINE_PREPARE_CHARS // 3 + 1))
    for inputs in (["w1 w2 w3"], ["w1 w2 w3"], [long_text]):
        response = client.post("/infer", headers=tenant.headers, json={**body, "inputs": inputs})
        assert response.status_code == 200, response.text
    # cold: a worker thread loads it; warm and short: the loop; warm but long: a thread again
    assert threaded == ["w1 w2 w3", long_text[:10]]
    scores = client.post("/infer", headers=tenant.headers, json=body).json()["outputs"][0]
    assert [scores["scores"]["neg"], scores["scores"]["pos"]] == pytest.approx(
        expected_scores(weights, "w1 w2 w3"), abs=1e-5
    )


def test_a_dead_forward_process_is_503_and_the_next_request_serves(
    client, tenant, stored_adapter, caplog
) -> None:
    import os
    import signal

    adapter_id, weights = stored_adapter(tenant, seed=6)
    body = {"adapter_id": adapter_id, "inputs": ["w1 w2 w3"]}
    assert client.post("/infer", headers=tenant.headers, json=body).status_code == 200
    encoder = client.app.state.serving.engine.encoder
    assert encoder is not None  # "auto" on a CPU: encoder forwards run in their own process
    os.kill(encoder._child.pid, signal.SIGKILL)
    encoder._child.join()
    with caplog.at_level(logging.ERROR, logger="adalora.serving.forward_process"):
        response = client.post("/infer", headers=tenant.headers, json=body)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert any("exited" in r.getMessage() for r in caplog.records), "its death left no log line"
    again = client.post("/infer", headers=tenant.headers, json=body)
    assert again.status_code == 200, again.text
    scores = again.json()["outputs"][0]["scores"]
    assert [scores["neg"], scores["pos"]] == pytest.approx(
        expected_scores(weights, "w1 w2 w3"), abs=1e-5
    )


def test_the_thread_placement_setting_serves_without_a_forward_process(
    settings, tenant, stored_adapter, monkeypatch
) -> None:
    """ADALORA_INFER_ENCODER_FORWARD=thread reaches the engine (it used to be dropped on the way,
    so every engine ran "auto": a forward process on the CPU)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from service.settings import Settings

    monkeypatch.setenv("ADALORA_INFER_ENCODER_FORWARD", "thread")
    from_env = Settings(**settings.model_dump(exclude={"infer_encoder_forward"}))
    assert from_env.infer_encoder_forward == "thread"
    adapter_id, weights = stored_adapter(tenant, seed=6)
    with TestClient(create_app(from_env)) as thread_client:
        body = {"adapter_id": adapter_id, "inputs": ["w1 w2 w3"]}
        response = thread_client.post("/infer", headers=tenant.headers, json=body)
        assert response.status_code == 200, response.text
        assert thread_client.app.state.serving.engine.encoder is None
    scores = response.json()["outputs"][0]["scores"]
    assert [scores["neg"], scores["pos"]] == pytest.approx(
        expected_scores(weights, "w1 w2 w3"), abs=1e-5
    )


def test_a_hung_forward_process_is_replaced_after_its_deadline(
    settings, tenant, stored_adapter
) -> None:
    """A forward process that stops answering used to hang every encoder request with it; now
    its batch fails with 503 and Retry-After once its deadline passes, the child is replaced,
    and /metrics counts it."""
    import os
    import signal

    from fastapi.testclient import TestClient

    from api.main import create_app

    quick = settings.model_copy(update={"infer_forward_deadline_s": 1.0, "metrics_token": "scrape"})
    adapter_id, weights = stored_adapter(tenant, seed=6)
    body = {"adapter_id": adapter_id, "inputs": ["w1 w2 w3"]}
    with TestClient(create_app(quick), raise_server_exceptions=False) as http:
        assert http.post("/infer", headers=tenant.headers, json=body).status_code == 200
        encoder = http.app.state.serving.engine.encoder
        stopped = encoder._child.pid
        os.kill(stopped, signal.SIGSTOP)
        try:
            response = http.post("/infer", headers=tenant.headers, json=body)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        assert response.status_code == 503, response.text
        assert "did not answer" in response.json()["error"]["message"]
        assert int(response.headers["retry-after"]) >= 1
        again = http.post("/infer", headers=tenant.headers, json=body)
        assert again.status_code == 200, again.text
        assert encoder._child.pid != stopped
        metrics = http.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
    assert 'adalora_forward_process_failures_total{reason="timeout"} 1.0' in metrics
    assert "adalora_forward_process_starts_total 2.0" in metrics
    scores = again.json()["outputs"][0]["scores"]
    assert [scores["neg"], scores["pos"]] == pytest.approx(
        expected_scores(weights, "w1 w2 w3"), abs=1e-5
    )
