"""What the OAR and Slurm testbed helpers share: their env files, and waiting for real parts
(poll with a deadline, never a fixed sleep)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a testbed's env file (quotes stripped); empty when it is absent."""
    values: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                values[k] = v.strip().strip('"')
    except OSError:
        pass
    return values


def wait_for(predicate: Any, deadline: float = 180, interval: float = 1.0, what: str = "condition") -> Any:
    """Poll `predicate()` until it returns a truthy value (returned) or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(interval)
