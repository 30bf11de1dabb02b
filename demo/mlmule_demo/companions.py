"""The phones: one `mlmule-companion` per household, run as a user runs it (the console script
of the companion environment, each with its own data directory)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .processes import ProcessGroups
from .scenario import Person, Scenario

COMPANION_ENV = "MLMULE_COMPANION_ENV"


def companion_script() -> Path:
    """`mlmule-companion` of the companion environment (`make demo` passes its path)."""
    env = os.environ.get(COMPANION_ENV)
    if not env:
        raise RuntimeError(
            f"set {COMPANION_ENV} to the companion environment (make demo does: "
            "scripts/ensure-env.sh companion)"
        )
    script = Path(env) / "bin" / "mlmule-companion"
    if not script.exists():
        raise RuntimeError(f"{script} is missing: is {env} the companion environment?")
    return script


@dataclass
class Phone:
    """One person's phone running the companion."""

    person: Person
    data_dir: Path
    script: Path
    pairing_code: str = ""

    @property
    def label(self) -> str:
        return f"{self.person.name}'s phone"

    async def cli(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            str(self.script),
            "--data-dir",
            str(self.data_dir),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"mlmule-companion {args[0]} failed ({process.returncode}): {text}")
        return text

    async def init(self, scenario: Scenario) -> None:
        """Create the phone (its key and settings) and read its pairing code."""
        output = await self.cli("init", "--name", self.label, "--timezone", scenario.tz)
        [self.pairing_code] = [line for line in output.splitlines() if line.startswith("MLMULE-")]
        path = self.data_dir / "config.yaml"
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        # the numpy trainer: these models are small, and torch would cost 400 MB per phone
        config["training"]["backend"] = "numpy"
        config["network"]["reconnect_max_delay"] = 5
        config["status_interval"] = 10
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    def use_clock(self, replay_clock: dict[str, float]) -> None:
        """The live part's replay clock, in the phone's settings before it starts."""
        path = self.data_dir / "config.yaml"
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        config["replay_clock"] = dict(replay_clock)
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    async def pair(self, home_code: str, prefix: str, *, guest: bool) -> None:
        await self.cli(
            "pair",
            home_code,
            "--prefix",
            prefix,
            "--no-check",
            "--no-password",
            *(["--guest"] if guest else []),
        )

    async def log_history(self, scenario: Scenario, until: float) -> int:
        """What the phone sensed before `until`, through `log-data` (raw data stays on the
        phone; it trains the phones' own activity models on it)."""
        path = self.data_dir.parent / f"{self.person.slug}-sensed.csv"
        rows = list(scenario.phone_log_rows(self.person, until))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        await self.cli("log-data", str(path))
        return len(rows)

    def start(self, groups: ProcessGroups, log: Path) -> None:
        groups.start(
            f"companion-{self.person.slug}",
            [str(self.script), "--data-dir", str(self.data_dir), "run", "--no-status-line"],
            log=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def activity(self) -> dict[str, Any]:
        """The companion's ledger (`activity.json`): exchanges and bytes per home."""
        try:
            document: dict[str, Any] = json.loads((self.data_dir / "activity.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return document

    def totals(self) -> dict[str, int]:
        totals = {"bytes_sent": 0, "bytes_received": 0, "sessions": 0, "received": 0, "sent": 0}
        for home in self.activity().get("homes", {}).values():
            for key in totals:
                totals[key] += int(home.get(key, 0))
        return totals
