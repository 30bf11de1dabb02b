"""The demo test's shared run: one 3-minute demo for the REST, browser and summary tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from demo_run import DemoRun, start_demo


@pytest.fixture(scope="session")
def live_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """A 3-minute demo, as the user runs it: set up, then live while the tests look at it."""
    run = start_demo(tmp_path_factory.mktemp("live"), DEMO_MINUTES="3")
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.kill()
