"""Exact resume and preemption: what a checkpoint must carry besides weights, and signals that save one.

Exact resume. A run interrupted anywhere (``kill -9`` between checkpoints, a mid-epoch checkpoint from
``callbacks.last_checkpoint.every_n_train_steps``) and resumed with ``ckpt_path=last`` ends with the
same metrics, to the last digit on CPU, as the run that was never interrupted. What training draws at
random, and where its state lives in a checkpoint:

- dropout masks (:mod:`ugmm.nn`, torch's global generator) and anything else drawing from the global
  torch (CPU and CUDA), numpy or python ``random`` generators: :class:`RandomStates`, a callback
  whose state is saved with every checkpoint and put back just before the first training step after
  loading (not when the checkpoint is read: nothing drawn between loading and that step may shift it);
- the order of training rows: :class:`ugmm.data.base.EpochSampler`, a permutation per epoch from the
  sampler's seed and the epoch number, stateful (Lightning saves it with the loop state), so a
  mid-epoch resume skips exactly the batches already trained on, in the same permutation;
- augmentation (``data.augment``): drawn per training batch, in training-step order, from the
  DataModule's own generator (saved as the DataModule's state);
- the loops' positions (epoch, step, batch within the epoch): Lightning's own loop state.

Preemption. SIGTERM (SLURM preemption or time limit, a spot instance, ``kill``) or SIGINT (Ctrl-C):
:class:`Preemption` lets the current step finish, writes ``checkpoints/last.ckpt`` and raises
:class:`TrainingInterruptedError`; the command line prints one line saying how to resume and exits with 128 + the
signal number (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from ugmm.config import ConfigError

log = logging.getLogger(__name__)


class TrainingInterruptedError(Exception):
    """Training stopped by a signal after saving a resumable checkpoint; ``exit_code`` = 128 + signal."""

    def __init__(self, signum: int, ckpt_path: Path | None, epoch: int, step: int) -> None:
        self.signum, self.ckpt_path, self.epoch, self.step = int(signum), ckpt_path, int(epoch), int(step)
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        saved = f"saved {ckpt_path}" if ckpt_path is not None else "no checkpoint saved"
        super().__init__(f"interrupted by {name} at epoch {epoch}, step {step}: {saved}")

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` keeps of it."""
        return {"epoch": self.epoch, "step": self.step, "ckpt": None if self.ckpt_path is None else str(self.ckpt_path)}


# --- random states ----------------------------------------------------------------------------------
def collect_random_states() -> dict[str, Any]:
    """The global generators' states as plain tensors and ints (checkpoints load with weights_only)."""
    # the legacy global numpy state: what np.random.* calls draw from
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Put back what :func:`collect_random_states` returned."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class RandomStates(Callback):
    """Saves the global random generators with every checkpoint and restores them on resume.

    The states are captured when the checkpoint is written and put back at the first
    ``on_train_batch_start`` after loading, i.e. after the DataModule has fetched that batch and just
    before the step that draws the next dropout masks.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RandomStates"

    def state_dict(self) -> dict[str, Any]:
        return collect_random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            set_random_states(self._pending)
            self._pending = None


class MetricStates(Callback):
    """Saves the accumulators of the module's torchmetrics (the epoch's running training loss and
    accuracy, not persistent by default) and restores them with the random states, so an epoch
    resumed in its middle reports the same epoch metrics as one that ran through."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, Any]] | None = None

    @staticmethod
    def _metrics(pl_module: LightningModule):
        from torchmetrics import Metric

        return {name: m for name, m in pl_module.named_modules() if isinstance(m, Metric) and name}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        states = {}
        ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if ready >= trainer.num_training_batches:
            return  # the epoch is over: the next starts from reset metrics, as it would without a restart
        for name, metric in self._metrics(pl_module).items():
            values = {key: getattr(metric, key) for key in metric._defaults}
            if all(isinstance(v, torch.Tensor) for v in values.values()):
                states[name] = {"values": {k: v.detach().clone() for k, v in values.items()}}
                states[name]["update_count"] = int(metric._update_count)
        checkpoint["metric_states"] = states

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get("metric_states")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is None:
            return
        metrics = self._metrics(pl_module)
        for name, state in self._pending.items():
            metric = metrics.get(name)
            if metric is None:
                continue
            for key, value in state["values"].items():
                setattr(metric, key, value.to(getattr(metric, key).device))
            metric._update_count = state["update_count"]
            metric._computed = None
        self._pending = None


class CarryCheckpoints(Callback):
    """A run resumed into a new run dir takes its checkpoint callbacks' bookkeeping along.

    Lightning restores a ``ModelCheckpoint``'s best score and top-k only when its ``dirpath`` is
    unchanged; a resumed run writes to a new run dir, so the best checkpoint of the epochs before the
    interruption would be forgotten (and the final test would use the best of the resumed epochs only).
    Here the files those states name are copied into the new ``dirpath`` and the states rewritten to
    point at the copies, so the resumed run's folder holds the best checkpoint of the whole run.
    """

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        states = checkpoint.get("callbacks") or {}
        for callback in trainer.callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
                continue
            state = states.get(callback.state_key)
            old_dir = state.get("dirpath") if isinstance(state, dict) else None
            if not old_dir or Path(old_dir) == Path(callback.dirpath):
                continue
            new_dir = Path(callback.dirpath)
            new_dir.mkdir(parents=True, exist_ok=True)

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = _copied(state[key], Path(old_dir), new_dir)
            if isinstance(state.get("best_k_models"), dict):
                best = state["best_k_models"].items()
                state["best_k_models"] = {_copied(k, Path(old_dir), new_dir): v for k, v in best}
            state["dirpath"] = str(new_dir)


def _copied(path: str, old_dir: Path, new_dir: Path) -> str:
    """``path`` (a file in ``old_dir``) copied into ``new_dir``; other paths as they are."""
    import shutil

    if not path or not Path(path).is_file() or Path(path).parent != old_dir:
        return path
    target = new_dir / Path(path).name
    if not target.exists():
        shutil.copy2(path, target)
    return str(target)


class ContinueHistory(Callback):
    """Whole metrics files: a resumed run's CSV log starts with the history it continues.

    Every checkpoint flushes the loggers, so an interrupted run's ``metrics.csv`` holds every row up to
    its last checkpoint. A run resumed from a checkpoint (in a new run dir) first copies the rows of
    the epochs that checkpoint completed from the earlier run's ``metrics.csv`` into its own, so its
    file is the whole history, as the uninterrupted run's would be; ``metrics.json`` names the
    checkpoint it resumed (``resumed_from``).
    """

    def __init__(self) -> None:
        self._resumed: tuple[Path, int, int] | None = None  # (checkpoint, epochs done, global step)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        try:
            done = int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
        except (KeyError, TypeError):
            return
        if trainer.ckpt_path:
            self._resumed = (Path(trainer.ckpt_path), done, int(checkpoint.get("global_step", 0)))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning.pytorch.loggers import CSVLogger

        if self._resumed is None or not trainer.is_global_zero:
            return
        ckpt, done, step = self._resumed
        self._resumed = None
        root = Path(trainer.default_root_dir).resolve()
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                continue
            try:
                relative = Path(logger.log_dir).resolve().relative_to(root)
            except ValueError:
                continue
            old = ckpt.resolve().parents[1] / relative / "metrics.csv"
            if old.is_file() and old.resolve() != (Path(logger.log_dir) / "metrics.csv").resolve():
                try:
                    history = _history(old, done, step)
                except (OSError, ValueError, KeyError) as err:  # a damaged file: train on, say so
                    log.warning("could not copy the earlier metrics from %s: %s", old, err)
                    continue
                for row_step, row in history:
                    logger.experiment.log_metrics(row, row_step)
                logger.save()


def _history(path: Path, epochs_done: int, global_step: int) -> list[tuple[int, dict[str, float]]]:
    """Rows of a CSVLogger ``metrics.csv`` from before a checkpoint: epochs it completed (or, without an
    epoch column, steps before it), as ``(step, {metric: value})``."""
    import csv

    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: _number(v) for k, v in row.items() if k and v not in (None, "")}
            step = int(values.pop("step", 0))
            before = values["epoch"] < epochs_done if "epoch" in values else step < global_step
            if before:
                rows.append((step, values))
    return rows


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


# --- finished runs ------------------------------------------------------------------------------
def check_resumable(ckpt_path: str | Path, max_epochs: int | None, max_steps: int | None = None) -> None:
    """A :class:`~ugmm.config.ConfigError` when the checkpoint's run already reached the limits,
    saying so and how to train it longer (Lightning would return at once and log nothing)."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"ckpt_path={ckpt_path} is not a readable checkpoint ({type(err).__name__})") from None
    try:
        epochs_done = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return
    step = int(ckpt.get("global_step", 0))
    run = Path(ckpt_path).resolve().parents[1]
    if max_epochs is not None and max_epochs != -1 and epochs_done >= max_epochs:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: the run in {run} already finished ({epochs_done} of trainer.max_epochs="
            f"{max_epochs} epochs); to train it longer, raise the limit: trainer.max_epochs={max_epochs + 1} or more"
        )
    if max_steps is not None and max_steps != -1 and step >= max_steps:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: the run in {run} already finished ({step} of trainer.max_steps={max_steps} "
            "steps); to train it longer, raise trainer.max_steps"
        )


def requeued_checkpoint(output_dir: str | Path) -> Path | None:
    """Under SLURM, a requeued job (``SLURM_RESTART_COUNT`` > 0, e.g. after preemption or a time limit
    with the submitit launcher) finds the ``last.ckpt`` its first attempt left in its own run dir."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


# --- preemption ---------------------------------------------------------------------------------
class Preemption(Callback):
    """SIGTERM / SIGINT: finish the current step, save ``last.ckpt``, raise :class:`TrainingInterruptedError`.

    Handlers are installed at ``setup`` (Lightning's own SIGTERM handler, registered next, calls them
    too) and removed when training ends. A signal before the first training step, or a second one,
    stops at once (no checkpoint to save yet, or the user insists).

    Args:
        signals: the signals handled.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self.interruption: TrainingInterruptedError | None = None  # see on_exception
        self._previous: dict[int, Any] = {}
        self._training, self._epoch, self._step = False, 0, 0

    def _handler(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)
        if self.received is not None or not self._training:
            # a second signal, or one before training started (nothing to save yet): stop now
            raise TrainingInterruptedError(signum, None, self._epoch, self._step)
        self.received = signum

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import threading

        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread
        self.received, self.interruption, self._training, self._epoch, self._step = None, None, False, 0, 0
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._training, self._epoch, self._step = True, trainer.current_epoch, trainer.global_step

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._training = False
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore()
        if isinstance(exception, SIGTERMException) and self.received is not None and self._training:
            # Lightning's own SIGTERM check won the race (the signal came after this callback's last look,
            # e.g. between on_train_batch_end and the loop's end-of-step check): save here instead, and let
            # the command line raise `interruption` in place of Lightning's silent SystemExit
            self.interruption = self._save_and_describe(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self._epoch, self._step = trainer.current_epoch, trainer.global_step
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a signal during the epoch-end validation: stop here, before Lightning's own SIGTERM exit
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: Trainer) -> None:
        if self.received is not None:
            raise self._save_and_describe(trainer)

    def _save_and_describe(self, trainer: Trainer) -> TrainingInterruptedError:
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)
        for logger in trainer.loggers:
            logger.save()
        return TrainingInterruptedError(self.received, path, trainer.current_epoch, trainer.global_step)


@contextmanager
def interruptions_from(callbacks: list[Callback]) -> Iterator[None]:
    """Around ``trainer.fit``: Lightning's bare ``SIGTERMException`` (exit code 0) becomes the
    :class:`TrainingInterruptedError` a :class:`Preemption` callback prepared for it."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException:
        prepared = [c.interruption for c in callbacks if isinstance(c, Preemption) and c.interruption is not None]
        if not prepared:
            raise
        raise prepared[0] from None


def last_checkpoint_path(trainer: Trainer) -> Path | None:
    """Where ``ckpt_path=last`` looks: ``<dirpath>/last.ckpt`` of the checkpoint callback writing it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    if not callbacks:
        return None
    named = [c for c in callbacks if c.filename == "last"]
    return Path((named or callbacks)[0].dirpath) / "last.ckpt"


def resume_callbacks() -> list[Callback]:
    """The callbacks every training run gets: random states in checkpoints, and preemption."""
    return [RandomStates(), MetricStates(), CarryCheckpoints(), ContinueHistory(), Preemption()]
