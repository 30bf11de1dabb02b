"""The HA-free core of mlmule: learning, snapshots and the exchange protocol.

Home Assistant loads it as `custom_components.mlmule.core`; the companion and the model tooling
import the same files as `mlmule_core` (see pyproject.toml). Modules here import only the standard
library, numpy, protobuf and cryptography, and refer to each other relatively.
"""
