"""A fuzz run of the API driven by its own OpenAPI document: every operation is called
with random path ids, query values and bodies (seeded, reproducible), as an owner, another
user, an admin and nobody. No answer may be a 500, every error has the CiGri error shape,
and a rejected request (4xx) changes nothing in the database. test_schemathesis.py runs
schemathesis over the same document; this seeded generator adds the database check and
hostile values schemathesis does not try (SQL, paths, huge ids)."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db import schema
from tests.api.conftest import JDL

SEED = 20261204
CASES_PER_OPERATION = 12
STATS: dict[int, int] = {}

WEIRD_STRINGS = ["", "0", "-1", "1", "2", "99999999999999999999", "abc", "1;DROP TABLE jobs", "' OR '1'='1",
                 "%00", "../../etc/passwd", "null", "true", "1e309", "\u00e9\u00e8", " ", "in_treatment", "paused",
                 "running", "pending", "x" * 300]


def _value(rng: random.Random, schema_: dict[str, Any] | None, depth: int = 0) -> Any:
    kind = (schema_ or {}).get("type")
    r = rng.random()
    if r < 0.25 or depth > 2:
        return rng.choice([None, True, 0, -1, 2**40, 1.5, "", "x", [], {}, rng.choice(WEIRD_STRINGS)])
    if kind == "integer":
        return rng.choice([0, 1, 2, 3, -5, 2**31, 2**63])
    if kind == "string":
        enum = (schema_ or {}).get("enum")
        return rng.choice(enum) if enum and r < 0.6 else rng.choice(WEIRD_STRINGS)
    if kind == "array":
        return [_value(rng, (schema_ or {}).get("items"), depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "object":
        props = (schema_ or {}).get("properties", {})
        out = {k: _value(rng, v, depth + 1) for k, v in props.items() if rng.random() < 0.8}
        if rng.random() < 0.3:
            out[rng.choice(["bogus", "class", "name", "clusters"])] = _value(rng, None, depth + 1)
        return out
    return _value(rng, {"type": rng.choice(["integer", "string", "array", "object"])}, depth + 1)


def _snapshot(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as c:
        counts = tuple(c.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                       for t in schema.metadata.sorted_tables)
        camps = tuple(tuple(r) for r in c.execute(sa.select(schema.campaigns.c.id, schema.campaigns.c.state,
                                                            schema.campaigns.c.name, schema.campaigns.c.nb_jobs)
                                                  .order_by(schema.campaigns.c.id)))
        evs = tuple(tuple(r) for r in c.execute(sa.select(schema.events.c.id, schema.events.c.state)
                                                .order_by(schema.events.c.id)))
        maps = tuple(tuple(r) for r in c.execute(sa.select(schema.users_mapping.c.grid_login,
                                                           schema.users_mapping.c.cluster_login)
                                                 .order_by(schema.users_mapping.c.grid_login)))
    return counts, camps, evs, maps


def test_fuzz_from_openapi(client_for: Any, pg_engine: Engine, clusters: dict[str, int]) -> None:
    with pg_engine.connect() as c:  # never fuzz a real cluster
        urls = {r[0] for r in c.execute(sa.select(schema.clusters.c.api_url))}
    assert urls == {"http://127.0.0.1:9/oarapi/"}
    alice, bob, root, anon = (client_for(u) for u in ("alice", "bob", "root", None))
    cid = alice.post("/campaigns", json=JDL).json()["id"]
    with pg_engine.begin() as c:
        c.execute(schema.jobs.insert().values(campaign_id=cid, param_id=1, state="running",
                                              cluster_id=clusters["dahu"], remote_id=5))
    doc = anon.get("/openapi.json").json()
    rng = random.Random(SEED)
    clients = [("alice", alice), ("bob", bob), ("root", root), ("anon", anon)]
    failures: list[str] = []
    n = 0
    for path, ops in sorted(doc["paths"].items()):
        for method, op in sorted(ops.items()):
            params = op.get("parameters", [])
            body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
            for _ in range(CASES_PER_OPERATION):
                url = path
                for p in [p for p in params if p["in"] == "path"]:
                    v = rng.choice([str(cid), "1", "0", "-1", str(clusters["dahu"]), rng.choice(WEIRD_STRINGS)])
                    if p["name"] == "path":
                        v = rng.choice(["tmp/cigri-fuzz-x", "nonexistent/cigri-fuzz", "a/../../cigri-fuzz"])
                    url = url.replace("{" + p["name"] + "}", v.replace("/", "%2F") if p["name"] != "path" else v)
                query = {p["name"]: str(_value(rng, p.get("schema"))) for p in params
                         if p["in"] == "query" and rng.random() < 0.5}
                kw: dict[str, Any] = {"params": query}
                if method in ("post", "put") and rng.random() < 0.9:
                    if rng.random() < 0.15:
                        kw["content"] = rng.choice([b"{", b"\xff\xfe", b"[1,2", b"null", b"\"x\""])
                    else:
                        kw["content"] = json.dumps(_value(rng, body_schema)).encode()
                    kw["headers"] = {"content-type": "application/json"}
                who, client = rng.choice(clients)
                before = _snapshot(pg_engine)
                r = client.request(method.upper(), url, **kw)
                n += 1
                STATS[r.status_code] = STATS.get(r.status_code, 0) + 1
                desc = f"{who} {method.upper()} {url} {query} {kw.get('content', b'')[:80]!r} -> {r.status_code}"
                if r.status_code >= 500:
                    failures.append(desc + " " + r.text[:200])
                    continue
                if r.status_code >= 400:
                    try:
                        body = r.json()
                    except ValueError:
                        failures.append(desc + " (not JSON)")
                        continue
                    if set(body) != {"status", "title", "message"} or body["status"] != r.status_code:
                        failures.append(desc + f" (bad error shape {body})")
                    if _snapshot(pg_engine) != before:
                        failures.append(desc + " (rejected but changed the database)")
                assert re.match(r"application/json", r.headers.get("content-type", "")), desc
    print("status codes:", sorted(STATS.items()))
    assert n > 200
    assert not failures, "\n".join(failures[:20])
