"""The companion as a user runs it: the installed console script, in its own data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

WAIT = 30.0


def companion_script() -> str:
    script = Path(sys.executable).with_name("mlmule-companion")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    return str(script)


class CompanionProcess:
    """Runs `mlmule-companion --data-dir <dir> ...` commands, and `run` in the background."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-run.log"

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [companion_script(), "--data-dir", str(self.data_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def init(self, name: str = "phone") -> str:
        """Set up the phone; returns its pairing code."""
        output = self.cli("init", "--name", name, "--timezone", "UTC").stdout
        [code] = [line for line in output.splitlines() if line.startswith("MLMULE-")]
        return code

    def configure(self, **sections: Any) -> None:
        """Merge settings into config.yaml, e.g. `configure(training={"epochs": 2})`."""
        path = self.data_dir / "config.yaml"
        config = yaml.safe_load(path.read_text())
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        path.write_text(yaml.safe_dump(config))

    def pair(self, home_code: str, *extra: str) -> None:
        self.cli("pair", home_code, "--no-check", "--no-password", *extra)

    def start(self, *extra: str) -> None:
        assert self.process is None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [companion_script(), "--data-dir", str(self.data_dir), "run", *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def activity(self) -> dict[str, Any]:
        path = self.data_dir / "activity.json"
        try:
            document: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return document

    def wait_connected(self, homes: int = 1, timeout: float = WAIT) -> None:
        """Until the running agent reports `homes` homes connected."""

        def connected() -> bool:
            agent = self.activity().get("agent", {})
            return (
                self.process is not None
                and agent.get("pid") == self.process.pid  # not what a killed run left behind
                and sum(agent.get("connected", {}).values()) >= homes
            )

        self.wait_for(connected, timeout, "the agent did not connect")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the companion exited: {self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} in {timeout} s: {self.log_text()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the companion did not stop: {self.log_text()}") from None
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return document

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
