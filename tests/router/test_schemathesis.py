"""Property-based API tests: schemathesis against the running server's own OpenAPI schema.

The cases are generated, at collection, from the schema of ``create_app()`` (the same code the
server runs; the first test checks that the running server serves exactly that schema) and sent
to the real server over HTTP. Every operation but /admin (it changes the served policy, which
other tests share) gets generated requests; none may answer 5xx, and every documented response
must match its schema. Bounded: at most ``MAX_EXAMPLES`` generated cases per operation. The
proxy's operations run a second time against a server that proxies (its upstream answering), where
only the documented 502 and 504 of the upstreams may be a 5xx.
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from router.app import create_app
from router.settings import Settings

MAX_EXAMPLES = 30

OPENAPI = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(path_regex="^/admin")
proxy_schema = schemathesis.openapi.from_dict(OPENAPI).include(path_regex="^/v1/(chat/completions|models)$")


def test_server_serves_the_schema_under_test(sqlite_server):
    served = httpx.get(f"{sqlite_server.url}/openapi.json", timeout=30).json()
    assert served == OPENAPI


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_error_and_responses_match_the_schema(case, sqlite_server):
    case.call_and_validate(base_url=sqlite_server.url, checks=[not_a_server_error, response_schema_conformance],
                           timeout=30)


def no_server_error_but_the_upstreams(ctx, response, case) -> None:
    """5xx is a failure, except the proxy's documented 502 (every attempt failed) and 504 (deadline)."""
    if response.status_code >= 500 and response.status_code not in (502, 504):
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


@proxy_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_the_proxy_answers_no_server_error_of_its_own(case, proxy_sqlite_server, fake_upstream):
    case.call_and_validate(base_url=proxy_sqlite_server.url, checks=[no_server_error_but_the_upstreams,
                                                                     response_schema_conformance], timeout=30)
