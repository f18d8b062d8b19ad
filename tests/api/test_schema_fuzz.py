"""Property-based requests generated from our own OpenAPI schema (schemathesis): no 5xx, and
every response matches its declared status codes, content types and body schemas."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.ratelimit import TokenBuckets
from tests.conftest import TenantKey


def test_api_conforms_to_its_schema(app: Any, tenant: TenantKey) -> None:
    # /infer needs the engine running; tests/api/test_infer.py fuzzes it against a live server.
    # Schemathesis sends hundreds of wrong keys on purpose; the per-address slow-down of
    # guessing (tests/api/test_auth.py) would answer them 429, so it is off for the fuzzing.
    app.state.rate_limits["auth_failures"] = TokenBuckets(rate=0, burst=1)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/infer")

    @given(case=schema.as_strategy())
    @hypothesis_settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    def check(case: Any) -> None:
        # Schema-valid but semantically bad input (a PNG named .csv) is rightly refused.
        case.call_and_validate(headers=tenant.headers, excluded_checks=[positive_data_acceptance])

    check()
