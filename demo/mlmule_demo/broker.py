"""The MQTT broker of the demo: amqtt (pure Python) on loopback, or the one `MQTT_URL` names.

`python -m mlmule_demo.broker PORT` runs the embedded broker in its own process, so that the
demo's replay never stalls it and Ctrl-C stops it with the rest of the process group.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from amqtt.broker import Broker  # type: ignore[import-untyped]  # amqtt ships no types


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """`mqtt://[user[:password]@]host[:port]`."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"MQTT_URL must look like mqtt://host:1883, got {url!r}")
        return cls(parts.hostname, parts.port or 1883, parts.username, parts.password)


def broker_config(port: int) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    broker = Broker(broker_config(port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"amqtt listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
