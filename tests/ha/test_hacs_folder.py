"""HACS installs custom_components/mlmule alone, so nothing in it may import what lies outside:
the simulated world above all, and the rest of the repository. The scan parses every module (the
HA glue is Python 3.13 syntax, hence this environment). Where tests hand the world's data to the
integration, both build on one copy of the core."""

from __future__ import annotations

import ast
from pathlib import Path

from mlmule_world import WorldConfig, generate_world

from custom_components.mlmule.core import features

REPO = Path(__file__).resolve().parents[2]


# What HACS installs is custom_components/mlmule alone: the simulated world, the model zoo, the
# companion, the benchmark, the demo and the tests are not there, and `mlmule_core` is the
# integration's own core under another name (inside HA it is imported relatively).
NOT_IN_THE_HACS_FOLDER = frozenset(
    {
        "mlmule_world",
        "mlmule_core",
        "mlmule_models",
        "mule_companion",
        "mlmule_bench",
        "mlmule_demo",
    }
    | {"world", "models", "bench", "demo", "tests"}
)


def _imported_top_levels(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_integration_imports_nothing_outside_its_folder() -> None:
    integration = REPO / "custom_components" / "mlmule"
    modules = sorted(integration.rglob("*.py"))
    assert len(modules) > 30  # the glue and the core
    offending = {
        str(path.relative_to(REPO)): sorted(
            _imported_top_levels(path.read_text()) & NOT_IN_THE_HACS_FOLDER
        )
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}
    assert not (integration / "core" / "world").exists()


def test_the_scan_sees_every_import_form() -> None:
    source = "import mlmule_world\nfrom mlmule_world.generate import World\nfrom .core import x\n"
    assert _imported_top_levels(source) == {"mlmule_world"}
    assert _imported_top_levels("import os, tests.support.e2e as e2e\n") == {"os", "tests"}


def test_world_data_reaches_the_integration_with_its_own_types() -> None:
    world = generate_world(WorldConfig(n_homes=1, days=1, visit_rate=0.0), 3)
    roles = {role for _, role in world.entity_roles(world.homes[0].home_id).values()}
    assert features.SensorRole.MOTION in roles
    assert all(type(role) is features.SensorRole for role in roles)
