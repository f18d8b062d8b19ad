"""The key and adapter-row caches: hits skip SQL, this process forgets at once what it changes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from application.ttl_cache import TtlCache
from service import tenants
from tests.conftest import TenantKey


def test_entries_expire_and_the_oldest_go_first() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(5.0, max_entries=2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    now[0] = 4.9
    assert cache.get("b") == 2
    now[0] = 5.0
    assert cache.get("a") is None
    cache.put("c", 3)
    cache.put("d", 4)
    cache.put("e", 5)
    assert cache.get("c") is None and cache.get("e") == 5
    off: TtlCache[str, int] = TtlCache(0)
    off.put("a", 1)
    assert off.get("a") is None


def count_queries(app: Any) -> list[str]:
    seen: list[str] = []
    engine = app.state.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_known_key_is_not_read_again(client, app, tenant: TenantKey) -> None:
    assert client.get("/models", headers=tenant.headers).status_code == 200
    seen = count_queries(app)
    assert client.get("/models", headers=tenant.headers).status_code == 200
    assert not any("api_keys" in q for q in seen)


def test_a_revoked_key_stops_at_once(client, make_tenant, db_session) -> None:
    owner = make_tenant("revoker")
    _, secret = tenants.create_api_key(db_session, owner.id, "second", scope="infer")
    db_session.commit()
    second = {"Authorization": f"Bearer {secret}"}
    assert client.get("/models", headers=second).status_code == 200  # now cached
    key_id = next(k.id for k in tenants.list_api_keys(db_session, owner.id) if k.name == "second")
    assert client.delete(f"/keys/{key_id}", headers=owner.headers).status_code == 204
    assert client.get("/models", headers=second).status_code == 401


def test_a_disabled_tenants_cached_key_stops_at_once(client, make_tenant, operator) -> None:
    victim = make_tenant("soon-disabled")
    assert client.get("/models", headers=victim.headers).status_code == 200
    answer = client.post(f"/tenants/{victim.id}/disable", headers=operator.headers)
    assert answer.status_code == 200
    assert client.get("/models", headers=victim.headers).status_code == 401


def test_with_the_cache_off_every_request_reads_the_key(settings, tenant: TenantKey) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(settings.model_copy(update={"lookup_cache_ttl_s": 0.0}))
    with TestClient(app) as client:
        client.get("/models", headers=tenant.headers)
        seen = count_queries(app)
        assert client.get("/models", headers=tenant.headers).status_code == 200
        assert any("api_keys" in q for q in seen)
