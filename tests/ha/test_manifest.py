"""manifest.json and hacs.json follow hassfest's and HACS's rules, so they cannot drift."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from awesomeversion import AwesomeVersion
from homeassistant.const import __version__ as ha_version
from homeassistant.core import HomeAssistant
from homeassistant.loader import async_get_integration
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = REPO / "custom_components" / "mlmule"
MANIFEST = json.loads((INTEGRATION / "manifest.json").read_text())
HACS = json.loads((REPO / "hacs.json").read_text())

# Packages with wheels for Alpine/musl (HA OS), or pure Python (threadpoolctl). onnxruntime and
# onnx have none.
MUSL_INSTALLABLE = {"numpy", "protobuf", "cryptography", "paho-mqtt", "threadpoolctl"}


def test_manifest_has_the_required_keys() -> None:
    for key in ("domain", "name", "codeowners", "documentation", "issue_tracker", "version"):
        assert MANIFEST.get(key), key
    assert MANIFEST["domain"] == INTEGRATION.name == "mlmule"
    assert MANIFEST["config_flow"] is True
    assert MANIFEST["iot_class"] == "local_push"
    assert MANIFEST["integration_type"] == "hub"
    assert set(MANIFEST["dependencies"]) >= {"mqtt", "recorder"}
    assert AwesomeVersion(MANIFEST["version"]).valid


def test_manifest_keys_are_domain_name_then_sorted() -> None:
    keys = list(MANIFEST)
    assert keys[:2] == ["domain", "name"]
    assert keys[2:] == sorted(keys[2:])


def test_requirements_install_on_musl() -> None:
    names = {canonicalize_name(Requirement(r).name) for r in MANIFEST["requirements"]}
    assert names <= MUSL_INSTALLABLE, names - MUSL_INSTALLABLE
    assert not names & {"onnxruntime", "onnx", "torch"}


def test_hacs_json_names_a_tested_minimum_version() -> None:
    assert HACS["name"] == MANIFEST["name"]
    minimum = AwesomeVersion(HACS["homeassistant"])
    assert minimum >= AwesomeVersion("2026.2.0")
    assert minimum <= AwesomeVersion(ha_version), "hacs.json asks for a newer HA than we test"
    assert "render_readme" not in HACS


def test_repository_has_exactly_one_integration_and_a_readme() -> None:
    folders = [
        p for p in (REPO / "custom_components").iterdir() if p.is_dir() and p.name != "__pycache__"
    ]
    assert folders == [INTEGRATION]
    assert (REPO / "README.md").is_file()


def test_brand_icon_is_a_256_png() -> None:
    data = (INTEGRATION / "brand" / "icon.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (256, 256)


async def test_home_assistant_reads_the_manifest(hass: HomeAssistant) -> None:
    integration = await async_get_integration(hass, "mlmule")
    assert integration.config_flow
    assert integration.version == AwesomeVersion(MANIFEST["version"])
    assert integration.dependencies == MANIFEST["dependencies"]
