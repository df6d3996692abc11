"""The task wrapper: how a job ends. One place for errors, failed records, DDP release and W&B finishing.

:func:`run_task` runs ``train`` or ``evaluate`` and turns what they raise into an :class:`Outcome`: the
``status`` its ``metrics.json`` records and the exit code of a single run. Under ``-m`` a failing job
is recorded and the sweep goes on (the objective is NaN, which optuna reads as a failed trial).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from ugmm.config import ConfigError
from ugmm.data import DataError
from ugmm.divergence import EXIT_DIVERGED, TrainingDivergedError
from ugmm.records import one_line_error, write_failed_job
from ugmm.resume import TrainingInterruptedError
from ugmm.runs import discard_run_dir, hydra_overrides, in_multirun

log = logging.getLogger(__name__)

EXIT_USAGE = 2


@dataclass(frozen=True)
class Outcome:
    """How a job that raised ends."""

    status: str  # metrics.json's "status"
    exit_code: int  # a single run's exit code (an exception's own ``exit_code`` attribute wins)
    user_error: bool  # one line on stderr, no traceback; a single run's dir is removed
    stops_sweep: bool = False  # under -m: end the sweep (a signal) instead of recording the job and going on


# exception types -> outcome, first match wins. An exception may add fields to metrics.json by a
# ``record()`` method and choose its exit code by an ``exit_code`` attribute (128 + signal).
OUTCOMES: list[tuple[tuple[type[BaseException], ...], Outcome]] = [
    ((ConfigError, DataError), Outcome("failed", EXIT_USAGE, user_error=True)),
    ((TrainingDivergedError,), Outcome("diverged", EXIT_DIVERGED, user_error=False)),
    ((TrainingInterruptedError,), Outcome("interrupted", 1, user_error=False, stops_sweep=True)),
]
UNEXPECTED = Outcome("failed", 1, user_error=False)  # any other exception: its traceback is shown


def outcome_of(err: BaseException) -> Outcome:
    for types, outcome in OUTCOMES:
        if isinstance(err, types):
            return outcome
    return UNEXPECTED


def _is_rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _record(err: BaseException, outcome: Outcome) -> None:
    """Write the job's metrics.json with the outcome's status and the error line (rank 0 only)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and _is_rank_zero():
        hc = HydraConfig.get()
        extra = err.record() if callable(getattr(err, "record", None)) else {}
        write_failed_job(
            hc.runtime.output_dir, err, [str(o) for o in hc.overrides.task], status=outcome.status, **extra
        )


def _message(err: BaseException, outcome: Outcome) -> str:
    """The one line a stopped run prints; an interrupted one adds the command that resumes it."""
    line = " ".join(str(err).split())  # the exception's own sentence, without its type's name
    if outcome.status == "interrupted" and getattr(err, "ckpt_path", None) is not None:
        script = os.path.basename(sys.argv[0])
        script = f"python {script}" if script.endswith(".py") else script
        overrides = [o for o in hydra_overrides() if not o.startswith("ckpt_path=")]
        line += "; resume with: " + " ".join([script, *overrides, "ckpt_path=last"])
    return line


def run_task(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``fn(cfg)``; a single run exits non-zero on failure, a multirun job records it and returns NaN."""
    from ugmm.integrations.ddp import release_ddp_environment
    from ugmm.integrations.wandb_logger import finish_wandb

    try:
        return fn(cfg)
    except Exception as err:
        outcome = outcome_of(err)
        finish_wandb(None, failed=True)  # every W&B run is finished, also a failed one
        if in_multirun() and not outcome.stops_sweep:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            log.error("job %s %s: %s", hc.job.num, outcome.status, one_line_error(err), exc_info=err)
            _record(err, outcome)
            print(
                f"error: job {hc.job.num} ({' '.join(hc.overrides.task)}) {outcome.status}: {one_line_error(err)}",
                file=sys.stderr,
            )
            return float("nan")
        if outcome.user_error:
            discard_run_dir()
            fail(err, outcome.exit_code)
        _record(err, outcome)
        if outcome is UNEXPECTED:
            raise
        print(f"error: {_message(err, outcome)}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", outcome.exit_code))
    finally:
        release_ddp_environment()  # the next job of a multirun starts its own DDP ranks


def fail(err: BaseException, exit_code: int = EXIT_USAGE) -> None:
    """Print ``error: <one line>`` and exit."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(exit_code)
