"""Divergence: a non-finite training loss stops the run at once and marks it ``diverged``.

Without this check a run whose loss turned NaN (``optimizer.lr=1e6``) kept training on NaN, reported
``"status": "ok"`` and exited 0, and in a sweep ranked among the good runs. :class:`DivergenceGuard`
looks at every training step's loss; the first NaN or inf raises :class:`TrainingDivergedError` (one line:
epoch, step, the loss and a hint), before the optimizer step's NaN parameters are checkpointed. The
command line writes ``metrics.json`` with ``"status": "diverged"`` and exits with
:data:`EXIT_DIVERGED`; in a multirun the job is recorded as diverged, the sweep goes on, and optuna
is told the trial failed (its objective is NaN).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

EXIT_DIVERGED = 3

# torchmetrics warns (several lines) when a NaN loss reaches a MeanMetric; the guard reports it in one line
warnings.filterwarnings("ignore", message="Encountered `nan` values in tensor")


class TrainingDivergedError(Exception):
    """The training loss became NaN or infinite; the message is the one line the user sees."""

    def __init__(self, epoch: int, step: int, loss: float, lr: float | None = None) -> None:
        self.epoch, self.step, self.loss, self.lr = int(epoch), int(step), float(loss), lr
        at = f"lower optimizer.lr (now {lr:g})" if lr is not None else "lower optimizer.lr"
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: the loss is {loss}; {at}, "
            "or clip gradients with trainer.gradient_clip_val=1.0"
        )

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` keeps of it."""
        loss = self.loss if math.isfinite(self.loss) else str(self.loss)
        return {"epoch": self.epoch, "step": self.step, "loss": loss}


def _loss(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


class DivergenceGuard(Callback):
    """Raise :class:`TrainingDivergedError` on the first non-finite training loss.

    Checked after every step (one device-to-host read of a scalar; ``every_n_steps`` to check less often
    on a GPU).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = max(1, int(every_n_steps))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        loss = _loss(outputs)
        if loss is None or batch_idx % self.every_n_steps:
            return
        if not bool(torch.isfinite(loss.detach()).all()):
            lr = None
            if trainer.optimizers:
                lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            raise TrainingDivergedError(
                trainer.current_epoch, trainer.global_step, float(loss.detach().float().mean()), lr
            )
