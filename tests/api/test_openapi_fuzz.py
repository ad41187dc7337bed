"""Schemathesis generates requests from /openapi.json against the real app (in-process, real Postgres and
Redis): whatever it sends, the API never answers 5xx."""

import schemathesis
from hypothesis import HealthCheck, settings

from serve.app import create_app

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case, database, redis_client):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
