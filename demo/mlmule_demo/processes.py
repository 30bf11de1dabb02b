"""The processes the demo starts: each in its own process group, all stopped together.

Every child is recorded in a pid file under the demo's run directory, so a demo that was
killed (SIGKILL, a closed terminal) does not block the next one: `stop_stale` ends whatever
the file names that is still running the demo's own commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 15.0


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it on loopback, else a free port the kernel picks."""
    if preferred is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", preferred))
            except OSError:
                pass
            else:
                return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(
    port: int, process: subprocess.Popen[bytes], seconds: float, what: str
) -> None:
    """Until something accepts connections on 127.0.0.1:`port` (fails if `process` exits)."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{what} exited with {process.returncode}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                else:
                    writer.close()
                    return
    except TimeoutError:
        raise RuntimeError(
            f"{what} did not listen on 127.0.0.1:{port} within {seconds:.0f} s"
        ) from None


async def wait_exit(process: subprocess.Popen[bytes]) -> int:
    """The exit code, once the process ends: its pidfd becomes readable then (a thread blocked
    in wait() would outlive a cancelled demo)."""
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(process.pid)
    loop.add_reader(pidfd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()


class ProcessGroups:
    """Starts children in new sessions (own process groups) and stops every group at the end."""

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle: IO[bytes]
        with log.open("ab") as handle:
            # the demo's own commands (this interpreter, hass, mlmule-companion), no shell
            process = subprocess.Popen(  # noqa: S603
                list(command),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        self.children.append((name, process))
        self._save()
        return process

    def _save(self) -> None:
        record = [
            {"name": name, "pid": process.pid, "cmd": list(map(str, process.args))}  # type: ignore[arg-type]
            for name, process in self.children
            if process.poll() is None
        ]
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps({"demo": os.getpid(), "children": record}))

    def stop(self, name: str) -> None:
        for child, process in self.children:
            if child == name:
                _stop_group(process.pid, process)
        self.children = [(n, p) for n, p in self.children if n != name]
        self._save()

    def stop_all(self) -> None:
        """SIGTERM every group (newest first), then SIGKILL those that do not stop in time."""
        for _, process in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, process in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # stragglers in the group, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.children = []
        self.pid_file.unlink(missing_ok=True)


def _stop_group(pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group led by `pid`, SIGKILL it if its leader does not end in time. `child`
    is the leader when this demo started it (then it is reaped); else the pid is watched."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and (
        child.poll() is None if child is not None else _alive(pid)
    ):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stop_stale(pid_file: Path) -> list[str]:
    """End the process groups a previous demo left running; returns what was stopped."""
    try:
        record = json.loads(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return []
    stopped = []
    for child in record.get("children", []):
        pid = int(child["pid"])
        if _runs(pid, child["cmd"]):
            stopped.append(f"{child['name']} (pid {pid})")
            _stop_group(pid)
    pid_file.unlink(missing_ok=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie of a dead parent counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _runs(pid: int, command: list[str]) -> bool:
    """Whether `pid` is alive and still runs `command` (not a recycled pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [part.decode(errors="replace") for part in cmdline if part] == command
