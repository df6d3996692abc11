"""The console entry points (``ugmm-train``, ``ugmm-eval``, ``train.py``, ``eval.py``): the process
environment first, then :mod:`ugmm.cli`.

``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it): OpenMP worker threads that spin between parallel
regions take the cores the working threads need whenever anything else runs on the machine; on the
shared 2-core CPU of docs/performance.md the uGMM training step took 72.6 ms spinning and 27.7 ms
passive (the MLP's 12.8 and 7.2 ms). libgomp reads the variable once, when torch loads, so it is set
here, before :mod:`ugmm.cli` imports torch; DDP ranks inherit it.
"""

from __future__ import annotations

import os


def _environment() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def train_main() -> None:
    """``ugmm-train`` / ``python train.py [overrides]``."""
    _environment()
    from ugmm.cli import train_main as main

    main()


def eval_main() -> None:
    """``ugmm-eval`` / ``python eval.py ckpt_path=... [overrides]``."""
    _environment()
    from ugmm.cli import eval_main as main

    main()
