"""Weights & Biases logger that knows about Hydra: one run per job, grouped by sweep, offline without credentials.

- ``group`` defaults to the sweep directory's name under ``-m`` (every job of a sweep in one group) and
  to the run directory's name for a single run; ``name`` defaults to the job's overrides
  (``model.width=32,loss=nll``), so runs are told apart at a glance.
- ``offline`` defaults to auto: offline when ``WANDB_MODE`` is ``offline``/``dryrun`` or when no API
  key is found (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host); rank 0 then prints one
  line ``wandb: offline run; sync with: wandb sync <dir>`` and wandb's own chatter is silenced.
- :func:`finish_wandb` ends the job's run (``wandb.finish``) with its final summary, also when the job
  failed, so every job of a multirun gets its own run (wandb otherwise keeps logging into the first).
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def wandb_credentials_available() -> bool:
    """True when wandb could authenticate: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc_path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_should_be_offline() -> bool:
    """Offline when the user asked for it (``WANDB_MODE=offline``) or when no credentials exist."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return True
    return not wandb_credentials_available()


def hydra_run_names() -> tuple[str | None, str | None]:
    """``(group, name)`` from the running Hydra job, ``(None, None)`` outside Hydra.

    group: the sweep dir's name under multirun (shared by all its jobs), the run dir's name otherwise.
    name: the job's task overrides joined by commas, or the job name when there are none.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None, None
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        group = Path(hc.sweep.dir).name
    else:
        group = Path(hc.runtime.output_dir).name
    name = hc.job.override_dirname or hc.job.name
    return group, name


class HydraWandbLogger(WandbLogger):
    """:class:`~lightning.pytorch.loggers.WandbLogger` with Hydra-aware names, groups and offline mode.

    Args:
        project: W&B project.
        name: run name; default: the job's overrides.
        group: run group; default: the sweep (or run) directory's name.
        save_dir: where the ``wandb/`` folder goes (the job's output dir in ``conf/logger/wandb.yaml``).
        offline: ``True``/``False``, or ``None`` for auto (offline when no credentials, see module doc).
        log_model: Lightning's option: ``True`` logs the checkpoints (best among them) as artifacts at
            the end of training, ``"all"`` during training, ``False`` never. Offline, any true value
            logs the best checkpoint as an artifact when the job finishes (synced by ``wandb sync``).
        **kwargs: passed to :class:`WandbLogger` and on to ``wandb.init`` (``tags``, ``entity``, ``job_type``...).
    """

    def __init__(
        self,
        project: str = "ugmm-nn",
        name: str | None = None,
        group: str | None = None,
        save_dir: str = ".",
        offline: bool | None = None,
        log_model: bool | str = False,
        **kwargs: Any,
    ) -> None:
        auto_group, auto_name = hydra_run_names()
        self.auto_offline = offline is None
        offline = wandb_should_be_offline() if offline is None else bool(offline)
        # Lightning refuses log_model offline; offline, finish() logs the best checkpoint itself instead
        # (wandb keeps offline artifacts for `wandb sync`)
        self.log_best_offline = bool(offline and log_model)
        if offline:
            log_model = False
        if offline and "settings" not in kwargs:
            import wandb

            # offline: wandb's own banner and end-of-run tables would drown the one line we print
            kwargs["settings"] = wandb.Settings(quiet=True, silent=True)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            project=project,
            name=name or auto_name,
            group=group or auto_group,
            save_dir=str(save_dir),
            offline=offline,
            log_model=log_model,
            **kwargs,
        )
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb, which warns when it is passed

    @property
    def is_offline(self) -> bool:
        return bool(self._offline)

    @rank_zero_only
    def finish(self, summary: dict[str, Any] | None = None, failed: bool = False, best_ckpt: str | None = None) -> None:
        """Write ``summary`` into the run's summary, finish the run, print the sync line when offline.

        Offline with ``log_model``, the best checkpoint ``best_ckpt`` becomes a ``model`` artifact
        (alias ``best``), uploaded by ``wandb sync``; online, Lightning logs the checkpoints itself.
        """
        run = self._experiment
        if run is None:
            return
        if summary:
            for key, value in summary.items():
                if isinstance(value, int | float | str | bool) or value is None:
                    run.summary[key] = value
        if self.log_best_offline and best_ckpt and Path(best_ckpt).is_file() and not failed:
            import wandb

            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=dict(summary or {}))
            artifact.add_file(str(best_ckpt), policy="immutable")  # immutable: no staging copy
            run.log_artifact(artifact, aliases=["best", "latest"])
        sync_dir = Path(run.dir).parent  # run.dir is <sync dir>/files
        run.finish(exit_code=1 if failed else 0)
        if self.is_offline:
            print(f"wandb: offline run; sync with: wandb sync {sync_dir}", flush=True)


def finish_wandb(
    loggers: Any, summary: dict[str, Any] | None = None, failed: bool = False, best_ckpt: str | None = None
) -> None:
    """Finish the W&B run of every :class:`WandbLogger` in ``loggers`` (a logger, a list, or None).

    Called at the end of every job, also after a failure: wandb keeps one global run per process, so a
    multirun without it would log all jobs into the first job's run. Also ends a run started through
    ``wandb.init`` outside a logger.
    """
    if loggers is None:
        loggers = []
    elif not isinstance(loggers, list | tuple):
        loggers = [loggers]
    for lg in loggers:
        if isinstance(lg, HydraWandbLogger):
            lg.finish(summary, failed=failed, best_ckpt=best_ckpt)
        elif isinstance(lg, WandbLogger) and lg._experiment is not None and rank_zero_only.rank == 0:
            if summary:
                lg._experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
            lg._experiment.finish(exit_code=1 if failed else 0)
    import wandb

    run = wandb.run
    if run is not None and rank_zero_only.rank == 0:
        sync_dir, offline = Path(run.dir).parent, run.offline
        run.finish(exit_code=1 if failed else 0)
        if offline:
            print(f"wandb: offline run; sync with: wandb sync {sync_dir}", flush=True)
