"""A bounded schemathesis run over every operation of the OpenAPI document, as an ordinary
user (alice, who owns a campaign with a job) and as an administrator (root): no answer
may be a server error (5xx), and every error has CiGri's error shape. Complements
test_fuzz.py's seeded generator (which also checks that a rejected request changes
nothing). Bounded: MAX_EXAMPLES cases per operation and identity, derandomized (the same
cases every run)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from sqlalchemy.engine import Engine

from cigri.db import schema as tables
from tests.api.conftest import JDL, PeerIdentity

MAX_EXAMPLES = 60


@pytest.mark.parametrize("user", ["alice", "root"])
def test_schemathesis_no_server_error(user: str, app: Any, pg_engine: Engine, clusters: dict[str, int]) -> None:
    with TestClient(PeerIdentity(app, "alice")) as alice:
        cid = alice.post("/campaigns", json=JDL).json()["id"]
    with pg_engine.begin() as c:
        c.execute(tables.jobs.insert().values(campaign_id=cid, param_id=1, state="running",
                                              cluster_id=clusters["dahu"], remote_id=5))
    api = schemathesis.openapi.from_asgi("/openapi.json", PeerIdentity(app, user))
    operations = [r.ok() for r in api.get_all_operations()]
    figures = {"operations": len(operations), "requests": 0, "server_errors": 0}
    failures: list[str] = []

    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call()
            figures["requests"] += 1
            what = f"{user} {case.method} {case.formatted_path} {case.query} -> {response.status_code}"
            if response.status_code >= 500:
                figures["server_errors"] += 1
                failures.append(f"{what} {response.text[:200]}")
            elif response.status_code >= 400:
                body = response.json()
                if set(body) != {"status", "title", "message"} or body["status"] != response.status_code:
                    failures.append(f"{what} bad error shape {body}")

        run()
    print(f"\nschemathesis as {user}: {figures}")
    assert figures["operations"] >= 25
    assert not failures, "\n".join(failures[:20])
