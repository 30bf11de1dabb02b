"""Ctrl-C stops the demo and everything it started."""

from __future__ import annotations

import signal
from pathlib import Path

from demo_run import start_demo

STOP_LIMIT = 30.0  # seconds from Ctrl-C to the demo's exit


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    # one day of history: the same set-up, sooner at the point where Ctrl-C is pressed
    run = start_demo(tmp_path, DEMO_HISTORY_DAYS="1")
    try:
        access = run.wait_for_access()  # both Home Assistants are up and set up
        assert len(access["homes"]) == 2
        run.note_processes()
        names = {" ".join(command) for command in run.recorded.values()}
        assert sum("hass" in name for name in names) == 2, names
        assert sum("mlmule-companion" in name for name in names) == 2, names
        assert any("mlmule_demo.broker" in name for name in names), names
        assert run.leftovers(), "the running demo's processes are not visible"

        run.process.send_signal(signal.SIGINT)
        code = run.wait_exit(STOP_LIMIT)

        assert code == 130, run.text()
        assert "stopped every process the demo started" in run.text()
        assert run.leftovers() == []
        assert not (run.cache / "demo" / "processes.json").exists()
    finally:
        if run.process.poll() is None:
            run.kill()
