"""Not collected by default (no test_ prefix): run by tests/meta/test_parts.py in a child
pytest, to see what a session does when a real part is missing."""

import pytest

from tests.oar_testbed import requires_oar


@pytest.mark.oar
def test_marked_oar_only() -> None:
    pass


@requires_oar
def test_requires_oar() -> None:
    pass


def test_uses_postgres(pg_engine) -> None:  # noqa: ANN001
    pass


def test_needs_nothing() -> None:
    pass
