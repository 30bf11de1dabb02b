"""Files torch.onnx.export writes for MLP families like ours load in our reader and run the same
in the numpy executor, onnxruntime and torch; both exporters (TorchScript and dynamo)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlmule_core.errors import OnnxDecodeError
from mlmule_core.onnx import NumpyExecutor, load_model, save_model
from torch import nn

BATCH_SIZES = (1, 257)


class Scaled(nn.Module):
    """`(x - mean) / std` in front of a network, as our families normalise their inputs."""

    def __init__(self, n_inputs: int, body: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(n_inputs))
        self.register_buffer("std", torch.rand(n_inputs) + 0.5)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class Windowed(nn.Module):
    """A window of frames flattened into one vector, clamped, with a gated output."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4 * 6, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.dense(x.reshape(x.shape[0], -1).clamp(-3.0, 3.0)))
        logits = self.head(h)
        return torch.where(logits > 0, logits, torch.exp(logits) - 1).log_softmax(dim=-1)


class PerFrame(nn.Module):
    """A dense layer applied to each frame of a 3-D input (MatMul + Add instead of Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = nn.Linear(6, 5)
        self.norm = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_frame = torch.relu(self.frame(x))  # [batch, 4, 5]
        return torch.sigmoid(self.norm(per_frame.mean(dim=1)))


def occupancy() -> nn.Module:  # 32 -> 32 -> 16 -> 1, sigmoid
    body = nn.Sequential(
        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid()
    )
    return Scaled(32, body)


def activity() -> nn.Module:  # 96 -> 64 -> 32 -> 8, softmax, with dropout and layer norm
    body = nn.Sequential(
        nn.Linear(96, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.LayerNorm(64),
        nn.Linear(64, 32),
        nn.GELU(),
        nn.Linear(32, 8),
        nn.Softmax(dim=-1),
    )
    return Scaled(96, body)


FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "occupancy": (occupancy, (32,)),
    "activity": (activity, (96,)),
    "windowed": (Windowed, (4, 6)),
    "per_frame": (PerFrame, (4, 6)),
}


def build(family: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(sum(map(ord, family)))
    factory, feature_shape = FAMILIES[family]
    module = factory().eval()
    if isinstance(module, PerFrame):  # non-trivial running statistics
        module.norm.running_mean.uniform_(-1, 1)
        module.norm.running_var.uniform_(0.5, 2)
    return module, feature_shape


def export(module: nn.Module, feature_shape: tuple[int, ...], dynamo: bool, opset: int) -> bytes:
    example = (torch.randn(3, *feature_shape),)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                module,
                example,
                input_names=["x"],
                output_names=["y"],
                dynamo=True,
                opset_version=opset,
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
            )
            assert program is not None
            return bytes(program.model_proto.SerializeToString())
        torch.onnx.export(
            module,
            example,
            buffer,
            input_names=["x"],
            output_names=["y"],
            dynamo=False,
            opset_version=opset,
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return buffer.getvalue()


CASES = [
    pytest.param(
        family, dynamo, opset, id=f"{family}-{'dynamo' if dynamo else 'torchscript'}-{opset}"
    )
    for family, dynamo, opset in [
        ("occupancy", False, 17),
        ("occupancy", True, 20),
        ("activity", False, 13),  # LayerNorm and GELU decomposed into primitive operators
        ("activity", False, 20),
        ("activity", True, 18),
        ("windowed", False, 17),
        ("windowed", True, 20),
        ("per_frame", False, 17),
        ("per_frame", True, 20),
    ]
]


@pytest.mark.parametrize(("family", "dynamo", "opset"), CASES)
def test_exported_family_runs_like_onnxruntime_and_torch(
    family: str, dynamo: bool, opset: int
) -> None:
    module, feature_shape = build(family)
    data = export(module, feature_shape, dynamo, opset)
    model = load_model(data)
    assert model.opset == onnx.load_from_string(data).opset_import[0].version
    reference = ort.InferenceSession(data)
    executor = NumpyExecutor(model)
    rewritten = ort.InferenceSession(save_model(model))
    rng = np.random.default_rng(5)
    for batch in BATCH_SIZES:
        x = rng.standard_normal((batch, *feature_shape)).astype(np.float32)
        expected = reference.run(None, {"x": x})[0]
        with torch.no_grad():
            from_torch = module(torch.from_numpy(x)).numpy()
        actual = executor.run({"x": x})["y"]
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(actual, from_torch, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(rewritten.run(None, {"x": x})[0], expected)


def test_rewritten_export_passes_the_checker() -> None:
    module, feature_shape = build("activity")
    model = load_model(export(module, feature_shape, dynamo=True, opset=20))
    onnx.checker.check_model(onnx.load_from_string(save_model(model)), full_check=True)


def test_export_with_external_weights_is_refused_clearly(tmp_path: Path) -> None:
    """The dynamo exporter's default file keeps weights in a side file we never read."""
    module, feature_shape = build("occupancy")
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, *feature_shape),), path, dynamo=True)
    assert list(tmp_path.glob("*.data")), "the exporter no longer writes external data"
    with pytest.raises(OnnxDecodeError, match="external"):
        load_model(path.read_bytes())
