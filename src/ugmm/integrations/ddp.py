"""DDP that composes with Hydra: ranks > 0 re-run exactly this job, in this job's output dir.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running the command line (``sys.argv``). Under a
Hydra multirun that command is the whole sweep (``-m model.width=32,64 ...``): each child re-runs the
sweep and writes new sweep dirs. Lightning's Hydra special case only appends ``hydra.run.dir`` to the
same ``sys.argv``, which still carries ``-m``, and points at ``hydra.run.dir`` rather than the job's
sweep subdir. :class:`HydraDDPStrategy` instead starts each child as a single run of this job: the
job's own task overrides, ``hydra.run.dir=<this job's output dir>`` and ``hydra.output_subdir=null``
(the children do not rewrite ``.hydra/``), no ``-m``. So a DDP job leaves exactly one output dir,
whether it runs alone or as one job of a multirun.

Lightning also leaves ``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_PORT`` in ``os.environ`` and the process
group initialised after a job; the next job of a multirun in the same process would then believe its
processes were created externally and hang. :func:`release_ddp_environment` (called at the end of every
job) waits for the children, destroys the process group and restores the environment.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# Hydra overrides that belong to the sweep, not to the job: a child is a single run of one job
_PARENT_ONLY = ("hydra.sweep", "hydra/sweeper", "hydra.sweeper", "hydra/launcher", "hydra.launcher", "hydra.run.")
_PARENT_ONLY += ("hydra.output_subdir", "hydra.job.name", "hydra.mode")

# Hydra job name -> the entry point a child rank of that job runs
ENTRY_POINTS = {"train": "ugmm.cli:train_main", "eval": "ugmm.cli:eval_main"}
# launchers that started children in this process, and the environment before they did
_ACTIVE: list[tuple[_SubprocessScriptLauncher, dict[str, str | None]]] = []


def _config_args(argv: list[str]) -> list[str]:
    """The ``--config-path/--config-name/--config-dir`` arguments of ``argv`` (both spellings)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            out += [arg, argv[i + 1]]
            i += 2
            continue
        if any(arg.startswith(f + "=") for f in _CONFIG_FLAGS):
            out.append(arg)
        i += 1
    return out


def hydra_child_command(entry_point: str, local_rank: int) -> tuple[list[str], str]:
    """``(argv, cwd)`` that runs this Hydra job once more, as DDP rank ``local_rank``, in the same dir.

    Args:
        entry_point: ``"module:function"`` of the ``@hydra.main`` entry (e.g. ``ugmm.cli:train_main``).
        local_rank: the child's local rank (only used to name its log file).
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    module, _, func = entry_point.partition(":")
    if not module or not func:
        raise ValueError(f"entry_point must look like 'package.module:function', got {entry_point!r}")
    cmd = [sys.executable, "-c", f"from {module} import {func}; {func}()"]
    # the child imports the entry instead of running a file, so name the parent's primary config explicitly
    config_args = [a for a in _config_args(sys.argv[1:]) if not a.startswith(("--config-path", "-cp"))]
    main_source = next((s for s in hc.runtime.config_sources if s.provider == "main"), None)
    if main_source is not None:
        path = main_source.path if main_source.schema == "file" else f"{main_source.schema}://{main_source.path}"
        config_args += ["--config-path", path]
    if not any(a.startswith(("--config-name", "-cn")) for a in config_args) and hc.job.config_name:
        config_args += ["--config-name", hc.job.config_name]
    cmd += config_args
    cmd += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_PARENT_ONLY)]
    cmd += list(hc.overrides.task)
    out_dir = hc.runtime.output_dir.replace("\\", "\\\\").replace('"', '\\"')
    cmd += [f'hydra.run.dir="{out_dir}"', "hydra.output_subdir=null", f"hydra.job.name={hc.job.name}_rank{local_rank}"]
    return cmd, hc.runtime.cwd


class _HydraJobLauncher(_SubprocessScriptLauncher):
    """Starts ranks 1..N-1 as single Hydra runs of the current job (see the module docstring)."""

    def __init__(self, *args: Any, entry_point: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entry_point = entry_point

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():  # plain script: Lightning's own re-launch of sys.argv is right
            saved = {k: os.environ.get(k) for k in _DDP_ENV}
            super()._call_children_scripts()
            _ACTIVE.append((self, saved))
            return
        self._check_can_spawn_children()
        self.procs = []
        saved = {k: os.environ.get(k) for k in _DDP_ENV}
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            child_env = os.environ.copy()
            child_env["LOCAL_RANK"] = str(local_rank)
            command, cwd = hydra_child_command(self.entry_point, local_rank)
            log.debug("starting DDP rank %d: %s", local_rank, command)
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))
        _ACTIVE.append((self, saved))


class HydraDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose child ranks re-run the current Hydra job instead of ``sys.argv``.

    Args:
        entry_point: ``"module:function"`` of the Hydra entry the children run; None (the default): the
            entry of the running job, by its Hydra job name (``eval`` -> ``ugmm.cli:eval_main``, else
            ``ugmm.cli:train_main``), so ``eval.py trainer=ddp_cpu`` starts evaluating ranks.
        **kwargs: passed to :class:`~lightning.pytorch.strategies.DDPStrategy` (``process_group_backend``,
            ``find_unused_parameters``, ...).
    """

    strategy_name = "ddp_hydra"

    def __init__(self, entry_point: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("start_method", "popen")
        # no buffer broadcast in each forward: evaluation gives the ranks unequal numbers of batches (every
        # row counted once, see ugmm.data.base), and a collective in one rank's extra forward would hang.
        # The models' buffers are constants (the density model's label states), so nothing is lost.
        kwargs.setdefault("broadcast_buffers", False)
        super().__init__(**kwargs)
        self._entry_point = entry_point

    @property
    def entry_point(self) -> str:
        if self._entry_point is not None:
            return self._entry_point
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().job.name if HydraConfig.initialized() else "train"
        return ENTRY_POINTS.get(job, ENTRY_POINTS["train"])

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        if self._start_method != "popen":  # spawn/fork: processes are created in-job, nothing to fix
            return super()._configure_launcher()
        self._launcher = _HydraJobLauncher(
            self.cluster_environment, self.num_processes, self.num_nodes, entry_point=self.entry_point
        )


def release_ddp_environment(timeout_s: float = 120.0) -> None:
    """End this process's DDP job: wait for its child ranks, destroy the process group, restore env.

    Safe to call when no DDP ran (then it does nothing) and more than once.
    """
    while _ACTIVE:
        launcher, saved = _ACTIVE.pop()
        for proc in launcher.procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("DDP child %d still running after %.0f s: killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
