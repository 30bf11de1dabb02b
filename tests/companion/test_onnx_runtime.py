"""Sessions: the backend choice, and identical behaviour of both backends for callers."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime
import pytest
from mlmule_core.errors import OnnxDecodeError, OnnxError, OnnxInputError, OnnxRunError
from mlmule_core.onnx import (
    Node,
    OnnxModel,
    ValueInfo,
    create_session,
    reset_runtime_backend,
    runtime_backend,
    runtime_diagnostics,
    save_model,
)

BACKENDS = ("numpy", "onnxruntime")
LOGGER = "mlmule_core.onnx.runtime"


@pytest.fixture(autouse=True)
def fresh_backend_choice() -> Iterator[None]:
    reset_runtime_backend()
    yield
    reset_runtime_backend()


def scaled_model() -> OnnxModel:
    """y = reshape(x, shape) * scale + bias; `scale` is an input with a default."""
    return OnnxModel(
        nodes=(
            Node("Reshape", ("x", "shape"), ("flat",)),
            Node("Mul", ("flat", "scale"), ("scaled",)),
            Node("Add", ("scaled", "bias"), ("y",)),
            Node("Identity", ("x",), ("x_copy",)),
        ),
        inputs=(
            ValueInfo("x", shape=("batch", 2, 3)),
            ValueInfo("shape", elem_type=7, shape=(2,)),
            ValueInfo("scale", shape=(6,)),
        ),
        outputs=(ValueInfo("y", shape=("batch", 6)), ValueInfo("x_copy", shape=("batch", 2, 3))),
        initializers={
            "scale": np.full(6, 2.0, np.float32),
            "bias": np.arange(6, dtype=np.float32),
        },
    )


def feeds(batch: int = 4) -> dict[str, np.ndarray]:
    x = np.linspace(-1, 1, batch * 6, dtype=np.float32).reshape(batch, 2, 3)
    return {"x": x, "shape": np.array([0, -1], np.int64)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source", ["model", "bytes"])
def test_sessions_from_models_and_bytes(backend: str, source: str) -> None:
    model = scaled_model()
    session = create_session(model if source == "model" else save_model(model), backend)
    assert session.backend == backend
    assert session.input_names == ("x", "shape")
    assert session.output_names == ("y", "x_copy")
    given = feeds()
    outputs = session.run(given)
    expected = given["x"].reshape(4, 6) * 2 + np.arange(6)
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)
    np.testing.assert_array_equal(outputs["x_copy"], given["x"])
    assert not np.shares_memory(outputs["x_copy"], given["x"])
    overridden = session.run({**given, "scale": np.ones(6, np.float32)})
    np.testing.assert_allclose(overridden["y"], given["x"].reshape(4, 6) + np.arange(6))


def wrong_feeds() -> list[Any]:
    good = feeds()
    return [
        pytest.param({"x": good["x"]}, "missing", id="missing"),
        pytest.param({**good, "extra": good["x"]}, "unknown", id="unknown"),
        pytest.param({**good, "x": good["x"].astype(np.float64)}, "float32", id="dtype"),
        pytest.param({**good, "x": good["x"].reshape(4, 6)}, "shape", id="rank"),
        pytest.param({**good, "x": np.zeros((4, 3, 2), np.float32)}, "shape", id="static-dim"),
        pytest.param({**good, "x": good["x"].tolist()}, "numpy array", id="not-an-array"),
        pytest.param({**good, "scale": np.ones(5, np.float32)}, "scale", id="bad-override"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("given", "message"), wrong_feeds())
def test_both_backends_refuse_the_same_bad_feeds(
    backend: str, given: dict[str, Any], message: str
) -> None:
    session = create_session(scaled_model(), backend)
    with pytest.raises(OnnxInputError, match=message):
        session.run(given)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_report_a_failing_node_as_a_run_error(backend: str) -> None:
    session = create_session(scaled_model(), backend)
    with pytest.raises(OnnxRunError):
        session.run({**feeds(), "shape": np.array([5, -1], np.int64)})


def test_auto_uses_onnxruntime_where_it_is_installed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert runtime_backend() == "onnxruntime"
        assert create_session(scaled_model()).backend == "onnxruntime"
        assert runtime_backend() == "onnxruntime"
    choices = [r for r in caplog.records if r.name == LOGGER]
    assert len(choices) == 1
    assert "onnxruntime" in choices[0].getMessage()
    assert runtime_diagnostics() == {
        "backend": "onnxruntime",
        "onnxruntime_version": onnxruntime.__version__,
    }


def test_auto_falls_back_to_numpy_without_onnxruntime(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = create_session(scaled_model(), "onnxruntime").run(feeds())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    reset_runtime_backend()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        session = create_session(scaled_model())
        assert runtime_backend() == "numpy"
    assert session.backend == "numpy"
    for name, value in session.run(feeds()).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6)
    choices = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(choices) == 1
    assert "numpy" in choices[0]
    assert "import of onnxruntime halted" in runtime_diagnostics()["onnxruntime_unavailable"]
    with pytest.raises(OnnxError) as caught:
        create_session(scaled_model(), "onnxruntime")
    assert caught.value.reason == "onnx_backend_unavailable"


def test_bad_arguments_raise_typed_errors() -> None:
    with pytest.raises(OnnxError, match="backend"):
        create_session(scaled_model(), "tensorflow")
    with pytest.raises(OnnxDecodeError):
        create_session(b"definitely not onnx")
