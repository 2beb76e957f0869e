"""A cluster CiGri cannot talk to (a batch type without adapter) stops its runner with one
line naming the problem, not a backtrace."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import add_cluster, pg_conf_values


def test_g5k_cluster_gives_one_clear_line(pg_engine, pg_dbname, tmp_path):
    add_cluster(pg_engine, "grid5000", batch="g5k")
    conf = tmp_path / "cigri.conf"
    conf.write_text("".join(f'{k} = "{v}"\n' for k, v in pg_conf_values(pg_dbname).items()) + 'LOG_FILE = "STDERR"\n')
    r = subprocess.run([sys.executable, "-m", "cigri.modules.runner", "grid5000", "--once"],
                       env=dict(os.environ, CIGRICONFFILE=str(conf)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Cluster grid5000 cannot be used" in r.stderr and "g5k" in r.stderr
    assert "Traceback" not in r.stderr
