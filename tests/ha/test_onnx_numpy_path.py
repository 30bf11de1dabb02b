"""In HA's own environment (no torch, no onnx), models written by our writer run through the numpy
executor when onnxruntime cannot be imported, as on HA OS, and predict what onnxruntime does."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from custom_components.mlmule.core.errors import OnnxError
from custom_components.mlmule.core.onnx import (
    Node,
    OnnxModel,
    ValueInfo,
    create_session,
    load_model,
    reset_runtime_backend,
    runtime_backend,
    runtime_diagnostics,
    save_model,
)

LOGGER = "custom_components.mlmule.core.onnx.runtime"


@pytest.fixture(autouse=True)
def fresh_backend_choice() -> Iterator[None]:
    reset_runtime_backend()
    yield
    reset_runtime_backend()


def activity_model() -> OnnxModel:
    """A 96 -> 64 -> 32 -> 8 softmax MLP with input scaling, as the canonical builder writes."""
    rng = np.random.default_rng(42)
    nodes = [
        Node("Sub", ("x", "mean"), ("centred",)),
        Node("Div", ("centred", "std"), ("h0",)),
    ]
    initializers = {
        "mean": rng.standard_normal(96).astype(np.float32),
        "std": rng.uniform(0.5, 2.0, 96).astype(np.float32),
    }
    width, previous = 96, "h0"
    for layer, size in enumerate((64, 32, 8), start=1):
        weight, bias = f"w{layer}", f"b{layer}"
        initializers[weight] = (rng.standard_normal((size, width)) / width**0.5).astype(np.float32)
        initializers[bias] = (rng.standard_normal(size) * 0.1).astype(np.float32)
        nodes.append(Node("Gemm", (previous, weight, bias), (f"z{layer}",), {"transB": 1}))
        previous, width = f"z{layer}", size
        if layer < 3:
            nodes.append(Node("Relu", (previous,), (f"h{layer}",)))
            previous = f"h{layer}"
    nodes.append(Node("Softmax", (previous,), ("probabilities",), {"axis": 1}))
    return OnnxModel(
        nodes=tuple(nodes),
        inputs=(ValueInfo("x", shape=("batch", 96)),),
        outputs=(ValueInfo("probabilities", shape=("batch", 8)),),
        initializers=initializers,
        metadata={"mlmule.context_key": "activity/kitchen"},
    )


def test_without_onnxruntime_the_numpy_executor_predicts_the_same(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = save_model(activity_model())
    x = np.random.default_rng(1).standard_normal((1440, 96)).astype(np.float32)
    with_onnxruntime = create_session(data)
    assert with_onnxruntime.backend == "onnxruntime"
    expected = with_onnxruntime.run({"x": x})["probabilities"]

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on HA OS: not importable
    reset_runtime_backend()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        session = create_session(data)
        assert runtime_backend() == "numpy"
        create_session(load_model(data))
    assert session.backend == "numpy"
    actual = session.run({"x": x})["probabilities"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).mean() > 0.999
    choices = [record for record in caplog.records if record.name == LOGGER]
    assert len(choices) == 1, "the backend choice is logged once"
    assert choices[0].levelno == logging.INFO
    assert "numpy" in choices[0].getMessage()
    assert runtime_diagnostics()["backend"] == "numpy"
    with pytest.raises(OnnxError):
        create_session(data, "onnxruntime")


def test_the_model_round_trips_without_the_onnx_package() -> None:
    assert "onnx" not in sys.modules or sys.modules["onnx"] is None
    model = activity_model()
    data = save_model(model)
    loaded = load_model(data)
    assert loaded.metadata == {"mlmule.context_key": "activity/kitchen"}
    assert list(loaded.initializers) == list(model.initializers)
    for name, value in model.initializers.items():
        assert loaded.initializers[name].tobytes() == value.tobytes()
    assert save_model(loaded) == data
