"""The actions of mlmule: train, export, import, roll back, exchange, pair and unpair."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any

import voluptuous as vol
from homeassistant.auth.permissions.const import POLICY_CONTROL
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
    callback,
)
from homeassistant.exceptions import (
    HomeAssistantError,
    ServiceValidationError,
    Unauthorized,
    UnknownUser,
)
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.service import async_register_admin_service

from .const import DOMAIN, LOGGER, Task
from .coordinator import SpaceClosed, SpaceCoordinator
from .core.errors import MlmuleError
from .core.identity import BrokerInfo, PairingCode, PeerKind, TrustEntry, TrustRole
from .core.snapshot import COMPRESSIONS
from .core.storage import atomic_write_bytes
from .data import MlmuleConfigEntry
from .relay import RelayCoordinator

ATTR_DEVICE_ID = "device_id"
ATTR_TASK = "task"
ATTR_COMPRESSION = "compression"
ATTR_PATH = "path"
ATTR_DATA = "data"
ATTR_VERSION = "version"
ATTR_CODE = "code"
ATTR_ROLE = "role"
ATTR_LABEL = "label"
ATTR_SPACES = "spaces"
ATTR_MULE_ID = "mule_id"
ATTR_BROKER_HOST = "broker_host"
ATTR_BROKER_PORT = "broker_port"
ATTR_BROKER_TLS = "broker_tls"
ATTR_BROKER_USERNAME = "broker_username"

SERVICE_TRAIN = "train"
SERVICE_EXPORT = "export_snapshot"
SERVICE_IMPORT = "import_snapshot"
SERVICE_ROLLBACK = "rollback"
SERVICE_PAIR = "pair_mule"
SERVICE_UNPAIR = "unpair_mule"
SERVICE_EXCHANGE = "exchange_now"

TASKS = [task.value for task in Task]
SPACE_SCHEMA: dict[vol.Marker, Any] = {vol.Required(ATTR_DEVICE_ID): cv.string}
TASK_SCHEMA: dict[vol.Marker, Any] = {
    vol.Optional(ATTR_TASK, default=Task.OCCUPANCY.value): vol.In(TASKS)
}

TRAIN_SCHEMA = vol.Schema(SPACE_SCHEMA)
EXPORT_SCHEMA = vol.Schema(
    {
        **SPACE_SCHEMA,
        **TASK_SCHEMA,
        vol.Optional(ATTR_COMPRESSION, default="none"): vol.In(COMPRESSIONS),
        vol.Optional(ATTR_PATH): cv.string,
    }
)
IMPORT_SCHEMA = vol.Schema(
    {
        **SPACE_SCHEMA,
        vol.Exclusive(ATTR_PATH, "source"): cv.string,
        vol.Exclusive(ATTR_DATA, "source"): cv.string,
    }
)
ROLLBACK_SCHEMA = vol.Schema(
    {**SPACE_SCHEMA, **TASK_SCHEMA, vol.Optional(ATTR_VERSION): vol.All(int, vol.Range(min=1))}
)
PAIR_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_CODE): cv.string,
        vol.Optional(ATTR_ROLE, default=TrustRole.OWNER.value): vol.All(
            vol.In([role.value for role in TrustRole]), vol.Coerce(TrustRole)
        ),
        vol.Optional(ATTR_LABEL): cv.string,
        vol.Optional(ATTR_SPACES): vol.All(cv.ensure_list, [cv.string]),  # device ids
        vol.Inclusive(ATTR_BROKER_HOST, "broker"): cv.string,
        vol.Inclusive(ATTR_BROKER_PORT, "broker"): cv.port,
        vol.Optional(ATTR_BROKER_TLS, default=False): cv.boolean,
        vol.Optional(ATTR_BROKER_USERNAME): cv.string,
    }
)
UNPAIR_SCHEMA = vol.Schema({vol.Required(ATTR_MULE_ID): cv.string})
EXCHANGE_SCHEMA = vol.Schema({**SPACE_SCHEMA, vol.Required(ATTR_MULE_ID): cv.string})


type Handler = Callable[[ServiceCall], Coroutine[Any, Any, ServiceResponse]]


def _translated_errors(handler: Handler) -> Handler:
    """Turn what is left of the core's errors and file errors into translated errors.

    Handlers raise the specific errors they can explain; this is the net under them, so that
    no `MlmuleError` or `OSError` reaches the user untranslated.
    """

    @wraps(handler)
    async def translated(call: ServiceCall) -> ServiceResponse:
        try:
            return await handler(call)
        except SpaceClosed as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN, translation_key="not_loaded"
            ) from err
        except MlmuleError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="action_failed",
                translation_placeholders={"action": call.service, "error": str(err)},
            ) from err
        except OSError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="storage_failed",
                translation_placeholders={
                    "action": call.service,
                    "error": err.strerror or str(err),
                },
            ) from err

    return translated


def _loaded_entry(hass: HomeAssistant) -> MlmuleConfigEntry:
    entries: list[MlmuleConfigEntry] = hass.config_entries.async_loaded_entries(DOMAIN)
    if not entries:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="not_loaded")
    return entries[0]


def _space_id(
    hass: HomeAssistant, entry: MlmuleConfigEntry, device_id: str, *, relays: bool = False
) -> str:
    """The id of the space (or, with `relays`, also the relay space) whose device is
    `device_id`."""
    data = entry.runtime_data
    device = dr.async_get(hass).async_get(device_id)
    if device is not None:
        for domain, space_id in device.identifiers:
            if domain == DOMAIN and (
                space_id in data.spaces or (relays and space_id in data.relays)
            ):
                return space_id
    raise ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="unknown_space",
        translation_placeholders={"device_id": device_id},
    )


def _space(hass: HomeAssistant, call: ServiceCall) -> SpaceCoordinator:
    entry = _loaded_entry(hass)
    return entry.runtime_data.spaces[_space_id(hass, entry, call.data[ATTR_DEVICE_ID])]


def _exchanging(hass: HomeAssistant, call: ServiceCall) -> SpaceCoordinator | RelayCoordinator:
    """The space or relay space whose device the call names."""
    entry = _loaded_entry(hass)
    space_id = _space_id(hass, entry, call.data[ATTR_DEVICE_ID], relays=True)
    data = entry.runtime_data
    return data.spaces[space_id] if space_id in data.spaces else data.relays[space_id]


async def _async_require_admin(call: ServiceCall) -> None:
    """Writing files is for administrators, as `async_register_admin_service` checks it."""
    if call.context.user_id is None:  # automations and scripts run as the system
        return
    user = await call.hass.auth.async_get_user(call.context.user_id)
    if user is None:
        raise UnknownUser(context=call.context, permission=POLICY_CONTROL)
    if not user.is_admin:
        raise Unauthorized(context=call.context, permission=POLICY_CONTROL)


def _task_key(space: SpaceCoordinator, task: str) -> str:
    if task not in space.settings.tasks:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="task_not_served",
            translation_placeholders={"space": space.settings.name, "task": task},
        )
    return space.settings.context_key(task)


def _allowed_path(hass: HomeAssistant, path: str) -> Path:
    if not hass.config.is_allowed_path(path):
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="path_not_allowed",
            translation_placeholders={"path": path},
        )
    return Path(path)


async def _async_train(call: ServiceCall) -> ServiceResponse:
    space = _space(call.hass, call)
    try:
        summaries = await space.async_train(reason="action")
    except MlmuleError as err:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="training_failed",
            translation_placeholders={"space": space.settings.name, "error": str(err)},
        ) from err
    return {"space": space.settings.name, "tasks": {t: s.as_dict() for t, s in summaries.items()}}


async def _async_export(call: ServiceCall) -> ServiceResponse:
    hass = call.hass
    space = _space(hass, call)
    context_key = _task_key(space, call.data[ATTR_TASK])
    target = None
    if ATTR_PATH in call.data:
        await _async_require_admin(call)
        target = _allowed_path(hass, call.data[ATTR_PATH])
    data: bytes = await space.async_job(
        lambda: space.host.export(context_key, compression=call.data[ATTR_COMPRESSION])
    )
    slot = space.host.slot(context_key)
    response: dict[str, Any] = {
        "context_key": context_key,
        "version": slot.version,
        "size": len(data),
        "sha256": slot.snapshot.sha256 if len(data) == slot.snapshot.size else None,
    }
    if target is not None:
        try:
            await hass.async_add_executor_job(atomic_write_bytes, target, data)
        except OSError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="unwritable_file",
                translation_placeholders={"path": str(target), "error": err.strerror or str(err)},
            ) from err
        response["path"] = str(target)
    else:
        response["snapshot"] = base64.b64encode(data).decode("ascii")
    return response


async def _async_import(call: ServiceCall) -> ServiceResponse:
    hass = call.hass
    space = _space(hass, call)
    if ATTR_PATH in call.data:
        source = _allowed_path(hass, call.data[ATTR_PATH])
        try:
            data = await hass.async_add_executor_job(source.read_bytes)
        except OSError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="unreadable_file",
                translation_placeholders={"path": str(source), "error": err.strerror or str(err)},
            ) from err
    elif ATTR_DATA in call.data:
        try:
            data = base64.b64decode(call.data[ATTR_DATA], validate=True)
        except (binascii.Error, ValueError) as err:
            raise ServiceValidationError(
                translation_domain=DOMAIN, translation_key="bad_base64"
            ) from err
    else:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="no_source")
    outcome = await space.async_receive(data, guest=False)
    if not outcome.accepted:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="snapshot_rejected",
            translation_placeholders={"reason": outcome.reason, "detail": outcome.detail},
        )
    return {
        "context_key": outcome.context_key,
        "version": outcome.version,
        "weight": outcome.weight,
    }


async def _async_rollback(call: ServiceCall) -> ServiceResponse:
    hass = call.hass
    space = _space(hass, call)
    context_key = _task_key(space, call.data[ATTR_TASK])
    try:
        slot = await space.async_job(
            lambda: space.host.rollback(context_key, call.data.get(ATTR_VERSION))
        )
    except MlmuleError as err:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="rollback_failed",
            translation_placeholders={"error": str(err)},
        ) from err
    LOGGER.info("%s: rolled %s back to v%s", space.settings.name, context_key, slot.version)
    await space.async_request_refresh()
    space.async_update_listeners()  # the model version shows, even with the same prediction
    return {"context_key": context_key, "version": slot.version}


def _broker_info(call: ServiceCall) -> BrokerInfo | None:
    """Where the phone reaches this home's broker, as the user gives it.

    Home Assistant's MQTT integration offers no public way to read its broker settings, and
    the address it uses may not be the one a phone can reach. Without it the phone is told
    the broker when it pairs (`mlmule-companion pair --host`).
    """
    if ATTR_BROKER_HOST not in call.data:
        return None
    return BrokerInfo(
        host=call.data[ATTR_BROKER_HOST],
        port=call.data[ATTR_BROKER_PORT],
        tls=call.data[ATTR_BROKER_TLS],
        username=call.data.get(ATTR_BROKER_USERNAME, ""),
    )


async def _async_pair(call: ServiceCall) -> ServiceResponse:
    hass = call.hass
    entry = _loaded_entry(hass)
    data = entry.runtime_data
    try:
        code = PairingCode.decode(call.data[ATTR_CODE])
    except MlmuleError as err:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="bad_pairing_code",
            translation_placeholders={"error": str(err)},
        ) from err
    if code.kind != "mule":
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="not_a_mule_code")
    spaces = [
        _space_id(hass, entry, device_id, relays=True)
        for device_id in call.data.get(ATTR_SPACES, ())
    ]
    trust_entry = TrustEntry.for_key(
        code.public_key,
        kind=PeerKind.MULE,
        role=call.data[ATTR_ROLE],
        label=call.data.get(ATTR_LABEL) or code.name,
        paired_at=time.time(),
        spaces=frozenset(spaces) if spaces else None,
    )
    await hass.async_add_executor_job(data.trust.add, trust_entry)
    home_code = PairingCode.for_identity(data.identity, broker=_broker_info(call)).encode()
    LOGGER.info(
        "paired mule %s (%s) as %s", trust_entry.peer_id, trust_entry.label, trust_entry.role
    )
    return {"mule_id": trust_entry.peer_id, "role": trust_entry.role, "home_code": home_code}


async def _async_unpair(call: ServiceCall) -> ServiceResponse:
    hass = call.hass
    data = _loaded_entry(hass).runtime_data
    mule_id = call.data[ATTR_MULE_ID]
    if not await hass.async_add_executor_job(data.trust.remove, mule_id):
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="unknown_mule",
            translation_placeholders={"mule_id": mule_id},
        )
    data.rejections.forget(mule_id)
    LOGGER.info("unpaired mule %s", mule_id)
    return {"mule_id": mule_id, "removed": True}


async def _async_exchange(call: ServiceCall) -> ServiceResponse:
    hass = call.hass
    space = _exchanging(hass, call)
    exchange = _loaded_entry(hass).runtime_data.exchange
    mule = call.data[ATTR_MULE_ID]
    if exchange is None or not await exchange.async_open(space, mule):
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="exchange_not_started",
            translation_placeholders={"space": space.settings.name, "mule_id": mule},
        )
    return {"space": space.settings.name, "mule_id": mule, "started": True}


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register every action (once, in `async_setup`).

    Actions that change whom the home trusts or which model it runs are for administrators
    only, and so is exporting to a file; training, exporting in the response and starting an
    exchange are for any user.
    """
    for name, handler, schema, response in (
        (SERVICE_TRAIN, _async_train, TRAIN_SCHEMA, SupportsResponse.OPTIONAL),
        (SERVICE_EXPORT, _async_export, EXPORT_SCHEMA, SupportsResponse.OPTIONAL),
        (SERVICE_EXCHANGE, _async_exchange, EXCHANGE_SCHEMA, SupportsResponse.OPTIONAL),
    ):
        hass.services.async_register(
            DOMAIN, name, _translated_errors(handler), schema, supports_response=response
        )
    for name, handler, schema, response in (
        (SERVICE_IMPORT, _async_import, IMPORT_SCHEMA, SupportsResponse.OPTIONAL),
        (SERVICE_ROLLBACK, _async_rollback, ROLLBACK_SCHEMA, SupportsResponse.OPTIONAL),
        (SERVICE_PAIR, _async_pair, PAIR_SCHEMA, SupportsResponse.ONLY),
        (SERVICE_UNPAIR, _async_unpair, UNPAIR_SCHEMA, SupportsResponse.OPTIONAL),
    ):
        async_register_admin_service(
            hass, DOMAIN, name, _translated_errors(handler), schema, supports_response=response
        )
