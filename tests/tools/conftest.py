"""Tool tests reuse the integration fixtures (real csnapd processes on sparse files)."""

from ..integration.conftest import server  # noqa: F401 - re-exported fixture
