"""ONNX export of the model families.

The canonical export goes through the core's builder (`families.build_onnx`), so a model trained
here is byte-for-byte the graph a space builds from the same weights, with the spec, the feature
schema and the architecture hash in `metadata_props`. `torch_export` runs `torch.onnx.export`
on the torch module instead; the tests use it to show that the two compute the same function
and that our reader reads what torch writes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from mlmule_core.families import OPSET, FamilySpec, build_onnx
from mlmule_core.features import FeatureSchema
from mlmule_core.onnx import save_model
from mlmule_core.weights import FloatArray

from .families import FamilyModule


def canonical_export(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    schema: FeatureSchema,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The canonical ONNX file of a model (what snapshots carry and starters ship)."""
    return save_model(build_onnx(spec, weights, schema, metadata))


def torch_export(module: FamilyModule) -> bytes:
    """`torch.onnx.export` (the torch.export-based exporter) of the module at the same opset.

    Input `features` with a dynamic batch dimension, output `probability`, as canonically.
    """
    module = module.eval()
    example = torch.zeros(2, module.spec.n_inputs)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["features"],
        output_names=["probability"],
        opset_version=OPSET,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    if program is None:  # only a file target makes the exporter return nothing
        raise RuntimeError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data
