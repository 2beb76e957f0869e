"""The helpers other suites use to run CiGri against the OAR testbed."""

from __future__ import annotations

import os

import pytest
import requests
from sqlalchemy.engine import Engine

from cigri.db.clusters import list_clusters
from tests.oar_testbed import oar_cli, register_testbed_clusters, requires_oar, set_stress, testbed_api


def test_register_testbed_clusters(engine: Engine) -> None:
    ids = register_testbed_clusters(engine)
    with engine.connect() as c:
        clusters = list_clusters(c)
    assert {cl.name: cl.id for cl in clusters} == ids
    c2 = next(cl for cl in clusters if cl.name == "c2")
    assert (c2.batch, c2.api_auth_type, c2.api_auth_header, c2.resource_unit, c2.properties) == (
        "oar2_5", "none", "X_REMOTE_IDENT", "core", "cluster='c2'")
    assert c2.api_url.endswith("/oarapi/") and c2.api_chunk_size == 100


@pytest.mark.oar
@requires_oar
def test_stress_and_cli_reach_the_right_cluster() -> None:
    try:
        set_stress("c2", 0.75)
        got = requests.get(testbed_api("c2") + "stress_factor.json", timeout=60).json()["GLOBAL_STRESS"]
        assert float(got) == 0.75
        assert float(requests.get(testbed_api("c3") + "stress_factor.json", timeout=60).json()["GLOBAL_STRESS"]) != 0.75
    finally:
        set_stress("c2", 0)
    if os.geteuid() != 0:
        pytest.skip("oar_cli enters the cluster's mount namespace: root only")
    out = oar_cli("c3", "oarnodes", "--sql", "true", "-J")
    assert out.returncode == 0 and "c3node1" in out.stdout and "c1node1" not in out.stdout
