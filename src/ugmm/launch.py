"""The console entry points (``ugmm-train``, ``ugmm-eval``, ``train.py``, ``eval.py``).

Importing this module imports the package first, and ``ugmm/__init__.py`` sets
``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before anything loads torch: OpenMP worker threads
that spin between parallel regions take the cores the working threads need whenever anything else runs
on the machine; on the shared 2-core CPU of docs/performance.md the uGMM training step took 72.6 ms
spinning and 27.7 ms passive (the MLP's 12.8 and 7.2 ms). libgomp reads the variable once, when torch
loads, so :mod:`ugmm.cli` (which imports torch) is imported only inside the entry points; DDP ranks
inherit the variable.
"""

from __future__ import annotations


def train_main() -> None:
    """``ugmm-train`` / ``python train.py [overrides]``."""
    from ugmm.cli import train_main as main

    main()


def eval_main() -> None:
    """``ugmm-eval`` / ``python eval.py ckpt_path=... [overrides]``."""
    from ugmm.cli import eval_main as main

    main()
