"""QA regression tests: the real `cigri-api` process and the grid* commands of tests/api."""

from tests.api.conftest import clusters, server  # noqa: F401 - fixtures re-exported
