"""Actions as the HA quality rules want them: translated errors, admin-only files, devices as
spaces, and the broker as the user gives it."""

from __future__ import annotations

from pathlib import Path

import pytest
from homeassistant.core import Context, HomeAssistant, ServiceCall
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError, Unauthorized
from pytest_homeassistant_custom_component.common import MockConfigEntry, MockUser
from test_space_runtime import SPACE_ID, hub, setup  # noqa: F401  (the space fixture is shared)

from custom_components.mlmule.const import DOMAIN
from custom_components.mlmule.core.host import HostError
from custom_components.mlmule.core.identity import BrokerInfo, Identity, PairingCode
from custom_components.mlmule.services import _translated_errors
from tests.support.ha_fixtures import space_device


def device_id(hass: HomeAssistant) -> str:
    device = space_device(hass, SPACE_ID)
    assert device is not None
    return device.id


async def test_exporting_to_a_file_is_for_administrators(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    hass_read_only_user: MockUser,
    hass_admin_user: MockUser,
    isolated_config_dir: Path,
) -> None:
    await setup(hass, hub)
    hass.config.allowlist_external_dirs = {str(isolated_config_dir)}
    target = isolated_config_dir / "bedroom.mlms"
    fields = {"device_id": device_id(hass), "path": str(target)}
    with pytest.raises(Unauthorized):
        await hass.services.async_call(
            DOMAIN,
            "export_snapshot",
            fields,
            blocking=True,
            return_response=True,
            context=Context(user_id=hass_read_only_user.id),
        )
    assert not target.exists()
    # in the response, the same user may export it
    exported = await hass.services.async_call(
        DOMAIN,
        "export_snapshot",
        {"device_id": fields["device_id"]},
        blocking=True,
        return_response=True,
        context=Context(user_id=hass_read_only_user.id),
    )
    assert exported is not None
    assert "snapshot" in exported
    written = await hass.services.async_call(
        DOMAIN,
        "export_snapshot",
        fields,
        blocking=True,
        return_response=True,
        context=Context(user_id=hass_admin_user.id),
    )
    assert written is not None
    assert written["path"] == str(target)
    assert target.stat().st_size == written["size"]


async def test_a_file_that_cannot_be_written_is_a_translated_error(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    isolated_config_dir: Path,
) -> None:
    await setup(hass, hub)
    hass.config.allowlist_external_dirs = {str(isolated_config_dir)}
    taken = isolated_config_dir / "a-directory.mlms"
    taken.mkdir()
    with pytest.raises(HomeAssistantError, match="could not be written") as raised:
        await hass.services.async_call(
            DOMAIN,
            "export_snapshot",
            {"device_id": device_id(hass), "path": str(taken)},
            blocking=True,
            return_response=True,
        )
    assert raised.value.translation_key == "unwritable_file"
    assert taken.is_dir()


@pytest.mark.parametrize(
    ("error", "key"),
    [
        (
            HostError("occupancy/bedroom changed during training", reason="superseded"),
            "action_failed",
        ),
        (PermissionError(13, "Permission denied"), "storage_failed"),
    ],
)
async def test_no_core_or_file_error_escapes_an_action(
    hass: HomeAssistant, error: Exception, key: str
) -> None:
    """The net under every handler: what a handler does not explain itself is still translated."""

    async def failing(_call: ServiceCall) -> None:
        raise error

    call = ServiceCall(hass, DOMAIN, "train", {})
    with pytest.raises(HomeAssistantError) as raised:
        await _translated_errors(failing)(call)
    assert not isinstance(raised.value, ServiceValidationError)
    assert raised.value.translation_domain == DOMAIN
    assert raised.value.translation_key == key
    assert raised.value.translation_placeholders is not None
    assert raised.value.translation_placeholders["action"] == "train"
    assert raised.value.__cause__ is error


async def test_pairing_chooses_spaces_by_device_and_takes_the_broker_from_the_user(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
) -> None:
    await setup(hass, hub)
    phone = Identity.generate(kind="mule", name="Alice's phone")
    paired = await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {
            "code": PairingCode.for_identity(phone).encode(),
            "spaces": [device_id(hass)],
            "broker_host": "mqtt.example.org",
            "broker_port": 8883,
            "broker_tls": True,
            "broker_username": "alice",
        },
        blocking=True,
        return_response=True,
    )
    assert paired is not None
    trusted = hub.runtime_data.trust.get(phone.id)
    assert trusted is not None
    assert trusted.spaces == frozenset({SPACE_ID})
    home = PairingCode.decode(str(paired["home_code"]))
    assert home.broker == BrokerInfo("mqtt.example.org", 8883, tls=True, username="alice")

    # without the broker's address the code names none: the phone is told it when it pairs
    other = Identity.generate(kind="mule", name="Bob's phone")
    paired = await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(other).encode()},
        blocking=True,
        return_response=True,
    )
    assert paired is not None
    assert PairingCode.decode(str(paired["home_code"])).broker is None
    assert hub.runtime_data.trust.get(other.id).spaces is None  # type: ignore[union-attr]


async def test_pairing_with_a_device_that_is_no_space_is_refused(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
) -> None:
    await setup(hass, hub)
    phone = Identity.generate(kind="mule", name="Alice's phone")
    with pytest.raises(ServiceValidationError, match="not an ML Mule space"):
        await hass.services.async_call(
            DOMAIN,
            "pair_mule",
            {"code": PairingCode.for_identity(phone).encode(), "spaces": ["no-such-device"]},
            blocking=True,
            return_response=True,
        )
    assert hub.runtime_data.trust.get(phone.id) is None
