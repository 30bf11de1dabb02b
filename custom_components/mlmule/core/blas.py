"""One BLAS thread for the numpy work of training and inference.

OpenBLAS runs every matrix product on as many threads as there are cores. The models here are
small MLPs, whose products are too small to share out: on two cores the numpy trainer ran several
times slower with OpenBLAS's default threads than with one (bench/results/event_loop.json), and
the extra threads compete with Home Assistant's event loop and with the other executor jobs.

A BLAS library has one thread pool for the whole process, shared by every thread, so the limit
cannot be scoped to one job: jobs that overlap would undo each other's limits. It is set once, for
the process, by the first training or inference job (as `OPENBLAS_NUM_THREADS=1` would, had it
been set before numpy loaded), and kept. Torch keeps its own setting (`torch.set_num_threads`),
and onnxruntime sessions use one thread by their options (`onnx/runtime.py`).
"""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_limits

_LOCK = threading.Lock()
_PINNED = threading.Event()


def pin_blas_threads() -> None:
    """Limit the BLAS libraries loaded in this process (numpy's OpenBLAS) to one thread.

    Idempotent and cheap after the first call, so every training and inference entry point
    calls it.
    """
    if _PINNED.is_set():
        return
    with _LOCK:
        if not _PINNED.is_set():
            threadpool_limits(limits=1, user_api="blas")
            _PINNED.set()
