"""Companion benchmark: what one exchange costs a phone, in battery-relevant terms.

The phone is the installed `mlmule-companion run` (a separate process, as on a phone); the home is
the core's SpaceEndpoint and ModelHost over paho (tests/support/space_peer.py), both on a real
mosquitto on loopback. For each variant, after one warm-up exchange, it runs `--exchanges`
encounters and measures, per exchange, on the phone's process:

- wall time from the space opening the encounter to the end of the exchange (the phone holding
  the space's answer in fixed-data mode; the space holding the phone's merged answer in mobile);
- CPU seconds (user + system, from /proc/<pid>/stat) over that time plus the close;
- peak resident memory (VmHWM of /proc/<pid>/status, reset before each exchange through
  /proc/<pid>/clear_refs where the kernel allows it);
- payload bytes each way over MQTT (MQTT, TCP and TLS framing excluded).

Variants: fixed-data mode (the baseline: the phone only carries), mobile-data mode with the torch
trainer, with DP-SGD (opacus), and with the numpy trainer. Figures are medians; each variant's are
also given as ratios to the baseline's, measured in the same run. It also reports the first
exchange of the mobile variant (which loads torch), and the CPU the agent uses per minute while
connected and idle.

Run: `$(scripts/ensure-env.sh companion)/bin/python bench/bench_companion.py [--exchanges N]`.
Needs mosquitto (`scripts/ensure-mosquitto.sh`). Writes bench/results/companion.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' support code: broker, space peer, phone process

from mlmule_core.protocol import Completed, Mode  # noqa: E402
from mlmule_core.starter import load_starter  # noqa: E402

from tests.support.broker import Broker, start_broker  # noqa: E402
from tests.support.companion_process import CompanionProcess  # noqa: E402
from tests.support.e2e import (  # noqa: E402
    BEDROOM,
    FAST,
    KITCHEN,
    KITCHEN_SPACE,
    PHONE_NETWORK,
    PHONE_PROTOCOL,
)
from tests.support.phone_log import recent_world, room_training_data, write_phone_log  # noqa: E402
from tests.support.space_peer import SpacePeer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "companion.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_SECONDS = 60.0


@dataclass(frozen=True)
class Variant:
    name: str
    mode: Mode
    settings: dict[str, Any]


VARIANTS = (
    Variant("fixed-data (carry only)", Mode.FIXED, {}),
    Variant("mobile-data, torch", Mode.MOBILE, {"training": {"backend": "torch"}}),
    Variant(
        "mobile-data, torch + DP-SGD",
        Mode.MOBILE,
        {"training": {"backend": "torch"}, "privacy": {"dp": {"noise_multiplier": 1.0}}},
    ),
    Variant("mobile-data, numpy", Mode.MOBILE, {"training": {"backend": "numpy"}}),
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0, own process or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def wait(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the exchange did not finish")
        time.sleep(0.01)


class Bench:
    def __init__(self, workdir: Path, broker: Broker) -> None:
        self.workdir = workdir
        self.broker = broker
        self.world, self.shift = recent_world(days=2)

    def run_variant(self, variant: Variant, exchanges: int, *, idle: bool) -> dict[str, Any]:
        root = self.workdir / variant.name.replace(" ", "_").replace(",", "").replace("+", "")
        home = SpacePeer(root / "home", self.broker.host, self.broker.port, config=FAST)
        phone = CompanionProcess(root / "phone")
        try:
            mule = home.pair_mule(phone.init("phone"))
            phone.configure(protocol=PHONE_PROTOCOL, network=PHONE_NETWORK, **variant.settings)
            phone.pair(home.home_code())
            if variant.mode is Mode.FIXED:
                space, key = "bedroom", BEDROOM
                own = room_training_data(self.world, "bedroom", load_starter(key).schema)
                home.serve(space, key, Mode.FIXED, own)
            else:
                space, key = KITCHEN_SPACE, KITCHEN
                log = root / "phone.csv"
                write_phone_log(
                    log,
                    self.world,
                    self.shift,
                    home_id=home.identity.id,
                    spaces={"kitchen": KITCHEN_SPACE},
                )
                phone.cli("log-data", str(log))
                home.serve(space, key, Mode.MOBILE)
            phone.start()
            phone.wait_connected()
            assert phone.process is not None
            pid = phone.process.pid
            exchange = partial(
                self._exchange, home, phone, pid=pid, space=space, mule=mule, mode=variant.mode
            )
            first = exchange()
            samples = [exchange() for _ in range(exchanges)]
            idle_cpu = self._idle_cpu(pid) if idle else None
            training = phone.activity().get("training", {}).get(key, {})
            privacy = phone.activity().get("privacy", {}).get(key)
            assert phone.stop() == 0
        finally:
            if phone.process is not None:
                phone.kill()
            home.stop()
        result: dict[str, Any] = {
            "variant": variant.name,
            "mode": variant.mode.value,
            "context_key": key,
            "exchanges": exchanges,
            "first_exchange": first,
            "median": {
                name: statistics.median(sample[name] for sample in samples) for name in samples[0]
            },
            # the CPU clock ticks in 10 ms steps: the mean over all exchanges resolves finer
            "mean_cpu_seconds": statistics.fmean(sample["cpu_seconds"] for sample in samples),
            "samples": samples,
        }
        if training:
            result["training"] = {
                "runs": training["runs"],
                "seconds_per_run": training["seconds"] / training["runs"],
                "samples_per_run": training["samples"] / training["runs"],
            }
        if privacy:
            result["privacy"] = privacy
        if idle_cpu is not None:
            result["idle_cpu_seconds_per_minute"] = idle_cpu
        return result

    @staticmethod
    def _exchange(
        home: SpacePeer, phone: CompanionProcess, *, pid: int, space: str, mule: str, mode: Mode
    ) -> dict[str, float]:
        sessions = phone.activity()["homes"][home.identity.id]["sessions"]
        answers = sum(1 for e in home.events if isinstance(e, Completed) and e.accepted)
        received = len(home.received)
        bytes_in, bytes_out = home.bytes_received, home.bytes_sent
        peak_reset = reset_peak(pid)
        rss_before = memory_kib(pid, "VmRSS")
        cpu_before = cpu_seconds(pid)
        start = time.perf_counter()
        home.open(space, mule)
        if mode is Mode.FIXED:  # the phone has taken the space's answer
            wait(
                lambda: (
                    sum(1 for e in home.events if isinstance(e, Completed) and e.accepted) > answers
                )
            )
        else:  # the space has merged the phone's answer
            wait(lambda: len(home.received) > received)
            assert home.received[-1].outcome.accepted, home.received[-1].outcome
        wall = time.perf_counter() - start
        home.close(space)
        wait(lambda: phone.activity()["homes"][home.identity.id]["sessions"] > sessions)
        return {
            "wall_seconds": wall,
            "cpu_seconds": cpu_seconds(pid) - cpu_before,
            "peak_rss_mib": memory_kib(pid, "VmHWM") / 1024,
            "rss_before_mib": rss_before / 1024,
            "peak_is_per_exchange": float(peak_reset),
            "bytes_sent": float(home.bytes_received - bytes_in),
            "bytes_received": float(home.bytes_sent - bytes_out),
        }

    @staticmethod
    def _idle_cpu(pid: int) -> float:
        before = cpu_seconds(pid)
        time.sleep(IDLE_SECONDS)
        return (cpu_seconds(pid) - before) * 60.0 / IDLE_SECONDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--exchanges", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-companion-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir / "broker")
        try:
            bench = Bench(workdir, broker)
            results = [
                bench.run_variant(variant, args.exchanges, idle=index == 0)
                for index, variant in enumerate(VARIANTS)
            ]
        finally:
            broker.stop()
    baseline = results[0]["median"]
    for result in results:
        result["ratio_to_baseline"] = {
            name: result["median"][name] / baseline[name]
            for name in (
                "wall_seconds",
                "cpu_seconds",
                "peak_rss_mib",
                "bytes_sent",
                "bytes_received",
            )
            if baseline[name]
        }
    document = {
        "benchmark": "companion",
        "exchanges_per_variant": args.exchanges,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "baseline": results[0]["variant"],
        "idle_cpu_seconds_per_minute": results[0]["idle_cpu_seconds_per_minute"],
        "idle_measured_seconds": IDLE_SECONDS,
        "cpu_clock_resolution_seconds": 1 / CLOCK_TICKS,
        "variants": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"idle, connected to one home: {document['idle_cpu_seconds_per_minute']:.3f} CPU s/min")
    header = (
        f"{'variant':32} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9} {'sent B':>8} {'recv B':>8}"
    )
    print(header)
    for result in results:
        m = result["median"]
        print(
            f"{result['variant']:32} {m['wall_seconds']:7.2f} {m['cpu_seconds']:7.2f} "
            f"{m['peak_rss_mib']:9.1f} {m['bytes_sent']:8.0f} {m['bytes_received']:8.0f}"
        )
        first = result["first_exchange"]
        print(
            f"{'  first exchange':32} {first['wall_seconds']:7.2f} {first['cpu_seconds']:7.2f} "
            f"{first['peak_rss_mib']:9.1f}"
        )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
