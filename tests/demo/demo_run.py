"""Run `python -m mlmule_demo` the way `make demo` does, in its own cache directory, and watch it
from outside: its access.json, its pid file, its exit, and whatever it leaves running."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SETUP_LIMIT = 420.0  # seconds from start to access.json on a loaded 2-core machine
POLL = 0.5


def companion_env() -> str:
    """The companion environment (`make test-demo` passes it; else ask the env script)."""
    env = os.environ.get("MLMULE_COMPANION_ENV")
    if env:
        return env
    return subprocess.run(
        [str(REPO / "scripts" / "ensure-env.sh"), "companion"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DemoRun:
    """A demo process and what it recorded about itself."""

    cache: Path
    process: subprocess.Popen[bytes]
    output: Path
    recorded: dict[int, list[str]] = field(default_factory=dict)  # pid -> command

    @property
    def run_dir(self) -> Path:
        return self.cache / "demo" / "run"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def note_processes(self) -> None:
        """Remember every child the demo's pid file names (it removes the file at the end)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            record = json.loads((self.cache / "demo" / "processes.json").read_text())
            for child in record["children"]:
                self.recorded[int(child["pid"])] = list(child["cmd"])

    def wait_for_access(self) -> dict[str, Any]:
        """access.json, once the demo has set both homes up."""
        path = self.run_dir / "access.json"
        deadline = time.monotonic() + SETUP_LIMIT
        while True:
            self.note_processes()
            if path.exists():
                with contextlib.suppress(ValueError):
                    access: dict[str, Any] = json.loads(path.read_text())
                    return access
            code = self.process.poll()
            assert code is None, f"the demo exited with {code} while setting up:\n{self.text()}"
            assert time.monotonic() < deadline, f"no access.json after {SETUP_LIMIT:.0f} s"
            time.sleep(POLL)

    def wait_live(self, minutes: float) -> None:
        """Until the demo's table says it has been live this long (a dashboard with some
        history on its graphs)."""
        deadline = time.monotonic() + SETUP_LIMIT
        while True:
            shown = re.findall(r"live for (\d+\.\d) min", self.text())
            if shown and float(shown[-1]) >= minutes:
                return
            assert self.process.poll() is None, f"the demo ended early:\n{self.text()}"
            assert time.monotonic() < deadline, f"not live for {minutes} min in time"
            time.sleep(POLL)

    def wait_exit(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while (code := self.process.poll()) is None:
            self.note_processes()
            assert time.monotonic() < deadline, f"the demo still runs after {seconds:.0f} s"
            time.sleep(POLL)
        return code

    def leftovers(self) -> list[str]:
        """Processes of this demo still running: the children it recorded (same pid, same
        command), and anything whose environment carries this run's cache directory (every
        process the demo started inherits it, grandchildren included)."""
        marker = f"MLMULE_CACHE={self.cache}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                state = (proc / "stat").read_text().rsplit(") ", 1)[1][0]
                environ = (proc / "environ").read_bytes().split(b"\0")
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # it ended meanwhile
            if state == "Z":
                continue
            command = [part.decode(errors="replace") for part in cmdline if part]
            pid = int(proc.name)
            if marker in environ or self.recorded.get(pid) == command:
                found.append(f"{pid}: {' '.join(command)}")
        return found

    def kill(self) -> None:
        """After a failed test: end the demo and its children, so nothing outlives the test."""
        groups = {self.process.pid, *self.recorded}
        for pid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def start_demo(directory: Path, **settings: str) -> DemoRun:
    """`python -m mlmule_demo` from demo/, as `make demo` runs it, with its own cache and port."""
    cache = directory / "cache"
    output = directory / "demo-output.txt"
    env = {
        **os.environ,
        "MLMULE_CACHE": str(cache),
        "MLMULE_COMPANION_ENV": companion_env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DEMO_PORT": str(free_port()),
        **settings,
    }
    env.pop("MQTT_URL", None)  # the embedded broker
    with output.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlmule_demo"],
            cwd=REPO / "demo",
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return DemoRun(cache, process, output)


def get_json(url: str, token: str, body: Any = None) -> Any:
    """A REST call to a demo home (GET, or POST with a JSON body)."""
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return json.loads(text) if text.lstrip()[:1] in ("{", "[") else text
