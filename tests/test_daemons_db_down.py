"""A daemon waiting for an unreachable database still obeys SIGTERM (it used to retry forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

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
    lines: list[str] = []
    waiting = threading.Event()

    def drain() -> None:  # read everything, so the daemon never blocks on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Database not reachable" in line:
                waiting.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert waiting.wait(120), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{module} ignored SIGTERM; it said:\n" + "".join(lines))
        assert rc == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
