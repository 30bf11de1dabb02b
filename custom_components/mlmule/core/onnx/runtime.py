"""Inference sessions: onnxruntime where it can be imported, else the numpy executor.

HA OS (Alpine/musl) has no onnxruntime wheel, so the numpy executor is the portable path and
onnxruntime an accelerator. Which one "auto" picks is decided once per process, logged once
at INFO, and reported by `runtime_diagnostics()`; `reset_runtime_backend()` forgets the choice
(for tests that hide or restore onnxruntime).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..errors import OnnxError, OnnxRunError
from .executor import NumpyExecutor, check_feeds, split_inputs
from .model import OnnxModel, load_model, save_model

_LOGGER = logging.getLogger(__name__)

ONNXRUNTIME = "onnxruntime"
NUMPY = "numpy"
BACKENDS = (ONNXRUNTIME, NUMPY)


class Session(Protocol):
    backend: str  # "onnxruntime" | "numpy"
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class _BackendChoice:
    """The cached answer to "is onnxruntime importable here?" (the only global state)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._unavailable_because = ""
        self._decided = False

    def module(self) -> ModuleType | None:
        with self._lock:
            if not self._decided:
                self._decide()
            return self._module

    def _decide(self) -> None:
        try:
            self._module = importlib.import_module(ONNXRUNTIME)
        except (ImportError, OSError) as err:  # OSError: a wheel whose native library fails
            self._module = None
            self._unavailable_because = f"{type(err).__name__}: {err}"
            _LOGGER.info(
                "ONNX inference backend: numpy executor (onnxruntime unavailable: %s)",
                self._unavailable_because,
            )
        else:
            _LOGGER.info("ONNX inference backend: onnxruntime %s", _version(self._module))
        self._decided = True

    def diagnostics(self) -> dict[str, str]:
        module = self.module()
        if module is None:
            return {"backend": NUMPY, "onnxruntime_unavailable": self._unavailable_because}
        return {"backend": ONNXRUNTIME, "onnxruntime_version": _version(module)}

    def reset(self) -> None:
        with self._lock:
            self._module, self._unavailable_because, self._decided = None, "", False


def _version(module: ModuleType) -> str:
    return str(getattr(module, "__version__", "unknown"))


_CHOICE = _BackendChoice()


def runtime_backend() -> str:
    """The backend "auto" uses in this process; decided and logged (INFO) on first call."""
    return NUMPY if _CHOICE.module() is None else ONNXRUNTIME


def runtime_diagnostics() -> dict[str, str]:
    """The backend and why: the onnxruntime version, or the import error that ruled it out."""
    return _CHOICE.diagnostics()


def reset_runtime_backend() -> None:
    """Forget the cached choice; the next call decides (and logs) again."""
    _CHOICE.reset()


class NumpySession:
    backend = NUMPY

    def __init__(self, model: OnnxModel) -> None:
        self._executor = NumpyExecutor(model)
        self.input_names = self._executor.input_names
        self.output_names = self._executor.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._executor.run(feeds)


class OnnxruntimeSession:
    backend = ONNXRUNTIME

    def __init__(self, onnxruntime: ModuleType, model: OnnxModel, data: bytes) -> None:
        options = onnxruntime.SessionOptions()
        # Our models are small: one thread is fastest and leaves HA's cores alone.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self._session: Any = onnxruntime.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        # onnxruntime's exception classes are not importable in a stable way; all are Exceptions.
        except Exception as err:
            raise OnnxError(f"onnxruntime refused the model: {err}") from err
        self._inputs, self._optional_inputs = split_inputs(model)
        self.input_names = tuple(info.name for info in self._inputs)
        self.output_names = tuple(info.name for info in model.outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self._inputs, feeds, self._optional_inputs)
        try:
            results = self._session.run(list(self.output_names), dict(feeds))
        except Exception as err:
            raise OnnxRunError(f"onnxruntime failed: {err}") from err
        return dict(zip(self.output_names, results, strict=True))


def create_session(model: OnnxModel | bytes, backend: str = "auto") -> Session:
    """An inference session for `model` (an `OnnxModel`, or ONNX bytes checked by `load_model`).

    `backend`: "auto" (onnxruntime if importable, else numpy), "onnxruntime" or "numpy".
    """
    if backend not in ("auto", *BACKENDS):
        raise OnnxError(f"unknown backend {backend!r}; use 'auto', 'onnxruntime' or 'numpy'")
    if isinstance(model, OnnxModel):
        parsed, data = model, None
    else:
        parsed, data = load_model(model), bytes(model)
    if backend == NUMPY:
        return NumpySession(parsed)
    onnxruntime = _CHOICE.module()
    if onnxruntime is None:
        if backend == ONNXRUNTIME:
            raise OnnxError("onnxruntime is not available here", reason="onnx_backend_unavailable")
        return NumpySession(parsed)
    return OnnxruntimeSession(onnxruntime, parsed, data if data is not None else save_model(parsed))
