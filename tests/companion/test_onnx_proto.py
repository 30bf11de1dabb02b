"""The runtime-built protobuf subset matches the real ONNX schema, with either protobuf backend."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal import api_implementation
from mlmule_core.onnx import Node, OnnxModel, ValueInfo, create_session, proto, save_model

HERE = Path(__file__).resolve().parent
MESSAGES = [
    "ModelProto",
    "GraphProto",
    "NodeProto",
    "AttributeProto",
    "TensorProto",
    "ValueInfoProto",
    "TypeProto",
    "TensorShapeProto",
    "OperatorSetIdProto",
    "StringStringEntryProto",
]
# Declared as bytes so that their bodies are never parsed (their presence is refused).
OPAQUE_FIELDS = {("ModelProto", "functions")}


def nested_descriptors(descriptor: object) -> list[object]:
    found = [descriptor]
    for nested in descriptor.nested_types:  # type: ignore[attr-defined]
        found.extend(nested_descriptors(nested))
    return found


@pytest.mark.parametrize("name", MESSAGES)
def test_every_declared_field_matches_the_onnx_specification(name: str) -> None:
    ours_root = getattr(proto, name).DESCRIPTOR
    theirs_root = getattr(onnx, name).DESCRIPTOR
    assert ours_root.full_name == f"mlmule.onnx_subset.{name}" != theirs_root.full_name
    theirs_by_name = {d.name: d for d in nested_descriptors(theirs_root)}
    for ours in nested_descriptors(ours_root):
        theirs = theirs_by_name[ours.name]
        for field in ours.fields:
            reference = theirs.fields_by_name[field.name]
            assert field.number == reference.number, (ours.name, field.name)
            assert field.is_repeated == reference.is_repeated, (ours.name, field.name)
            if (ours.name, field.name) in OPAQUE_FIELDS:
                assert field.type == FieldDescriptor.TYPE_BYTES
                assert reference.type == FieldDescriptor.TYPE_MESSAGE
                continue
            assert field.type == reference.type, (ours.name, field.name)
            if field.message_type is not None:
                assert field.message_type.name == reference.message_type.name
            if field.enum_type is not None:
                assert {v.name: v.number for v in field.enum_type.values}.items() <= {
                    v.name: v.number for v in reference.enum_type.values
                }.items()
            if field.containing_oneof is not None:
                assert field.containing_oneof.name == reference.containing_oneof.name


def test_data_type_codes_match_the_specification() -> None:
    for member in proto.DataType:
        assert onnx.TensorProto.DataType.Value(member.name) == member.value


def sample_model() -> OnnxModel:
    rng = np.random.default_rng(3)
    return OnnxModel(
        nodes=(
            Node("Gemm", ("x", "w", "b"), ("h",), {"transB": 1, "alpha": 0.75}),
            Node("Sigmoid", ("h",), ("y",)),
        ),
        inputs=(ValueInfo("x", shape=("batch", 4)),),
        outputs=(ValueInfo("y", shape=("batch", 2)),),
        initializers={
            "w": rng.standard_normal((2, 4)).astype(np.float32),
            "b": rng.standard_normal(2).astype(np.float32),
        },
        metadata={"note": "ünïcode"},
    )


PURE_PYTHON_CHECK = """
import hashlib, sys
import numpy as np
from google.protobuf.internal import api_implementation
from mlmule_core.onnx import create_session, load_model, save_model
data = open(sys.argv[1], "rb").read()
model = load_model(data)
x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
y = create_session(model, "numpy").run({"x": x})["y"]
print(api_implementation.Type(), hashlib.sha256(save_model(model)).hexdigest(), y.tobytes().hex())
"""


def pure_python_environment() -> dict[str, str]:
    return {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}


def test_pure_python_protobuf_reads_and_writes_the_same_bytes(tmp_path: Path) -> None:
    """HA OS may only have protobuf's pure-Python backend; it must give identical results."""
    assert api_implementation.Type() != "python"  # this process uses the native backend
    data = save_model(sample_model())
    (tmp_path / "model.onnx").write_bytes(data)
    completed = subprocess.run(
        [sys.executable, "-c", PURE_PYTHON_CHECK, str(tmp_path / "model.onnx")],
        env=pure_python_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    backend, digest, output = completed.stdout.split()
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    expected = create_session(data, "numpy").run({"x": x})["y"]
    assert backend == "python"
    assert digest == hashlib.sha256(data).hexdigest()
    assert output == expected.tobytes().hex()


def test_reader_suite_passes_with_pure_python_protobuf() -> None:
    """The reader's refusals (corrupt files, invalid UTF-8, nesting) hold on that backend too."""
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_onnx_model.py"],
        cwd=HERE,
        env=pure_python_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
