"""Real parts the tests need (PostgreSQL, the OAR testbed, an XMPP server, ...): skip
visibly when a part is missing on a developer's machine, FAIL when it is missing in CI.

A part is *required* when CI is set (`CI=true`, as the CI runner sets it) or when the
part's own variable is `1` (tools/test exports one per part it installed and started,
e.g. CIGRI_OAR_TESTBED=1). A required part that does not answer makes every test that
needs it fail with the reason, so a broken testbed can never turn into a green run made
of skips. Usage::

    from tests.parts import Part, requires_part

    SLURM = Part("slurm", "CIGRI_SLURM_TESTBED", probe=lambda: None if ok() else "slurmrestd does not answer",
                 hint="sudo tools/slurm-testbed/slurm-testbed up")

    pytestmark = requires_part(SLURM)          # a module, a class or a test
    ...
    SLURM.require()                             # or imperatively, in a fixture

The probe runs once per session, when the first test needing the part is set up (never
at import time). Parts that are merely absent are listed in the terminal summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

TRUE = ("1", "true", "yes", "on")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUE


@dataclass(eq=False)
class Part:
    """A real part: `probe()` returns None when it works, else why not (one line)."""

    name: str
    ci_var: str
    probe: Callable[[], str | None]
    hint: str = ""
    #: how long a required part may take to answer (it may still be starting)
    patience: float = field(default_factory=lambda: float(os.environ.get("CIGRI_PART_PATIENCE", "120")))
    _result: tuple[bool, str] | None = field(default=None, init=False, repr=False)

    def required(self) -> bool:
        return in_ci() or os.environ.get(self.ci_var, "").strip().lower() in TRUE

    def _check(self) -> tuple[bool, str]:
        if self._result is None:
            reason = _safe_probe(self.probe)
            if reason is not None and self.required():
                end = time.monotonic() + self.patience
                while reason is not None and time.monotonic() < end:
                    time.sleep(2)
                    reason = _safe_probe(self.probe)
            self._result = (reason is None, reason or "")
            if reason is not None:
                MISSING[self.name] = (reason, self.required())
        return self._result

    def available(self) -> bool:
        return self._check()[0]

    def require(self) -> None:
        """Skip (developer machine) or fail (CI, or the part's variable set) when the part is missing."""
        ok, reason = self._check()
        if ok:
            return
        hint = f" ({self.hint})" if self.hint else ""
        if self.required():
            why = "CI=true" if in_ci() else f"{self.ci_var}=1"
            pytest.fail(f"required part {self.name} is missing ({why}): {reason}{hint}", pytrace=False)
        pytest.skip(f"{self.name} missing: {reason}{hint}")


def _safe_probe(probe: Callable[[], str | None]) -> str | None:
    try:
        return probe()
    except Exception as e:  # noqa: BLE001 - a probe that breaks means the part is not usable
        return f"probe failed: {type(e).__name__}: {e}"


#: parts found missing in this session (name -> (reason, required)), for the terminal summary
MISSING: dict[str, tuple[str, bool]] = {}


def requires_part(*parts: Part) -> pytest.MarkDecorator:
    """Mark a test (module, class) as needing these parts; checked at setup by tests/conftest.py."""
    return pytest.mark.requires_part(*parts)


def check_marked_parts(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_part"):
        for part in mark.args:
            part.require()
