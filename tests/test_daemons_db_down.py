"""A daemon waiting for an unreachable database still obeys SIGTERM (it used to retry forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("module,args", [("almighty", []), ("runner", ["c1"]), ("colombo", []),
                                         ("metascheduler", ["--loop"])])
def test_sigterm_while_the_database_is_down(tmp_path, module, args):
    conf = tmp_path / "cigri.conf"
    conf.write_text('DATABASE_HOST = "127.0.0.1"\nDATABASE_PORT = "1"\nDB_RECONNECT_DELAY = "3600"\n'
                    'LOG_FILE = "STDERR"\n')
    env = dict(os.environ, CIGRICONFFILE=str(conf))
    proc = subprocess.Popen([sys.executable, "-m", f"cigri.modules.{module}", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 120
        while "Database not reachable" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "Database not reachable" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
