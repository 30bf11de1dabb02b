"""A real mosquitto broker on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


def mosquitto_binary() -> str:
    """The broker binary; `make test` installs Debian's mosquitto, so a missing one is an error."""
    for candidate in MOSQUITTO_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("mosquitto is not installed: run `make test`, which installs it")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Broker:
    """A running mosquitto that listens on 127.0.0.1 only."""

    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            # as root, mosquitto would switch to its own user, who cannot write our temporaries
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_packet_size 2000000\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
        )
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(config)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {log}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def start_broker(workdir: Path, port: int | None = None) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(host="127.0.0.1", port=port or free_port(), workdir=workdir)
    broker.start()
    return broker
