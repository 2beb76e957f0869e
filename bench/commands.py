#!/usr/bin/env python3
"""How long each grid* command takes to start and answer, against local mode's API (a
small finished campaign in a fresh data directory), next to the limit measured in the same
run: the interpreter starting and exiting (`python -c pass`, with and without site).

    .venv/bin/python bench/commands.py [--runs 7]

Prints the median wall time of each command and its import time (`python -X importtime`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = [["gridstat"], ["gridstat", "-c", "1"], ["gridstat", "-c", "1", "-f"], ["gridevents", "-c", "1"],
            ["gridclusters"], ["gridstat", "-j", "1", "-O"], ["griddel", "--help"], ["gridsub", "--help"],
            ["gridnotify", "--help"], ["gridtoken", "--help"], ["gridclean", "--help"]]
MODULES = {"gridstat": "gridstat", "gridevents": "gridevents", "gridclusters": "gridclusters",
           "griddel": "griddel", "gridsub": "gridsub", "gridnotify": "gridnotify", "gridtoken": "gridtoken",
           "gridclean": "gridclean"}


def wall(cmd: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.monotonic()
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.monotonic() - t)
        if r.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode()[-300:]}")
    return statistics.median(times)


def import_ms(module: str, env: dict[str, str]) -> float:
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import cigri.cli.{module}"], env=env,
                       capture_output=True, text=True, check=True)
    m = re.findall(rf"\|\s*(\d+) \| cigri\.cli\.{module}$", r.stderr, re.M)
    return int(m[-1]) / 1000 if m else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cigri-bench-commands-"))
    env = dict(os.environ, XDG_DATA_HOME=str(work / "xdg"))
    env.pop("CIGRICONFFILE", None)
    try:
        jdl = work / "small.jdl"
        jdl.write_text(json.dumps({"name": "small", "params": ["a", "b", "c"], "exec_file": "echo",
                                   "exec_directory": str(work), "clusters": {"local": {}}}))
        subprocess.run([BIN / "cigri", "local", "run", str(jdl), "--quiet"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([BIN / "gridstat"], env=env, check=True, stdout=subprocess.DEVNULL)  # starts the API
        print(f"{args.runs} runs each, median; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"  limit: python -c pass       {wall([sys.executable, '-c', 'pass'], env, args.runs):6.3f} s")
        print(f"  limit: python -S -c pass    {wall([sys.executable, '-S', '-c', 'pass'], env, args.runs):6.3f} s")
        worst = 0.0
        for cmd in COMMANDS:
            t = wall([str(BIN / cmd[0]), *cmd[1:]], env, args.runs)
            worst = max(worst, t)
            print(f"  {' '.join(cmd):28} {t:6.3f} s   (imports {import_ms(MODULES[cmd[0]], env):5.0f} ms)")
        print(f"  slowest: {worst:.3f} s (target <= 0.3 s)")
    finally:
        subprocess.run([BIN / "cigri", "local", "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
