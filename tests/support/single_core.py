"""One copy of the core in a process that runs the integration: `mlmule_core` is made the
integration's own `custom_components.mlmule.core`, module for module.

The simulated world (`mlmule_world`) builds on the core as `mlmule_core`, the name the project's
installation gives it; inside Home Assistant the integration imports the same files as
`custom_components.mlmule.core`. Loaded twice, the two copies would hold different classes for
one concept: a world's `SensorRole.POWER` would not be the integration's (`is` fails, and so does
`isinstance`, e.g. on errors). Importing this module before anything imports `mlmule_core` (the
Home Assistant fixtures do) leaves one copy, so world data reaches the integration unchanged.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import custom_components.mlmule.core as integration_core

ALIAS = "mlmule_core"


def share_the_integrations_core() -> None:
    loaded = sys.modules.get(ALIAS)
    if loaded is integration_core:
        return
    if loaded is not None:
        raise RuntimeError(f"{ALIAS} was imported as a second copy before {__name__}")
    aliases = {ALIAS: integration_core}
    prefix = integration_core.__name__
    for module in pkgutil.walk_packages(integration_core.__path__, prefix + "."):
        aliases[ALIAS + module.name[len(prefix) :]] = importlib.import_module(module.name)
    sys.modules.update(aliases)


share_the_integrations_core()  # on import: a pytest plugin listed before the HA fixtures
