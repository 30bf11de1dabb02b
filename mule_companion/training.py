"""On-phone training for mobile-data mode: warm-started, bounded in time and memory.

The loop is the core's `Trainer` (shared with the numpy trainer and the simulator), so the phone
trains exactly as every other peer does. The gradient step is torch's when torch is installed
(`mlmule_models.train`), with DP-SGD through opacus when the config asks for it; without torch
(e.g. where no wheel exists) the numpy step is used and DP is unavailable.

Bounds: the data is at most `max_samples` minutes (a few MB); the run stops after `epochs`, at
early stopping, or at `max_seconds`; torch uses `threads` threads. The run advances in short
chunks, so a stop request (SIGTERM) or the progress bar never waits long.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import secrets
import threading
from dataclasses import dataclass, field

from mlmule_core.families import FamilySpec
from mlmule_core.host import TrainingJob
from mlmule_core.train_numpy import Distillation, DPConfig, TrainConfig, Trainer
from mlmule_core.weights import Weights
from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs in the environment

from .config import TrainingSettings
from .datalog import TrainingData
from .errors import CompanionError

_LOGGER = logging.getLogger(__name__)
CHUNK_SECONDS = 0.2


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class PhoneTrainer:
    """Builds and runs training jobs with the phone's settings."""

    settings: TrainingSettings
    dp: DPConfig | None = None
    progress: bool = False  # show a tqdm bar (interactive runs)
    _runs: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    @property
    def backend(self) -> str:
        wanted = self.settings.backend
        if wanted == "auto":
            return "torch" if torch_available() else "numpy"
        return wanted

    def config(self) -> TrainConfig:
        s = self.settings
        return TrainConfig(
            learning_rate=s.learning_rate,
            batch_size=s.batch_size,
            max_epochs=s.epochs,
            patience=s.patience,
            prox_mu=s.prox_mu,
            val_fraction=s.val_fraction,
            max_seconds=s.max_seconds,
            dp=self.dp,
            seed=self._seed(),
        )

    def _seed(self) -> int:
        """Fresh randomness every run, as DP's noise must never repeat; with `training.seed`,
        the n-th run of this process seeds from it and n, so runs differ yet repeat exactly."""
        if self.settings.seed is None:
            return secrets.randbelow(2**31)
        return (self.settings.seed + next(self._runs)) % 2**31

    def trainer(
        self,
        spec: FamilySpec,
        weights: Weights,
        data: TrainingData,
        *,
        distill: Distillation | None = None,
    ) -> Trainer:
        """A training run on the phone's data; with `distill`, towards the knowledge cache's
        ensemble on the proxy set too (mobile-data mode's distillation)."""
        config = self.config()
        if self.backend == "numpy":
            if self.dp is not None:
                raise CompanionError(
                    "DP-SGD needs torch, which is not installed", reason="no_torch"
                )
            return Trainer(spec, weights, data.x, data.y, config, distill=distill)
        if not torch_available():
            raise CompanionError("training.backend is torch, but torch is not installed")
        if distill is not None and self.dp is not None:
            # DP-SGD clips per sample; a proxy term beside it is not accounted for yet
            raise CompanionError(
                "distillation is not available with DP-SGD", reason="dp_distillation"
            )
        import torch  # noqa: PLC0415 - torch is heavy and only needed once training starts
        from mlmule_models.train import TorchBackend  # noqa: PLC0415 - imports torch

        torch.set_num_threads(self.settings.threads)
        return Trainer(spec, weights, data.x, data.y, config, backend=TorchBackend, distill=distill)

    def training_rows(self, samples: int) -> int:
        """Rows of the training split; the latest `val_fraction` validate."""
        return max(1, round(samples * (1 - self.settings.val_fraction)))

    def planned_epsilon(self, samples: int) -> float:
        """The most a DP-SGD run on `samples` rows can spend (every epoch run)."""
        if self.dp is None:
            return 0.0
        from opacus.accountants import RDPAccountant  # noqa: PLC0415 - DP implies torch

        rows = self.training_rows(samples)
        batch = self.settings.batch_size
        steps = self.settings.epochs * -(-rows // batch)
        accountant = RDPAccountant()
        accountant.history = [(self.dp.noise_multiplier, min(1.0, batch / rows), steps)]
        return float(accountant.get_epsilon(self.dp.delta))

    def run(self, job: TrainingJob, *, samples: int, label: str, stop: threading.Event) -> bool:
        """Advance `job` to the end of training; False if `stop` was set first."""
        batches = -(-self.training_rows(samples) // self.settings.batch_size)
        with tqdm(
            total=self.settings.epochs * batches * len(job.trainers),
            desc=f"training {label}",
            unit="step",
            leave=False,
            disable=not self.progress,
        ) as bar:
            while not job.run(max_seconds=CHUNK_SECONDS):
                bar.update(job.steps - bar.n)
                if stop.is_set():
                    _LOGGER.info("stopping: training of %s abandoned", label)
                    return False
            bar.update(job.steps - bar.n)
        return True
