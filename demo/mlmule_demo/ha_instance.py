"""One demo home's Home Assistant: its configuration, its process, and its APIs.

Everything a user would do in the UI goes through Home Assistant's own HTTP and websocket APIs:
onboarding, the MQTT and ML Mule config flows, the options flow, the "add space" subentry flow,
actions, and the dashboard. Nothing is written into `.storage` by hand.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .processes import ProcessGroups, free_port

# the demo's login, printed on screen and in docs/demo.md: a loopback-only demo home
USERNAME = "demo"
PASSWORD = "mlmule-demo"  # noqa: S105
READY_TIMEOUT = 120.0
CUSTOM_COMPONENT = Path(__file__).resolve().parents[2] / "custom_components" / "mlmule"
# the demo-only component that runs the spaces on the replay clock
REPLAY_CLOCK_COMPONENT = (
    Path(__file__).resolve().parents[1] / "custom_components" / "mlmule_replay_clock"
)

Json = dict[str, Any]


class FlowError(RuntimeError):
    """A config flow did not end the way the demo expected."""


@dataclass
class HomeAssistantInstance:
    """A Home Assistant process for one demo home."""

    name: str
    config_dir: Path
    port: int
    tz: str
    token: str = ""
    refresh_token: str = ""
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)
    _ws: aiohttp.ClientWebSocketResponse | None = field(default=None, repr=False)
    _ws_id: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_id(self) -> str:
        return f"{self.url}/"

    # ---- configuration and process

    def write_configuration(
        self, latitude: float, longitude: float, clock: Mapping[str, float]
    ) -> None:
        """A minimal configuration: what the UI, the history and the integration need (no
        `default_config:`, whose integrations need packages the environment does not have),
        and the live part's replay clock."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            f"""\
homeassistant:
  name: {json.dumps(self.name)}
  time_zone: {self.tz}
  latitude: {latitude}
  longitude: {longitude}
  elevation: 40
  unit_system: metric
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {self.port}
frontend:
config:
api:
history:
logbook:
lovelace:
person:
system_health:
recorder:
  commit_interval: 1
  purge_keep_days: 30
logger:
  default: warning
  logs:
    custom_components.mlmule: info
# the demo's own component (not shipped): the world replays at x{clock["scale"]:g} from this moment
mlmule_replay_clock:
  origin: {clock["origin"]}
  scale: {clock["scale"]}
"""
        )
        components = self.config_dir / "custom_components"
        components.mkdir(exist_ok=True)
        # a regular package, so that it wins over the repository's custom_components on PYTHONPATH
        # (which holds mlmule but not the demo's clock component)
        (components / "__init__.py").touch()
        for target in (CUSTOM_COMPONENT, REPLAY_CLOCK_COMPONENT):
            link = components / target.name
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)

    def start(self, groups: ProcessGroups, log: Path) -> None:
        hass = Path(sys.executable).with_name("hass")
        groups.start(
            f"home-assistant-{self.name}",
            [str(hass), "--skip-pip", "--config", str(self.config_dir)],
            log=log,
        )

    async def wait_ready(self) -> None:
        """Until its HTTP API answers (onboarding is the first thing it serves)."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while True:
                    if await self._answers():
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise RuntimeError(f"Home Assistant {self.name} did not answer on {self.url}") from None

    async def _answers(self) -> bool:
        try:
            async with self.session.get(f"{self.url}/api/onboarding") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._ws = self._session = None

    # ---- onboarding

    async def onboard(self) -> None:
        """Create the owner, then finish every onboarding step, so the UI opens at once."""
        session = self.session
        async with session.post(
            f"{self.url}/api/onboarding/users",
            json={
                "client_id": self.client_id,
                "name": "Demo",
                "username": USERNAME,
                "password": PASSWORD,
                "language": "en",
            },
        ) as response:
            response.raise_for_status()
            code = (await response.json())["auth_code"]
        await self._token({"grant_type": "authorization_code", "code": code})
        await self.post("/api/onboarding/core_config", {})
        await self.post("/api/onboarding/analytics", {})
        await self.post(
            "/api/onboarding/integration",
            {"client_id": self.client_id, "redirect_uri": f"{self.client_id}?auth_callback=1"},
        )

    async def _token(self, form: Mapping[str, str]) -> None:
        async with self.session.post(
            f"{self.url}/auth/token", data={**form, "client_id": self.client_id}
        ) as response:
            response.raise_for_status()
            tokens = await response.json()
        self.token = tokens["access_token"]
        self.refresh_token = tokens.get("refresh_token", self.refresh_token)

    async def refresh(self) -> None:
        """A fresh access token (they last 30 minutes)."""
        await self._token({"grant_type": "refresh_token", "refresh_token": self.refresh_token})

    # ---- REST

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.url}{path}", headers=self._headers) as response:
            if response.status == 401:
                await self.refresh()
                return await self.get(path)
            response.raise_for_status()
            return await response.json()

    async def post(self, path: str, body: Any) -> Any:
        async with self.session.post(
            f"{self.url}{path}", json=body, headers=self._headers
        ) as response:
            if response.status == 401:
                await self.refresh()
                return await self.post(path, body)
            text = await response.text()
            if response.status >= 400:
                raise FlowError(f"POST {path}: {response.status} {text}")
            return json.loads(text) if text else None

    async def states(self) -> dict[str, Json]:
        return {state["entity_id"]: state for state in await self.get("/api/states")}

    async def call(self, domain: str, service: str, data: Json, *, response: bool = False) -> Any:
        suffix = "?return_response" if response else ""
        result = await self.post(f"/api/services/{domain}/{service}{suffix}", data)
        return result["service_response"] if response else result

    # ---- flows (the same requests the UI sends)

    async def _run_flow(self, base: str, start: Json, steps: Sequence[Json]) -> Json:
        result: Json = await self.post(base, start)
        for user_input in steps:
            if result.get("type") != "form":
                raise FlowError(f"{base}: expected a form, got {result}")
            result = await self.post(f"{base}/{result['flow_id']}", user_input)
            if result.get("errors"):
                raise FlowError(f"{base} step {result.get('step_id')}: {result['errors']}")
        if result.get("type") not in ("create_entry", "abort"):
            raise FlowError(f"{base}: the flow did not finish: {result}")
        return result

    async def config_flow(self, handler: str, *steps: Json) -> Json:
        return await self._run_flow("/api/config/config_entries/flow", {"handler": handler}, steps)

    async def options_flow(self, entry_id: str, options: Json) -> Json:
        return await self._run_flow(
            "/api/config/config_entries/options/flow", {"handler": entry_id}, [options]
        )

    async def subentry_flow(self, entry_id: str, subentry_type: str, *steps: Json) -> Json:
        return await self._run_flow(
            "/api/config/config_entries/subentries/flow",
            {"handler": [entry_id, subentry_type]},
            steps,
        )

    async def subentry_form(self, entry_id: str, subentry_type: str) -> tuple[Json, str]:
        """The first form of a subentry flow, and its flow id (to abort it)."""
        result: Json = await self.post(
            "/api/config/config_entries/subentries/flow", {"handler": [entry_id, subentry_type]}
        )
        return result, str(result["flow_id"])

    # ---- websocket

    async def ws(self, message: Json) -> Any:
        """One websocket command; returns its result."""
        if self._ws is None:
            self._ws = await self.session.ws_connect(f"{self.url}/api/websocket")
            await self._ws.receive_json()  # auth_required
            await self._ws.send_json({"type": "auth", "access_token": self.token})
            answer = await self._ws.receive_json()
            if answer.get("type") != "auth_ok":
                raise FlowError(f"websocket authentication failed: {answer}")
        self._ws_id += 1
        await self._ws.send_json({**message, "id": self._ws_id})
        while True:
            reply = await self._ws.receive_json()
            if reply.get("id") == self._ws_id and reply.get("type") == "result":
                break
        if not reply.get("success"):
            raise FlowError(f"{message['type']}: {reply.get('error')}")
        return reply.get("result")

    def auth_record(self) -> Json:
        """What a browser keeps in local storage after logging in (the dashboard test uses it)."""
        return {
            "url": self.url,
            "username": USERNAME,
            "password": PASSWORD,
            "client_id": self.client_id,
            "access_token": self.token,
            "refresh_token": self.refresh_token,
        }


def pick_port(preferred: int, taken: set[int]) -> int:
    port = free_port(preferred)
    while port in taken:
        port = free_port(None)
    taken.add(port)
    return port
