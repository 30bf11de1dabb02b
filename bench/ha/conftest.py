"""Fixtures for the benchmarks that run on a real Home Assistant core."""

# single_core first: the world must build on the integration's own copy of the core
pytest_plugins = ["tests.support.single_core", "tests.support.ha_fixtures"]
